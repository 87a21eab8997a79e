"""Command-line pieces shared by train.py, study.py and benchmarks/: value checks, the device, common options."""
import argparse
import math
import os

import utils
from model import NORMS, VALID_GROUPS
from machine import pick_device
from recipe import PRECISIONS, Recipe

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT = Recipe()  # every default below is read from here


def number(kind, what, low, *, low_open=False, high=None):
    """An argparse type: `kind` (int or float) in [low, high), or (low, high) if low_open."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < low or (low_open and value == low) \
                or (high is not None and value >= high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


positive_int = number(int, "a positive integer", 1)


def device(text):
    """An argparse type: cpu, cuda[:N], mps, or auto (cuda, then mps, then cpu), available here."""
    try:
        return pick_device(None if text == "auto" else text)
    except (RuntimeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows "(default: ...)" except where the default is None or the help says it in words already."""
    def _get_help_string(self, action):
        if action.default is None or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parser(description):
    # allow_abbrev=False: a misspelt or shortened option is an error, never silently another option
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter, allow_abbrev=False)


def add_recipe_arguments(p, *, lr_help="peak learning rate of the one-cycle schedule"):
    """The Recipe's settings that a command may change, with the Recipe's defaults."""
    p.add_argument("--norms", nargs="+", type=str.upper, choices=NORMS, default=list(NORMS), metavar="NORM",
                   help=f"which models to train, any of {', '.join(NORMS)} (any case)")
    p.add_argument("--seeds", nargs="+", type=number(int, "a seed >= 0", 0), default=[DEFAULT.seed], metavar="SEED",
                   help="one run per seed")
    p.add_argument("--epochs", type=positive_int, default=DEFAULT.epochs, help="epochs per run")
    p.add_argument("--lr", type=number(float, "a number > 0", 0, low_open=True), default=DEFAULT.lr, help=lr_help)
    p.add_argument("--pct-start", type=number(float, "a fraction in (0, 1)", 0, low_open=True, high=1),
                   default=DEFAULT.pct_start, help="the share of the one-cycle schedule over which the learning rate "
                   "rises to its peak")
    p.add_argument("--cycle-epochs", type=positive_int, default=DEFAULT.cycle_epochs, metavar="N",
                   help="the one-cycle schedule spans the first N epochs, then holds its end (default: all epochs)")
    p.add_argument("--final-div", type=number(float, "a number > 0", 0, low_open=True), default=DEFAULT.final_div,
                   help="the cycle ends at lr / 25 / FINAL_DIV")
    p.add_argument("--ema", type=number(float, "a decay in [0, 1)", 0, high=1), default=DEFAULT.ema,
                   help="per-step decay of the exponential moving average of the weights and BN's statistics that "
                        "is evaluated and saved; 0: none, the trained weights themselves")
    p.add_argument("--ema-warmup", type=number(float, "a finite number >= 0", 0), default=DEFAULT.ema_warmup,
                   help="warm the average up: its decay at the n-th update is min(EMA, (1 + n) / (EMA_WARMUP + n)); "
                        "0: EMA from the first update")
    p.add_argument("--clip", type=number(float, "a finite number >= 0", 0), default=DEFAULT.clip,
                   help="clip the total norm of the gradient to CLIP before each step; 0: never")
    p.add_argument("--label-smoothing", type=number(float, "a fraction in [0, 1)", 0, high=1),
                   default=DEFAULT.label_smoothing,
                   help="train on cross-entropy against labels smoothed by this (torch's label_smoothing); 0: the NLL")
    p.add_argument("--weight-decay", type=number(float, "a finite number >= 0", 0), default=DEFAULT.weight_decay,
                   help="SGD's weight decay on every parameter")
    p.add_argument("--dropout", type=number(float, "a probability in [0, 1)", 0, high=1), default=DEFAULT.dropout,
                   help="dropout after every norm layer")
    p.add_argument("--groups", type=int, choices=VALID_GROUPS, default=DEFAULT.groups,
                   help="groups in every GroupNorm layer")
    p.add_argument("--degrees", type=number(float, "a finite number >= 0", 0), default=DEFAULT.degrees,
                   help="augmentation: each training image is rotated by an angle uniform in ±DEGREES")
    p.add_argument("--translate", type=number(float, "a fraction in [0, 1)", 0, high=1), default=DEFAULT.translate,
                   help="augmentation: and shifted by up to ±TRANSLATE of its width and of its height")
    p.add_argument("--scale", type=number(float, "a number in [0, 1)", 0, high=1), default=DEFAULT.scale,
                   help="augmentation: and zoomed by a factor uniform in [1 - SCALE, 1 + SCALE]")
    p.add_argument("--shear", type=number(float, "degrees in [0, 90)", 0, high=90), default=DEFAULT.shear,
                   help="augmentation: and sheared along x by an angle uniform in ±SHEAR degrees")
    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULT.precision,
                   help="the training forward pass: fp32, or bf16 (bfloat16 autocast)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="train on only the first N training images, for a quick run (default: all)")


def variant(args, defaults, keys) -> str:
    """ "epochs1_limit500": the settings among `keys` in which parsed `args` differ from the parsed `defaults`, to
    name a folder of their own under --out ("" for the defaults), so that runs with other settings never clash."""
    return "_".join(f"{key}{getattr(args, key)}" for key in keys if getattr(args, key) != getattr(defaults, key))


def schedule(args):
    """The Recipe's optimization settings from parsed arguments: the schedule, the average, the clip, the loss's
    smoothing and the weight decay."""
    return {"pct_start": args.pct_start, "cycle_epochs": args.cycle_epochs, "final_div": args.final_div,
            "ema": args.ema, "ema_warmup": args.ema_warmup, "clip": args.clip,
            "label_smoothing": args.label_smoothing, "weight_decay": args.weight_decay}


def augmentation(args):
    """The Recipe's augmentation settings from parsed arguments."""
    return {"degrees": args.degrees, "translate": args.translate, "scale": args.scale, "shear": args.shear}


def add_run_arguments(p, *, jobs_default, jobs_help, figures=True):
    """Where data and results are, the device, parallel jobs, and starting over; --no-figures if the command draws
    figures."""
    p.add_argument("--jobs", type=positive_int, default=jobs_default, help=jobs_help)
    p.add_argument("--data", default="data", help="dataset root (torchvision layout: DATA/MNIST/raw)")
    p.add_argument("--out", default=utils.RUNS,
                   help="where results/, weights/, checkpoints/ and static/ are written: by default a folder of your "
                        "own that git ignores; --out . is the repository's committed runs, written only when asked")
    p.add_argument("--device", type=device, default="auto", help="cpu, cuda[:N], mps, or auto: cuda, then mps, then cpu")
    p.add_argument("--fresh", action="store_true",
                   help="delete the files of the runs asked for and train them from scratch, instead of resuming "
                        "unfinished runs and keeping finished ones")
    p.add_argument("--no-progress", action="store_true", help="no progress bars, only the per-epoch log")
    p.add_argument("--native-isa", action="store_true",
                   help="leave the CPU's own instruction set to PyTorch's kernels instead of pinning them to AVX2 "
                        "(faster on some CPUs; runs then reproduce bit for bit only on the same kind of CPU)")
    if figures:
        p.add_argument("--no-figures", action="store_true", help="write results/ only, leaving static/ as it is")
