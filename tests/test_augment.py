"""augment.py: the batched affine map against torchvision, image by image, and the batches it draws."""

import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from conftest import synthetic
from mnist_norms.augment import affine, batches, standardize, to_unit


def black_border(images, width=2):
    """Like MNIST, whose digits sit in the middle 20x20: nothing but 0 near the edge."""
    images = images.clone()
    images[..., :width, :] = images[..., -width:, :] = 0
    images[..., :, :width] = images[..., :, -width:] = 0
    return images


@pytest.mark.parametrize("angle", [-7.0, -3.5, 2.0, 7.0, 45.0])
def test_batched_rotation_matches_torchvision(angle):
    images = to_unit(synthetic(6)[0])
    ours = affine(images, torch.full((6,), angle))
    rot = lambda img, fill: TF.rotate(img, angle, interpolation=InterpolationMode.BILINEAR, fill=fill)
    # Zeros outside the frame: exactly torchvision's default, even with content up to the edge.
    assert (ours - torch.stack([rot(img, None) for img in images])).abs().max() < 1e-4
    # fill=0 in torchvision also multiplies edge pixels by the sampled in-frame fraction; on images
    # with a black border, as MNIST's are, that changes nothing and the two agree.
    framed = black_border(images)
    ours = affine(framed, torch.full((6,), angle))
    assert (ours - torch.stack([rot(img, 0) for img in framed])).abs().max() < 1e-4


def test_rotation_uses_each_images_own_angle_and_zero_is_identity():
    images = black_border(to_unit(synthetic(4)[0]))
    angles = torch.tensor([0.0, 5.0, -5.0, 0.0])
    out = affine(images, angles)
    assert torch.allclose(out[[0, 3]], images[[0, 3]], atol=1e-5)
    for i in (1, 2):
        ref = TF.rotate(images[i], angles[i].item(), interpolation=InterpolationMode.BILINEAR, fill=0)
        assert torch.allclose(out[i], ref, atol=1e-4)
    assert not torch.allclose(out[1], out[2], atol=1e-2)


# (degrees, (tx, ty) pixels, scale, x-shear degrees) for one image each
AFFINE = [(5.0, (1.0, -2.0), 1.1, 4.0), (-7.0, (0.5, 2.5), 0.9, -5.0), (0.0, (2.0, 0.0), 1.0, 0.0),
          (30.0, (-3.0, 1.0), 1.2, 20.0), (0.0, (0.0, 0.0), 0.8, 0.0), (0.0, (0.0, 0.0), 1.0, -10.0)]


def test_batched_affine_matches_torchvision_for_fixed_parameters():
    images = black_border(to_unit(synthetic(len(AFFINE))[0]), width=3)
    column = lambda i: torch.tensor([p[i] for p in AFFINE])
    ours = affine(images, column(0), column(1), column(2), column(3))
    for img, out, (degrees, shift, scale, shear) in zip(images, ours, AFFINE):
        # torchvision's affine turns clockwise for a positive angle; ours, like rotate, counter-clockwise.
        ref = TF.affine(img, angle=-degrees, translate=list(shift), scale=scale, shear=[shear, 0.0],
                        interpolation=InterpolationMode.BILINEAR)
        assert (out - ref).abs().max() < 1e-4
    assert not torch.allclose(ours[0], images[0], atol=1e-2)


def test_affine_with_identity_parameters_is_the_identity_and_rotation_only_is_rotate():
    images = to_unit(synthetic(4)[0])
    zero, one = torch.zeros(4), torch.ones(4)
    same = affine(images, zero, torch.zeros(4, 2), one, zero)
    assert (same - images).abs().max() < 1e-5
    # The rotation-only call (the default augmentation) and the full call with identity extras agree exactly.
    angles = torch.tensor([3.0, -7.0, 0.5, 6.0])
    assert torch.equal(affine(images, angles), affine(images, angles, None, None, None))
    full = affine(images, angles, torch.zeros(4, 2), one, zero)
    assert (full - affine(images, angles)).abs().max() < 1e-6


def test_a_shift_by_whole_pixels_moves_the_image_by_those_pixels():
    images = black_border(to_unit(synthetic(1)[0]), width=4)
    out = affine(images, torch.zeros(1), torch.tensor([[2.0, -3.0]]))  # 2 right, 3 up
    assert torch.allclose(out[0, 0, :-3 or None, 2:], images[0, 0, 3:, :-2], atol=1e-5)


def test_batches_draw_rotation_only_as_before_and_each_affine_part_only_when_asked():
    data = synthetic(50)
    first = lambda **kw: next(batches(data, 50, generator=torch.Generator().manual_seed(3), **kw))[0]
    # Rotation only: the order, then one angle per image, from the same generator.
    g = torch.Generator().manual_seed(3)
    order = torch.randperm(50, generator=g)
    angles = (torch.rand(50, generator=g) * 2 - 1) * 7
    expected = standardize(affine(to_unit(data[0][order]), angles))
    assert torch.equal(first(degrees=7), expected)
    assert torch.equal(first(degrees=7, translate=0.0, scale=0.0, shear=0.0), expected)
    # Each part changes the images, and a whole affine epoch is reproducible from the seed.
    parts = dict(degrees=7, translate=0.1, scale=0.1, shear=5)
    assert torch.equal(first(**parts), first(**parts))
    for name in ("translate", "scale", "shear"):
        assert not torch.equal(first(**{**parts, name: 0}), first(**parts)), name
    # The draws, in order: order, angles, shifts (fractions of 28 pixels, x then y), zooms, shears.
    g = torch.Generator().manual_seed(3)
    order = torch.randperm(50, generator=g)
    u = lambda *shape: torch.rand(*shape, generator=g) * 2 - 1
    angles, shifts, zooms, shears = u(50) * 7, u(50, 2) * 0.1 * 28, 1 + u(50) * 0.1, u(50) * 5
    expected = standardize(affine(to_unit(data[0][order]), angles, shifts, zooms, shears))
    assert torch.equal(first(**parts), expected)


def test_batches_shuffle_reproducibly_cover_every_image_and_normalize():
    data = synthetic(300)
    run = lambda seed: list(batches(data, 128, generator=torch.Generator().manual_seed(seed), degrees=7))
    a, b, c = run(0), run(0), run(1)
    assert [len(y) for _, y in a] == [128, 128, 44]
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    labels = torch.cat([y for _, y in a])
    assert sorted(labels.tolist()) == sorted(data[1].tolist())
    # Without a generator: in order, unrotated, and exactly (x / 255 - mean) / std.
    (x, y), *_ = batches(data, 300)
    expected = (data[0].unsqueeze(1).double() / 255 - 0.1307) / 0.3081
    assert x.shape == (300, 1, 28, 28) and torch.equal(y, data[1])
    assert torch.allclose(x.double(), expected, atol=1e-5)


def random_thetas(n, seed=0):
    """n inverse affine maps [n, 2, 3] as the recipe draws them: rotations, zooms, shears and shifts."""
    g = torch.Generator().manual_seed(seed)
    u = lambda: torch.rand(n, generator=g) * 2 - 1
    rad, zoom, tan = torch.deg2rad(u() * 7), 1 + u() * 0.1, torch.deg2rad(u() * 5).tan()
    a, b, c, d = rad.cos(), -rad.sin(), rad.sin(), rad.cos()
    a, b = a + tan * c, b + tan * d
    a, b, c, d = a / zoom, b / zoom, c / zoom, d / zoom
    return torch.stack([torch.stack([a, b, u() * 0.2], 1), torch.stack([c, d, u() * 0.2], 1)], 1)


def float32_nearest(exact):
    """An exact rational (fractions.Fraction) rounded to the nearest float32, ties to even: an independent reference
    for the grid's rounding (Python's float() rounds to float64, so the float32 neighbours are compared exactly)."""
    import fractions

    import numpy as np
    guess = np.float32(float(exact))
    candidates = {guess, np.nextafter(guess, np.float32(np.inf)), np.nextafter(guess, np.float32(-np.inf))}
    distance = lambda f: abs(fractions.Fraction(float(f)) - exact)
    best = min(distance(f) for f in candidates)
    tied = sorted((f for f in candidates if distance(f) == best), key=lambda f: int(np.array(f).view(np.int32)) & 1)
    return float(tied[0])  # of two at the same distance, the one with an even last bit


def test_the_aten_grid_rounds_each_product_and_sum_on_its_own():
    # Against exact rational arithmetic rounded to float32 by float32_nearest: x * a, y * b, their sum, then + t.
    from fractions import Fraction as Q

    from mnist_norms.augment import sampling_grid
    theta = random_thetas(3)
    out = sampling_grid(theta, (3, 1, 28, 28))
    base = torch.nn.functional.affine_grid(torch.eye(2, 3)[None], [1, 1, 28, 28], align_corners=False)[0]  # exact
    r = float32_nearest
    for i, row, col in [(0, 0, 0), (1, 13, 20), (2, 27, 5), (0, 9, 27), (2, 14, 14)]:
        x, y = Q(base[row, col, 0].item()), Q(base[row, col, 1].item())
        for k in range(2):
            a, b, t = (Q(v) for v in theta[i, k].tolist())
            assert out[i, row, col, k].item() == r(Q(r(Q(r(x * a)) + Q(r(y * b)))) + t), (i, row, col, k)


def test_the_grid_agrees_with_affine_grid_to_rounding():
    from mnist_norms.augment import sampling_grid
    theta = random_thetas(8)
    reference = torch.nn.functional.affine_grid(theta.double(), [8, 1, 28, 28], align_corners=False)
    out = sampling_grid(theta, (8, 1, 28, 28))
    assert out.shape == (8, 28, 28, 2) and (out.double() - reference).abs().max() < 1e-6
