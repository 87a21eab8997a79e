"""The command line of train.py and the studies, derived from Recipe's fields (their defaults, ranges and help), plus
the options that say where and how runs train."""
import argparse
import math
import os
import shlex
import sys
from dataclasses import fields

from mnist_norms.data import load_mnist
from mnist_norms.machine import default_jobs, pick_device, pin_isa, tune_malloc
from mnist_norms.recipe import Recipe, accepted, check
from mnist_norms.records import RUNS
from mnist_norms.runner import USER_ERRORS
from model import MODELS, NORMS

FIELDS = {f.name: f for f in fields(Recipe)}


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


def field_type(f):
    """An argparse type for Recipe field `f`: its kind, checked by recipe.check (the error says what it accepts)."""
    def parse(text):
        try:
            value = f.metadata["kind"](text)
            return check(f, value.upper() if f.name == "norm" else value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {accepted(f)}, got {text!r}") from None
    parse.__name__ = f.name  # argparse names the type in some messages
    return parse


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


def add_recipe_arguments(p, names=None, *, helps=None, defaults=None):
    """--norms and --seeds (a run per norm and seed), and an option per Recipe field in `names` (default: every field
    but norm and seed), each with the field's default, range and help; `helps` and `defaults` override a field's help
    or default where a command means something else by it (the study's --lr is the rate at its anchor batch)."""
    helps, defaults = helps or {}, defaults or {}
    p.add_argument("--norms", nargs="+", type=str.upper, choices=MODELS, default=list(NORMS), metavar="NORM",
                   help=f"which models to train, any of {', '.join(NORMS)}, or {MODELS[-1]} for the control without "
                        f"normalization (any case)")
    p.add_argument("--seeds", nargs="+", type=field_type(FIELDS["seed"]), default=[Recipe.seed], metavar="SEED",
                   help="one run per seed")
    for name in names or [n for n in FIELDS if n not in ("norm", "seed")]:
        f = FIELDS[name]
        default = defaults.get(name, f.default)
        kw = dict(choices=f.metadata["choices"]) if f.metadata["choices"] and f.metadata["kind"] is not str else {}
        p.add_argument("--" + name.replace("_", "-"), type=field_type(f), default=default,
                       help=helps.get(name, f.metadata["help"]), metavar=name.upper() if not kw else None, **kw)


def recipe_settings(args, names=None):
    """{field: value} of the Recipe fields that the parsed `args` carry (by default every field but norm and seed)."""
    return {n: getattr(args, n) for n in names or FIELDS if n not in ("norm", "seed") and hasattr(args, n)}


def variant(args, defaults, keys) -> str:
    """ "epochs1_limit500": the settings among `keys` in which parsed `args` differ from the parsed `defaults`, to
    name a folder of their own under --out ("" for the defaults), so that runs with other settings never clash."""
    return "_".join(f"{key}{getattr(args, key)}" for key in keys if getattr(args, key) != getattr(defaults, key))


def add_run_arguments(p, *, figures=True):
    """Where data and results are, the device, parallel jobs, and starting over; --no-figures if the command draws
    figures."""
    p.add_argument("--jobs", type=positive_int, default=None,
                   help="runs trained at once, each in its own process; on a CPU every run computes with one thread "
                        "whatever this is, so a run's numbers do not depend on it (default: on a CPU every run at "
                        "once when they are at most twice the cores, else one per core; 1 on a GPU)")
    p.add_argument("--data", default="data", help="dataset root (torchvision layout: DATA/MNIST/raw)")
    p.add_argument("--out", default=RUNS,
                   help="where results/, weights/, checkpoints/ and static/ are written: by default a folder of your "
                        "own that git ignores; --out . is the repository's committed runs, written only when asked")
    p.add_argument("--device", type=device, default="auto",
                   help="cpu, cuda[:N], mps, or auto: cuda, then mps, then cpu")
    p.add_argument("--fresh", action="store_true",
                   help="delete the files of the runs asked for and train them from scratch, instead of resuming "
                        "unfinished runs and keeping finished ones")
    p.add_argument("--no-progress", action="store_true", help="no progress bars, only the per-epoch log")
    p.add_argument("--native-isa", action="store_true",
                   help="leave the CPU's own instruction set to PyTorch's kernels instead of pinning them to AVX2 "
                        "(faster on some CPUs; runs then reproduce bit for bit only on the same kind of CPU)")
    if figures:
        p.add_argument("--no-figures", action="store_true", help="write results/ only, leaving static/ as it is")


def add_quick_look_arguments(p, epochs):
    """--epochs (default `epochs`) and --limit for a study on the validation split: fewer only for a quick look, whose
    runs go to a folder of their own under --out (variant)."""
    p.add_argument("--epochs", type=positive_int, default=epochs,
                   help="epochs per run (the study uses the default; fewer only for a quick look, which goes to a "
                        "folder of its own under --out)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="train on only the first N training images, for a quick look (a folder of its own under "
                        "--out; default: all 50,000)")


def run_quick_lookable(args, defaults, command, train, header=""):
    """A validation-split study's main: a quick look's runs in a folder of their own under --out, the allocator
    setting and the AVX2 pin (before torch's first operation), MNIST, then train(data, **options); a user's error or
    Ctrl-C ends in one line. Returns train's result."""
    args.out = os.path.join(args.out, variant(args, defaults, ("epochs", "limit")))

    def body():
        if header:
            print(header)
        return train(load_mnist(args.data), device=args.device, out=args.out, jobs=args.jobs, fresh=args.fresh,
                     progress=not args.no_progress, epochs=args.epochs, limit=args.limit)
    return run_command(command, body, pin=not args.native_isa)


def resume_command(command, argv=None):
    """The command as typed, to run again: "python -m studies.batch_size --out ." or "python train.py --jobs 2"
    (argv: its arguments, by default this process's)."""
    argv = sys.argv[1:] if argv is None else argv
    return shlex.join(["python"] + ([command] if command.endswith(".py") else ["-m", command]) + list(argv))


def run_command(command, body, *, pin=True, precision="fp32", kept="every finished epoch is kept"):
    """Every command's tail: the allocator setting and, with pin, the CPU instruction set pinned to AVX2 (before
    torch's first operation: machine.pin_isa; with bf16, oneDNN keeps its own; without pin, PyTorch's own choice, or
    the body pins as it must), then body(); a user's error (runner.USER_ERRORS) ends in one line, Ctrl-C in what was
    kept and the command as typed, which resumes (resume_command). Returns body's result."""
    tune_malloc()
    if pin:
        pin_isa(onednn=precision == "fp32")  # so that the runs reproduce on other CPUs
    try:
        return body()
    except USER_ERRORS as e:
        sys.exit(f"{command}: error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"\nstopped: {kept}; resume with: {resume_command(command)}")


def finish_run_arguments(args, runs=None):
    """Fill in what add_run_arguments leaves to the machine: --jobs, for `runs` runs (None: many)."""
    args.jobs = args.jobs or default_jobs(args.device, runs)
    return args
