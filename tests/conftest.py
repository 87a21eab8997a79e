"""Shared fixtures: the repository on sys.path, small synthetic data, and the real MNIST when marked."""
import os
import shutil
import subprocess
import sys

import pytest

# With pytest-xdist (pytest.ini: -n auto) several test processes share the cores. Each computing with a thread per core
# would spin-wait against the others (on 2 cores the suite took 322 s in 2 processes against 303 s in one; 234 s with
# one thread each), so each, and every command it starts, computes with an equal share of them. Runs themselves always
# compute with one thread, so no number changes.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mnist_norms.data import load_mnist

DATA = os.environ.get("MNIST_DATA", os.path.join(ROOT, "data"))


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST ((train), (test)), loaded once per session from DATA (fetched there if absent)."""
    return load_mnist(DATA)


def synthetic(n, seed=0):
    """n uint8 28x28 images whose class is the position of a bright 6x6 square, plus noise: learnable fast."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 60, (n, 28, 28), generator=g, dtype=torch.uint8)
    for i, c in enumerate(labels.tolist()):
        r, col = 3 + 12 * (c // 5), 2 + 5 * (c % 5)
        images[i, r:r + 6, col:col + 6] = 255
    return images, labels


def without_time(history):
    """A run's history without its timings, which differ between any two runs."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def git(*args, cwd=ROOT):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def clone(tmp_path):
    """A fresh clone of the repository in the state a user gets it (the committed results/, weights/ and static/
    in it), with this working tree's changes committed on top, so that `git status --porcelain` there lists exactly
    what a command went on to change."""
    if not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("needs the repository's git history to clone from")
    path = tmp_path / "clone"
    git("clone", "--quiet", "--no-hardlinks", ROOT, str(path))
    changed = git("diff", "--name-only", "-z", "HEAD").split("\0") + \
        git("ls-files", "--others", "--exclude-standard", "-z").split("\0")
    for name in filter(None, changed):
        if os.path.islink(os.path.join(ROOT, name)):  # a link to a virtual environment or data kept elsewhere
            continue
        if os.path.exists(os.path.join(ROOT, name)):
            os.makedirs((path / name).parent, exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), path / name)
        else:
            (path / name).unlink(missing_ok=True)
    git("add", "-A", cwd=path)
    git("-c", "user.name=tests", "-c", "user.email=tests@localhost", "commit", "--quiet", "--allow-empty", "-m",
        "the working tree under test", cwd=path)
    return path


def changed_files(path):
    """`git status --porcelain` of a clone: the tracked files changed and the untracked files not ignored."""
    return git("status", "--porcelain", cwd=path)


def pytest_collection_modifyitems(items):
    """The tests on the real MNIST are the long ones: they go first, so that no long one is among the last to start
    while the other test processes (pytest-xdist, pytest.ini) have nothing left to do."""
    items.sort(key=lambda item: item.get_closest_marker("mnist") is None)
