"""studies/corruptions.py: each corruption against its definition (by hand, or torchvision's own function), and its
seed."""
import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from conftest import synthetic
from studies import corruptions
from studies.corruptions import corrupt

IMAGES = synthetic(32)[0]  # uint8 [32, 28, 28]: a bright square on noise
UNIT = IMAGES[:, None].float() / 255


def by_hand(x):
    """Images in [0, 1] [N, 1, 28, 28] as uint8 [N, 28, 28], rounded to the nearest level."""
    return (x[:, 0] * 255).round().clamp(0, 255).to(torch.uint8)


def test_brightness_adds_c_to_the_grey_level_and_clips():
    for level, c in ((1, 0.1), (3, 0.3), (5, 0.5)):
        expected = by_hand(torch.minimum(UNIT + c, torch.ones(())))
        assert torch.equal(corrupt(IMAGES, "brightness", level), expected)


def test_contrast_scales_each_image_about_its_own_mean():
    for level, c in ((1, 0.4), (3, 0.2), (5, 0.05)):
        mean = UNIT.mean(dim=(1, 2, 3), keepdim=True)
        expected = by_hand(((UNIT - mean) * c + mean).clamp(0, 1))
        got = corrupt(IMAGES, "contrast", level)
        assert (got.int() - expected.int()).abs().max() <= 1  # one grey level: rounding of the mean
        assert (got != expected).float().mean() < 0.01


def test_inverse_and_stripe_invert_the_whole_image_and_its_outer_quarters():
    assert torch.equal(corrupt(IMAGES, "inverse"), 255 - IMAGES)
    striped = corrupt(IMAGES, "stripe")
    assert torch.equal(striped[..., :7], 255 - IMAGES[..., :7])
    assert torch.equal(striped[..., 21:], 255 - IMAGES[..., 21:])
    assert torch.equal(striped[..., 7:21], IMAGES[..., 7:21])


def test_geometric_corruptions_are_torchvisions_maps_one_way_or_the_other():
    # Each image is torchvision's rotate / affine (bilinear, fill 0) by +c or by -c: whichever is nearer, it is
    # within rounding of one of them, and both directions occur.
    def check(corruption, level, transform):
        got = corrupt(IMAGES, corruption, level).int()
        plus, minus = (by_hand(transform(UNIT, sign)).int() for sign in (1, -1))
        off = torch.minimum((got - plus).abs().flatten(1).max(1).values, (got - minus).abs().flatten(1).max(1).values)
        assert off.max() <= 1, corruption
        nearer_plus = (got - plus).abs().flatten(1).sum(1) < (got - minus).abs().flatten(1).sum(1)
        assert 0 < nearer_plus.sum() < len(IMAGES), corruption
    bilinear = TF.InterpolationMode.BILINEAR
    check("rotate", 3, lambda x, s: TF.rotate(x, s * math.degrees(0.6), interpolation=bilinear))
    got = corrupt(IMAGES, "scale", 3).int()
    expected = by_hand(TF.affine(UNIT, angle=0.0, translate=[0, 0], scale=0.7, shear=[0.0, 0.0],
                                 interpolation=bilinear)).int()
    assert (got - expected).abs().max() <= 1


def test_translate_shifts_by_whole_pixels_filling_zeros():
    got = corrupt(IMAGES, "translate", 3)
    for image, moved in zip(IMAGES, got):
        shifts = []
        for dx in (-3, 3):
            for dy in (-3, 3):
                expected = torch.zeros_like(image)
                src = image[max(0, -dy):28 - max(0, dy), max(0, -dx):28 - max(0, dx)]
                expected[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
                shifts.append(torch.equal(moved, expected))
        assert sum(shifts) == 1


def test_noise_is_what_its_definition_draws():
    # Gaussian: x + N(0, c^2), clipped; far from the clip the difference has std c.
    grey = torch.full((2000, 28, 28), 128, dtype=torch.uint8)
    diff = corrupt(grey, "gaussian_noise", 3).float() / 255 - 128 / 255
    assert diff.std().item() == pytest.approx(0.18, rel=0.02) and abs(diff.mean().item()) < 0.002
    # Shot: min(Poisson(c x) / c, 1), each value rounded to a grey level: its mean and variance from Poisson's pmf
    from scipy.stats import poisson
    shot = corrupt(grey, "shot_noise", 3).float() / 255
    k = torch.arange(0, 60, dtype=torch.float64)
    p = torch.from_numpy(poisson.pmf(k.numpy(), 12 * 128 / 255))
    v = torch.round(torch.clamp(k / 12, max=1) * 255) / 255
    mean, var = (p * v).sum().item(), (p * v ** 2).sum().item() - (p * v).sum().item() ** 2
    assert shot.mean().item() == pytest.approx(mean, rel=0.003) and shot.var().item() == pytest.approx(var, rel=0.01)
    # Impulse: a share c of the pixels set to 0 or 255, half each.
    hit = corrupt(grey, "impulse_noise", 5)
    assert ((hit == 0) | (hit == 255)).float().mean().item() == pytest.approx(0.27, rel=0.02)
    assert (hit == 255).float().mean().item() == pytest.approx(0.135, rel=0.03)
    assert torch.equal(hit[hit != 0][hit[hit != 0] != 255], grey[(hit != 0) & (hit != 255)])


def mnist_c_shear(image, c):
    """MNIST-C's shear of one image [28, 28] in [0, 1], by its formula, in plain Python: skimage's warp with the inverse
    map [[1, -sin c], [0, cos c]] about (13.5, 13.5), bilinear, 0 outside the frame."""
    import numpy as np
    out = np.zeros((28, 28))
    for row in range(28):
        for col in range(28):
            x = 13.5 + (col - 13.5) - math.sin(c) * (row - 13.5)  # the input point the output pixel samples
            y = 13.5 + math.cos(c) * (row - 13.5)
            x0, y0 = math.floor(x), math.floor(y)
            for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
                weight = (1 - abs(x - x0 - dx)) * (1 - abs(y - y0 - dy))
                if 0 <= y0 + dy < 28 and 0 <= x0 + dx < 28:
                    out[row, col] += weight * image[y0 + dy, x0 + dx]
    return out


def test_shear_is_mnist_cs_slant_by_sin_c_and_vertical_stretch_by_1_over_cos_c():
    # Against the formula, one way or the other per image; at severity 5 (c = 1.0) the digit's height grows by 1/cos 1
    got = corrupt(IMAGES[:6], "shear", 5).int()
    for image, out in zip(UNIT[:6, 0].double().numpy(), got):
        candidates = [torch.from_numpy(mnist_c_shear(image, sign * 1.0) * 255).round().int() for sign in (1, -1)]
        assert min((out - c).abs().max().item() for c in candidates) <= 1
    signs = {int((out - torch.from_numpy(mnist_c_shear(image, 1.0) * 255).round().int()).abs().max() <= 1)
             for image, out in zip(UNIT[:, 0].double().numpy(), corrupt(IMAGES, "shear", 5).int())}
    assert signs == {0, 1}  # both directions occur
    # A horizontal bar 2 rows high through the centre: stretched to 2 / cos(1) = 3.7 rows, and no longer slanted
    bar = torch.zeros(1, 28, 28, dtype=torch.uint8)
    bar[0, 13:15, 4:24] = 255
    column = corrupt(bar, "shear", 5)[0, :, 14].float() / 255
    assert column.sum().item() == pytest.approx(2 / math.cos(1.0), rel=0.02)


def mnist_c_blur(image, sigma):
    """MNIST-C's gaussian_blur of one image [28, 28], by its formula: skimage's gaussian with multichannel=True on a 2-D
    image blurs along axis 0 (the rows) only, with weights exp(-k^2 / (2 sigma^2)) for |k| <= int(4 sigma + 0.5),
    normalized, and the nearest pixel beyond the edge."""
    import numpy as np
    radius = int(4 * sigma + 0.5)
    k = np.arange(-radius, radius + 1)
    w = np.exp(-k ** 2 / (2 * sigma ** 2))
    w /= w.sum()
    padded = np.pad(image, ((radius, radius), (0, 0)), mode="edge")
    return sum(w[i] * padded[i:i + 28] for i in range(len(k)))


def test_gaussian_blur_is_mnist_cs_vertical_blur_and_jpeg_is_pillows_at_mnist_cs_quality():
    import io

    import numpy as np
    from PIL import Image
    for level, sigma in ((1, 1.0), (3, 3.0), (5, 6.0)):
        got = corrupt(IMAGES[:4], "gaussian_blur", level).int()
        expected = torch.stack([torch.from_numpy(mnist_c_blur(image, sigma) * 255).round().int()
                                for image in UNIT[:4, 0].double().numpy()])
        assert (got - expected).abs().max() <= 1, level
    # vertical only: a vertical line stays one column wide, a horizontal one spreads over rows
    lines = torch.zeros(2, 28, 28, dtype=torch.uint8)
    lines[0, 4:24, 14] = 255
    lines[1, 14, 4:24] = 255
    vertical, horizontal = corrupt(lines, "gaussian_blur", 3)
    assert vertical[:, 13].sum() == vertical[:, 15].sum() == 0 and (horizontal[10:19, 14] > 0).all()
    got = corrupt(IMAGES, "jpeg", 3)
    for image, out in zip(IMAGES, got):
        buffer = io.BytesIO()
        Image.fromarray(image.numpy()).save(buffer, format="JPEG", quality=15)
        assert torch.equal(out, torch.from_numpy(np.array(Image.open(buffer))))
    assert not torch.equal(got, IMAGES)


def test_the_same_seed_gives_the_same_images_and_another_seed_other_ones():
    random = ("gaussian_noise", "shot_noise", "impulse_noise", "rotate", "shear", "translate")
    for corruption, level in corruptions.sets():
        a, b = corrupt(IMAGES, corruption, level, seed=0), corrupt(IMAGES, corruption, level, seed=0)
        assert torch.equal(a, b), corruption
        other = corrupt(IMAGES, corruption, level, seed=1)
        assert torch.equal(a, other) == (corruption not in random), corruption
    # The caller's global random state is left alone (gaussian_noise draws on a fork of it)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    corrupt(IMAGES, "gaussian_noise", 1)
    assert torch.equal(torch.rand(3), expected)


def test_every_set_keeps_shape_and_type_and_bad_names_or_levels_are_refused():
    for corruption, level in corruptions.sets():
        out = corrupt(IMAGES, corruption, level)
        assert out.shape == IMAGES.shape and out.dtype == torch.uint8, corruption
    assert len(corruptions.sets()) == 11 * 3 + 2
    with pytest.raises(ValueError, match="corruption must be one of brightness, contrast"):
        corrupt(IMAGES, "fog", 1)
    with pytest.raises(ValueError,
                       match=r"rotate takes a severity level 1 to 5 \(this study uses \(1, 3, 5\)\), got None"):
        corrupt(IMAGES, "rotate")
    with pytest.raises(ValueError, match="inverse takes no severity level, got 2"):
        corrupt(IMAGES, "inverse", 2)
    with pytest.raises(ValueError, match="severity level must be 1 to 5, got 6"):
        corrupt(IMAGES, "brightness", 6)
