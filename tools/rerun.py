"""Train again the run a results file records, with its recipe, CPU thread count and instruction set, and say whether
its history came out identical.

    python -m tools.rerun results/ln_seed0.json              # all 20 epochs, into runs/results/rerun/
    python -m tools.rerun results/ln_seed0.json --epochs 2   # its first two epochs only

Exit status 0 if identical (every key the file records but seconds), 1 if not.
"""
import os
import sys

import torch

import utils
from mnist_norms import cli, machine, runner
from mnist_norms.data import load_mnist
from mnist_norms.recipe import Recipe, settings_folder
from mnist_norms.records import read_record, run_paths, shown

INPUT = "a results file that train.py wrote, such as results/ln_seed0.json"


def parse_args(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("file", help=INPUT)
    p.add_argument("--epochs", type=cli.positive_int, default=None, metavar="N",
                   help="train only the run's first N epochs (of its schedule) and compare those (default: all)")
    p.add_argument("--data", default="data", help="dataset root (torchvision layout: DATA/MNIST/raw)")
    p.add_argument("--out", default=cli.RUNS, help="the rerun is written under OUT/results/rerun/")
    p.add_argument("--fresh", action="store_true", help="train the rerun from scratch instead of resuming it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars, only the per-epoch log")
    args = p.parse_args(argv)
    if not os.path.isfile(args.file):
        p.error(f"no such file: {args.file} (expected {INPUT})")
    return args


def pin_for(config, path):
    """Before anything runs: the device and instruction set the rerun of `config` needs (returns the device), or an
    error (exit 1) that says why this machine cannot reproduce it."""
    if not config.get("device", "cpu").startswith("cpu"):
        print(f"note: {path} was trained on {config.get('hardware', 'a GPU')}; GPU runs are not bit-reproducible on "
              f"other kinds of GPU (and not promised on the same kind): expect other last digits")
        return machine.pick_device()
    expected = config.get("isa")
    if expected == machine.AVX2:
        used = machine.pin_isa()
        if used != machine.AVX2:
            sys.exit(f"rerun: error: {path} was trained with its kernels pinned to AVX2, and this machine computes "
                     f"with {used} ({machine.why_not_pinnable() or 'torch chose its kernels too early'}): it cannot "
                     f"reproduce the run bit for bit")
    else:
        used = machine.pin_isa(False)  # a run recorded with a CPU's native instruction set needs that same one
        if not expected or machine.parts(used)[0] != machine.parts(expected)[0]:
            sys.exit(f"rerun: error: {path} was trained with {expected or 'an unrecorded instruction set'}, and this "
                     f"CPU computes with {used}: the run cannot be reproduced bit for bit here")
    made_on, vendor = config.get("cpu"), machine.cpu_vendor()
    if made_on and vendor and f"({vendor})" not in made_on:
        print(f"note: {path} was made on {made_on}, and this CPU is {machine.cpu_name()}; no operation of its steps "
              f"depends on the CPU's vendor, so it reproduces on any x86-64 CPU with AVX2 and FMA "
              f"(docs/performance.md says on which CPUs that was checked)")
    return torch.device("cpu")  # a CPU run is re-run on the CPU, even where a GPU is present


def rerun(saved, path, data, *, device, out, epochs=None, fresh=False, progress=True):
    """The recorded run again, with its recipe and thread count; 0 if its history is identical, else 1."""
    recipe = Recipe.from_config(saved["config"])
    threads = saved["config"]["threads"]
    print(f"re-running {path}: {recipe}, {threads} CPU thread{'s' if threads > 1 else ''}")
    # A folder of its own, so that a rerun never finds (and loads) a run of the user's with the same settings
    folder = os.path.join("rerun", settings_folder(recipe))
    written = run_paths(out, folder, saved["name"], recipe.seed)["results"]
    if os.path.abspath(written) == os.path.abspath(path):
        sys.exit(f"rerun: error: the rerun would overwrite {path}; choose another --out")
    print(utils.LOG_HEADER)
    _, record = runner.run(utils.fit, recipe, data, device=device, out=out, name=saved["name"], progress=progress,
                           fresh=fresh, study=runner.Study(folder=folder, stop_after=epochs), threads=threads)
    keys = {k for e in saved["history"] for k in e} - {"seconds"}
    strip = lambda history: [{k: v for k, v in e.items() if k in keys} for e in history]
    new, old = strip(record["history"]), strip(saved["history"][:epochs])
    differs = next((i for i, (a, b) in enumerate(zip(new, old)) if a != b), None)
    if differs is None and len(new) == len(old):
        which = f"the first {len(new)} of its {len(saved['history'])}" if epochs else f"all {len(new)}"
        print(f"identical: {which} epochs of {shown(written)} equal {path} (every key it records but seconds)")
        return 0
    where = f"epoch {differs + 1} differs: {new[differs]} against {old[differs]}" if differs is not None else \
        f"{len(new)} epochs against {len(old)}"
    print(f"different: {where}")
    return 1


def main(argv=None):
    args = parse_args(argv)

    def body():
        saved = read_record(args.file, own=f"--rerun takes {INPUT}")  # before anything is loaded
        config = saved["config"]
        if config.get("device", "cpu").startswith("cpu") and not all(config.get(k) for k in ("threads", "isa", "cpu")):
            # The files that predate these records (the augmentation and schedule searches') also computed their
            # augmentation with Intel MKL, whose last digits follow the CPU: today's code cannot give them again.
            sys.exit(f"rerun: error: {args.file} does not record its CPU, thread count and instruction set: it was "
                     f"made before today's arithmetic, so today's code cannot re-run it bit for bit; "
                     f"docs/experiments.md names the commit that does")
        device = pin_for(saved["config"], args.file)  # before torch's first operation (loading the data is one)
        data = load_mnist(args.data)
        return rerun(saved, args.file, data, device=device, out=args.out, epochs=args.epochs, fresh=args.fresh,
                     progress=not args.no_progress)
    # the pin follows the file (pin_for), so run_command leaves it to the body
    return cli.run_command("tools.rerun", body, pin=False)


if __name__ == "__main__":
    sys.exit(main())
