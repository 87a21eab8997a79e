"""Shared fixtures: the repository on sys.path, small synthetic data, and the real MNIST when marked."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import utils  # noqa: E402

DATA = os.environ.get("MNIST_DATA", os.path.join(ROOT, "data"))


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST ((train), (test)), loaded once per session from DATA (fetched there if absent)."""
    return utils.load_mnist(DATA)


def synthetic(n, seed=0):
    """n uint8 28x28 images whose class is the position of a bright 6x6 square, plus noise: learnable fast."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 60, (n, 28, 28), generator=g, dtype=torch.uint8)
    for i, c in enumerate(labels.tolist()):
        r, col = 3 + 12 * (c // 5), 2 + 5 * (c % 5)
        images[i, r:r + 6, col:col + 6] = 255
    return images, labels
