"""Corrupted MNIST test images after MNIST-C (Mu and Gilmer, 2019), deterministic from a seed.

MNIST-C cannot be downloaded here, so its corruptions are made again from its definitions
(github.com/google-research/mnist-c, corruptions.py) wherever they can be: the same formulas and the same five
severity levels, of which SEVERITIES are used. Each function takes float images [N, 1, 28, 28] in [0, 1], a level
(1 to 5) and a torch.Generator for whatever it draws, and returns images of the same shape in [0, 1]; corrupt()
turns uint8 test images into uint8 corrupted ones, as MNIST-C stores them. torchvision's functions are used where
they compute the corruption (contrast, invert, Gaussian noise), scipy's filter for the blur and Pillow for JPEG as
MNIST-C's skimage and Pillow do; the rest is written here, each with a comment saying why. How these differ from the
published MNIST-C is in CORRUPTIONS and in docs/experiments.md.
"""
import io
import math
import zlib

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from scipy import ndimage
from torchvision.transforms.v2 import functional as TF

from mnist_norms.augment import affine, sampling_grid

SEVERITIES = (1, 3, 5)  # MNIST-C's levels (of 1 to 5) used here: its mildest, middle and strongest


def level_of(values, level):
    """The value of MNIST-C's table `values` (one per level 1 to 5) at `level`."""
    if level not in range(1, len(values) + 1):
        raise ValueError(f"severity level must be 1 to {len(values)}, got {level!r}")
    return values[level - 1]


def signs(n, generator, columns=None):
    """-1 or +1 per image ([n], or [n, columns]), drawn uniformly: MNIST-C turns each image one way or the other."""
    shape = (n,) if columns is None else (n, columns)
    return torch.randint(0, 2, shape, generator=generator).float() * 2 - 1


# Intensity. MNIST-C's brightness adds c to the HSV value of the image made RGB; for a grey image that is its
# grey level plus c, clipped (torchvision's adjust_brightness multiplies instead, so it is written here).
def brightness(x, level, generator):
    return (x + level_of((0.1, 0.2, 0.3, 0.4, 0.5), level)).clamp(0, 1)


def contrast(x, level, generator):
    """(x - mean) * c + mean, clipped, the mean over each image: torchvision's adjust_contrast computes exactly this."""
    return TF.adjust_contrast(x, level_of((0.4, 0.3, 0.2, 0.1, 0.05), level))


def inverse(x, level, generator):
    return TF.invert(x)


def stripe(x, level, generator):
    """MNIST-C's stripe: the left and right quarters (7 columns each) inverted; torchvision has no such transform."""
    x = x.clone()
    x[..., :7] = 1 - x[..., :7]
    x[..., 21:] = 1 - x[..., 21:]
    return x


# Noise.
def gaussian_noise(x, level, generator):
    """x + N(0, c^2), clipped: torchvision's gaussian_noise, which draws from torch's global generator, so it runs on
    a fork of that generator seeded from `generator` (the caller's global random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31, (), generator=generator)))
        return TF.gaussian_noise(x, sigma=level_of((0.08, 0.12, 0.18, 0.26, 0.38), level), clip=True)


def shot_noise(x, level, generator):
    """Poisson(c x) / c, clipped; torchvision has no Poisson noise, torch.poisson takes the generator."""
    c = level_of((60, 25, 12, 5, 3), level)
    return (torch.poisson(x * c, generator=generator) / c).clamp(0, 1)


def impulse_noise(x, level, generator):
    """Salt and pepper, as skimage's random_noise(mode="s&p") that MNIST-C calls: a share c of the pixels, each set
    to 1 or 0 with equal odds; torchvision has none."""
    c = level_of((0.03, 0.06, 0.09, 0.17, 0.27), level)
    hit = torch.rand(x.shape, generator=generator) < c
    salt = torch.rand(x.shape, generator=generator) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


# Blur and compression.
def gaussian_blur(x, level, generator):
    """MNIST-C's gaussian_blur: skimage's gaussian(x, sigma=c, multichannel=True) on a 2-D image takes its last axis
    (the columns) for colour channels, so it blurs along the rows' axis only, each column on its own: a vertical blur.
    scipy's gaussian_filter1d, which skimage's gaussian calls, with skimage's defaults (the nearest pixel beyond the
    edge, the kernel cut at 4 sigma)."""
    sigma = level_of((1, 2, 3, 4, 6), level)
    return torch.from_numpy(ndimage.gaussian_filter1d(x.numpy(), sigma, axis=-2, mode="nearest", truncate=4.0))


def jpeg(x, level, generator):
    """Saved as JPEG at MNIST-C's quality and read back, with Pillow as MNIST-C does (its jpeg_compression);
    torchvision's JPEG functions are deprecated since torchvision 0.29. One image at a time: Pillow takes one."""
    quality = level_of((25, 18, 15, 10, 7), level)
    out = []
    for image in to_uint8(x)[:, 0].numpy():
        buffer = io.BytesIO()
        PIL.Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out.append(torch.from_numpy(np.array(PIL.Image.open(buffer))))
    return torch.stack(out)[:, None].float() / 255


# Geometry: MNIST-C's maps about the image's centre, bilinear, 0 outside the frame. augment.affine computes them
# for the whole batch, each image with its own direction; torchvision's affine and rotate compute the same maps, but
# on a CPU their sampling grid is Intel MKL's matrix product, whose last digits follow the CPU's vendor
# (docs/performance.md), and they take one map per call.
def rotate(x, level, generator):
    """A turn by c radians, one way or the other."""
    c = level_of((0.2, 0.4, 0.6, 0.8, 1.0), level)
    return affine(x, math.degrees(c) * signs(len(x), generator))


def shear(x, level, generator):
    """MNIST-C's shear, c one way or the other: the skimage of its time (before 0.19) built AffineTransform(shear=c) as
    [[1, -sin c], [0, cos c]], which MNIST-C passes to warp as the inverse map about the centre (13.5, 13.5): each
    output pixel (x, y) samples the input at (x - sin(c) y, cos(c) y), in coordinates about the centre. The digit is
    slanted by sin c per row and stretched vertically by 1 / cos c. Bilinear, 0 outside the frame, as warp; the grid
    is the training's (ATen's operations only), whose [-1, 1] coordinates of a square image are these scaled."""
    c = level_of((0.2, 0.4, 0.6, 0.8, 1.0), level) * signs(len(x), generator)
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 1] = 1.0, -c.sin(), c.cos()
    return F.grid_sample(x, sampling_grid(theta, x.shape), mode="bilinear", padding_mode="zeros", align_corners=False)


def scale(x, level, generator):
    """The digit shrunk by a factor c about the centre."""
    c = level_of((0.9, 0.8, 0.7, 0.6, 0.5), level)
    return affine(x, torch.zeros(len(x)), scale=torch.full((len(x),), c))


def translate(x, level, generator):
    """A shift by c pixels along x and along y, each one way or the other (whole pixels: no interpolation)."""
    c = level_of((1, 2, 3, 4, 5), level)
    return affine(x, torch.zeros(len(x)), translate=c * signs(len(x), generator, 2))


# name: (function, levels: None for a corruption without severities, what it is)
CORRUPTIONS = {
    "brightness": (brightness, SEVERITIES, "grey level + c, c = 0.1, 0.3, 0.5"),
    "contrast": (contrast, SEVERITIES, "(x - mean) * c + mean, c = 0.4, 0.2, 0.05 (in MNIST-C's code, not its 15)"),
    "inverse": (inverse, None, "1 - x (in MNIST-C's code, not its 15)"),
    "stripe": (stripe, None, "the left and right 7 columns inverted"),
    "gaussian_noise": (gaussian_noise, SEVERITIES, "+ N(0, c^2), c = 0.08, 0.18, 0.38 (not in MNIST-C's 15)"),
    "shot_noise": (shot_noise, SEVERITIES, "Poisson(c x) / c, c = 60, 12, 3"),
    "impulse_noise": (impulse_noise, SEVERITIES, "salt and pepper on a share c = 0.03, 0.09, 0.27 of the pixels"),
    "gaussian_blur": (gaussian_blur, SEVERITIES, "Gaussian blur along the rows' axis only (vertical), as MNIST-C's "
                                                 "code computes it, sigma = 1, 3, 6 (not in MNIST-C's 15)"),
    "jpeg": (jpeg, SEVERITIES, "JPEG at quality 25, 15, 7 (not in MNIST-C's 15)"),
    "rotate": (rotate, SEVERITIES, "turned by ±c radians, c = 0.2, 0.6, 1.0"),
    "shear": (shear, SEVERITIES, "slanted by ±sin c per row and stretched vertically by 1 / cos c, as MNIST-C's code "
                                 "computes it, c = 0.2, 0.6, 1.0"),
    "scale": (scale, SEVERITIES, "shrunk by c = 0.9, 0.7, 0.5"),
    "translate": (translate, SEVERITIES, "shifted by ±c pixels along x and y, c = 1, 3, 5"),
}
# The corruptions whose definition changed since results/shift/ was first made, with the version of each: a set made
# with an older version is computed again (studies.shift), the others are kept.
VERSIONS = {"shear": 2, "gaussian_blur": 2}  # 2: MNIST-C's own shear and vertical blur (1: tan-shear, both axes)
GROUPS = {"intensity": ("brightness", "contrast", "inverse", "stripe"),
          "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
          "blur": ("gaussian_blur", "jpeg"),
          "geometry": ("rotate", "shear", "scale", "translate")}


def sets():
    """[(corruption, level)] of every corrupted set, level None for the corruptions without severities."""
    return [(name, level) for name, (_, levels, _) in CORRUPTIONS.items() for level in (levels or (None,))]


def version(corruption):
    """The version of a corruption's definition (VERSIONS; 1 for those never changed)."""
    return VERSIONS.get(corruption, 1)


def set_name(corruption, level):
    """ "rotate_3", "inverse": a corrupted set's name."""
    return corruption if level is None else f"{corruption}_{level}"


def to_uint8(x):
    """Images in [0, 1] as uint8, rounded to the nearest grey level."""
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def corrupt(images, corruption, level=None, seed=0):
    """The uint8 test images [N, 28, 28] corrupted by `corruption` at MNIST-C's `level` (1 to 5; None for those
    without severities), as uint8 [N, 28, 28]. Whatever it draws comes from a generator seeded by `seed` and the
    corruption's name (not the level: the levels of one corruption draw the same noise and directions, so they
    differ only in strength); the same seed gives the same images on any CPU."""
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {', '.join(CORRUPTIONS)}, got {corruption!r}")
    function, levels, _ = CORRUPTIONS[corruption]
    if (levels is None) != (level is None):
        raise ValueError(f"{corruption} takes " + ("no severity level" if levels is None else
                                                   f"a severity level 1 to 5 (this study uses {levels})")
                         + f", got {level!r}")
    # torch's CPU generator keeps 32 bits of its seed: both go into one 32-bit number
    generator = torch.Generator().manual_seed(zlib.crc32(f"{corruption} {seed}".encode()))
    x = images.cpu()[:, None].float() / 255  # [N, 1, 28, 28]
    return to_uint8(function(x, level, generator))[:, 0].to(images.device)
