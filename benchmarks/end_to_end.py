"""Whole epochs and whole experiments, each measured in a fresh process, two settings side by side in alternating order.

Comparisons (--compare, any of):
  malloc      glibc's default allocator against machine.tune_malloc, at 1 and at 2 CPU threads
              (BN + L1, our pipeline, on --limit training images; epoch seconds)
  pipeline    the conventional pipeline (torchvision DataLoader with PIL RandomRotation, ToTensor and Normalize,
              glibc's default allocator, fp32) against ours with train.py's defaults (data on the device, batched
              rotation, machine.tune_malloc); one epoch of BN + L1 on the 60,000 training images plus the evaluation
              of the 10,000 test images, both with the CPU's threads
  precision   fp32 against bf16 autocast (our pipeline, as malloc)
  isa         the CPU's native instruction set against kernels pinned to AVX2 (machine.pin_isa, train.py's default);
              one epoch of BN + L1 on the 60,000 training images plus the evaluation, as pipeline
  experiment  the whole `python train.py` (BN + L1, LN and GN) with --jobs A against --jobs B (--experiment-jobs,
              default 2 and 3: on 2 cores, two runs side by side and then the third alone, or all three at once);
              wall seconds of the process, for --experiment-epochs epochs (on --experiment-limit training images)
  before      the whole `python train.py` of another checkout (--before DIR, e.g. a `git worktree` of an older
              commit) against this one, both with their defaults, measured as experiment
Each setting runs --repeats times, alternating which goes first; the first epoch of each run is left out (warm-up)
and the median of the rest is reported. Run from the repository root as `python -m benchmarks.end_to_end`.
Writes results/end_to_end.json (--quick: results/end_to_end_quick.json), keeping other comparisons already there.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import utils
from benchmarks import pipeline
from mnist_norms import machine
from mnist_norms.augment import MEAN, STD
from mnist_norms.data import load_mnist, select
from mnist_norms.files import write_json
from mnist_norms.recipe import L1, Recipe
from mnist_norms.records import ROOT
from mnist_norms.training import evaluate
from model import Net
from studies.tables import load_json

ISA_NAMES = {"avx2": "AVX2", "avx512": "AVX-512"}  # ATen's capability names, as the docs write them
COMPARISONS = ("malloc", "pipeline", "precision", "isa", "experiment", "before")
QUICK_TEST_IMAGES = 1000  # --quick evaluates on these first test images


def epochs_in_this_process(spec, data_root):
    """Epoch seconds (train + test evaluation) of BN + L1 with spec's settings, in this (fresh) process."""
    if spec["malloc"]:
        machine.tune_malloc()
    machine.pin_isa(spec["isa"] == machine.AVX2, onednn=spec["precision"] == "fp32")  # as train.py, before any op
    torch.set_num_threads(spec["threads"])
    device = torch.device("cpu")
    train, test = load_mnist(data_root)
    recipe = Recipe("BN", l1=L1, epochs=spec["epochs"], limit=spec["limit"], precision=spec["precision"])
    train, test = select((train, test), recipe)
    test = tuple(t[:spec.get("test_images")] for t in test)  # all 10,000 unless --quick says fewer
    torch.manual_seed(0)
    model = Net("BN").to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True)
    seconds = []
    if spec["pipeline"] == "ours":
        generator = torch.Generator().manual_seed(0)
        for _ in range(spec["epochs"]):
            start = time.perf_counter()
            utils.train(model, train, optimizer, recipe, generator=generator, progress=False)
            evaluate(model, test)
            seconds.append(time.perf_counter() - start)
        return seconds
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms
    loader = pipeline.conventional_loader(data_root, recipe.batch_size, spec["workers"], device)
    if spec["limit"]:
        loader = DataLoader(Subset(loader.dataset, range(spec["limit"])), batch_size=recipe.batch_size, shuffle=True,
                            num_workers=spec["workers"], persistent_workers=spec["workers"] > 0)
    test_set = datasets.MNIST(data_root, train=False, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))]))
    if spec.get("test_images"):
        test_set = Subset(test_set, range(spec["test_images"]))
    test_loader = DataLoader(test_set, batch_size=2000)
    for _ in range(spec["epochs"]):
        start = time.perf_counter()
        model.train()
        for x, y in loader:
            pipeline.train_step(model, optimizer, x, y, recipe.precision)
        model.eval()
        with torch.inference_mode():
            correct = sum((model(x).argmax(1) == y).sum().item() for x, y in test_loader)
        seconds.append(time.perf_counter() - start)
    assert 0 <= correct <= len(test_set)
    return seconds


def fresh_epochs(spec, args):
    """Epoch seconds of `spec` measured in a new Python process."""
    cmd = [sys.executable, "-m", "benchmarks.end_to_end", "--child", json.dumps(spec), "--data", args.data]
    # MKL reads MKL_CBWR at its first call: the child's environment sets it before anything runs
    env = dict(os.environ)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def isa_of_a_fresh_process(pin):
    """machine.isa_in_use() of a new process that pins (or not) before anything else."""
    code = f"from mnist_norms import machine; print(machine.pin_isa({pin}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          check=True).stdout.strip()


def isa_entries(isa):
    """The isa comparison's entries by CPU kind ({"avx2": {...}, "avx512": {...}}); a file written before there was
    one entry per kind holds a single entry, which is keyed by the native instruction set it records."""
    if not isa:
        return {}
    return {machine.parts(isa["isa_in_use"]["native"])[0]: isa} if "isa_in_use" in isa else isa


def fresh_experiment(jobs, args, folder, checkout=ROOT):
    """Wall seconds of a whole `python train.py` run (of `checkout`) with --jobs `jobs` (None: its default), in a
    new process."""
    out = os.path.join(folder, f"run_{len(os.listdir(folder))}")
    cmd = [sys.executable, os.path.join(checkout, "train.py"), "--epochs", str(args.experiment_epochs),
           "--device", "cpu", "--data", args.data, "--out", out, "--no-figures", "--no-progress"]
    if jobs:
        cmd += ["--jobs", str(jobs)]
    if args.experiment_limit:
        cmd += ["--limit", str(args.experiment_limit)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def compare(names, measure, repeats):
    """{name: [measurement per repeat]}, alternating which of the two goes first."""
    samples = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            samples[name].append(measure(name))
            print(f"  {name}: {samples[name][-1]}", flush=True)
    return samples


def epoch_median(runs):
    return statistics.median(s for run in runs for s in run[1:])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--compare", nargs="+", choices=COMPARISONS, default=list(COMPARISONS[:-1]),
                   help="what to measure (default: all but before)")
    p.add_argument("--quick", action="store_true",
                   help="1 repeat of 2 epochs on 512 images, evaluated on 1,000 test images (for the tests)")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per setting (default 3)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per process, the first left out (default 3)")
    p.add_argument("--limit", type=int, default=15000,
                   help="training images for malloc and precision (default 15000; pipeline always uses all)")
    p.add_argument("--experiment-epochs", type=int, default=2, help="epochs of each train.py run for experiment")
    p.add_argument("--experiment-jobs", type=int, nargs=2, default=[2, 3], metavar=("A", "B"),
                   help="the two --jobs values experiment compares")
    p.add_argument("--experiment-limit", type=int, default=None,
                   help="training images of each train.py run for experiment and before (default: all; 512 with "
                        "--quick)")
    p.add_argument("--workers", type=int, default=2, help="the conventional DataLoader's num_workers (default 2)")
    p.add_argument("--data", default=os.path.join(ROOT, "data"), help="dataset root (DATA/MNIST/raw)")
    p.add_argument("--out", default=None, help="the JSON written (default results/end_to_end.json)")
    p.add_argument("--before", default=None, metavar="DIR", help="the other checkout, for --compare before")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.epochs, args.limit, args.experiment_epochs = 1, 2, 512, 1
        args.experiment_limit = args.experiment_limit or args.limit
    if args.epochs < 2 or args.repeats < 1 or args.limit < 1 or args.experiment_epochs < 1 \
            or (args.experiment_limit is not None and args.experiment_limit < 1) \
            or min(args.experiment_jobs) < 1 or args.experiment_jobs[0] == args.experiment_jobs[1]:
        p.error("--epochs must be at least 2 (the first is left out); --repeats, --limit, --experiment-epochs and "
                "--experiment-limit at least 1; --experiment-jobs two different positive integers")
    if "before" in args.compare and not (args.before and os.path.isfile(os.path.join(args.before, "train.py"))):
        p.error("--compare before needs --before DIR, a checkout with a train.py")
    args.out = args.out or os.path.join(ROOT, "results", "end_to_end_quick.json" if args.quick else "end_to_end.json")
    return args


def cpu_of(entry):
    """The CPU a benchmark entry was measured on, from its device description ("cpu: NAME, 2 logical CPUs, ...")."""
    return entry["device"].split(",")[0].removeprefix("cpu: ")


def end_to_end_table(results):
    """results/end_to_end.json (benchmarks/end_to_end.py): each comparison's two settings in fresh processes."""
    e = load_json(results, "end_to_end.json")
    if e is None:
        return "(no results/end_to_end.json yet: `python -m benchmarks.end_to_end`)"
    lines = ["| what is timed (fresh processes, alternating) | CPU | A | A seconds | B | B seconds | A / B |",
             "|---|---|---|---|---|---|---|"]
    row = lambda what, a, sa, b, sb: lines.append(f"| {what} | {cpu_of(entry)} | {a} | {sa:.1f} | {b} | {sb:.1f} | "
                                                  f"**{sa / sb:.2f}** |")
    if "malloc" in e:
        m = entry = e["malloc"]
        for key in sorted(k for k in m if k.endswith("_threads")):
            row(f"a BN + L1 epoch on {m['settings']['limit']:,} images + test, {key.split('_')[0]} thread(s)",
                "glibc default", m[key]["default_seconds"], "`mnist_norms.machine.tune_malloc()`",
                m[key]["tuned_seconds"])
    if "pipeline" in e:
        p = entry = e["pipeline"]
        row(f"a BN + L1 epoch on 60,000 images + test, {p['settings']['threads']} threads",
            f"conventional (`DataLoader`, {p['specs']['conventional']['workers']} workers, PIL transforms, glibc "
            f"default)", p["conventional_seconds"], "ours (train.py's defaults)", p["ours_seconds"])
    if "precision" in e:
        p = entry = e["precision"]
        row(f"a BN + L1 epoch on {p['specs']['fp32']['limit'] or 60000:,} images + test, "
            f"{p['settings']['threads']} threads", "fp32", p["fp32_seconds"], "bf16 autocast", p["bf16_seconds"])
    for kind, p in sorted(isa_entries(e.get("isa")).items()):  # one row per kind of CPU measured
        used, entry = p["isa_in_use"], p
        row(f"a BN + L1 epoch on 60,000 images + test, {p['settings']['threads']} threads, on a CPU whose own is "
            f"{ISA_NAMES.get(kind, kind)}", f"the CPU's own (`--native-isa`: {used['native']})", p["native_seconds"],
            f"pinned to AVX2 (the default: {used['avx2']})", p["avx2_seconds"])
    if "experiment" in e:
        x = entry = e["experiment"]
        a, b = x["jobs"]
        row(f"`{x['settings']['command']}`, whole process", f"--jobs {a}", x[f"jobs{a}_seconds"], f"--jobs {b}",
            x[f"jobs{b}_seconds"])
    if "before" in e:
        x = entry = e["before"]
        row(f"`{x['settings']['command']}`, whole process, defaults", f"commit {x['before_commit']}",
            x["before_seconds"], "this code", x["after_seconds"])
    some = next((v for v in e.values() if isinstance(v, dict) and "device" in v), None)
    if some is None:
        return "(no comparison in results/end_to_end.json yet: `python -m benchmarks.end_to_end`)"
    repeats = sorted({v["settings"]["repeats"] for v in e.values() if isinstance(v, dict) and "settings" in v})
    lines += ["", f"`results/end_to_end.json`: {'/'.join(map(str, repeats))} processes per setting, alternating which "
                  f"goes first; epoch times are medians with each process's first epoch left out, whole runs medians "
                  f"of wall time; 2 logical CPUs; PyTorch {some['versions']['torch']}."]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(epochs_in_this_process(json.loads(args.child), args.data)))
        return None
    load_mnist(args.data)  # fetch once here rather than in every process
    result = {}
    if os.path.exists(args.out):  # keep the other comparisons already measured
        with open(args.out) as f:
            result = {k: v for k, v in json.load(f).items() if k in COMPARISONS}
    threads = torch.get_num_threads()
    base = {"pipeline": "ours", "malloc": True, "threads": threads, "precision": "fp32", "epochs": args.epochs,
            "limit": args.limit, "workers": args.workers, "isa": machine.AVX2,
            **({"test_images": QUICK_TEST_IMAGES} if args.quick else {})}
    settings = {"repeats": args.repeats, "epochs": args.epochs, "order": "alternating, a fresh process per run",
                "statistic": "median epoch time, the first epoch of each run left out"}
    env = {"device": pipeline.device_description(torch.device("cpu")), "versions": pipeline.versions()}
    limit = f" --limit {args.experiment_limit}" if args.experiment_limit else ""  # in experiment's and before's command
    for what in args.compare:
        print(what, flush=True)
        if what == "malloc":
            entry = {}
            for t in sorted({1, threads}):
                specs = {"default": {**base, "malloc": False, "threads": t}, "tuned": {**base, "threads": t}}
                runs = compare(list(specs), lambda n: fresh_epochs(specs[n], args), args.repeats)
                med = {n: epoch_median(v) for n, v in runs.items()}
                entry[f"{t}_threads"] = {"default_seconds": med["default"], "tuned_seconds": med["tuned"],
                                         "speedup": med["default"] / med["tuned"], "samples_epoch_seconds": runs}
            result["malloc"] = {**entry, "settings": {**settings, "limit": args.limit}, **env}
        elif what in ("pipeline", "precision", "isa"):
            if what == "pipeline":
                specs = {"conventional": {**base, "pipeline": "conventional", "malloc": False, "limit": None},
                         "ours": {**base, "limit": None}}
            elif what == "isa":
                specs = {"native": {**base, "isa": "native", "limit": None}, "avx2": {**base, "limit": None}}
            else:
                specs = {"fp32": base, "bf16": {**base, "precision": "bf16"}}
            if args.quick:
                specs = {n: {**s, "limit": args.limit} for n, s in specs.items()}
            runs = compare(list(specs), lambda n: fresh_epochs(specs[n], args), args.repeats)
            a, b = list(specs)
            med = {n: epoch_median(v) for n, v in runs.items()}
            entry = {f"{a}_seconds": med[a], f"{b}_seconds": med[b], "speedup": med[a] / med[b],
                     "samples_epoch_seconds": runs, "specs": specs, "settings": {**settings, "threads": threads}, **env}
            if what == "isa":
                # What each setting computes with here, read in fresh processes like the runs. The cost of the pin
                # depends on the CPU, so each kind (ATen's native capability: avx2, avx512) keeps its own entry.
                entry["isa_in_use"] = {n: isa_of_a_fresh_process(n == "avx2") for n in specs}
                result[what] = {**isa_entries(result.get(what)), machine.parts(entry["isa_in_use"]["native"])[0]: entry}
            else:
                result[what] = entry
        elif what == "before":
            with tempfile.TemporaryDirectory() as folder:
                checkouts = {"before": args.before, "after": ROOT}
                runs = compare(["before", "after"], lambda n: fresh_experiment(None, args, folder, checkouts[n]),
                               args.repeats)
            med = {n: statistics.median(v) for n, v in runs.items()}
            commit = subprocess.run(["git", "-C", args.before, "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip()
            result["before"] = {
                "before_seconds": med["before"], "after_seconds": med["after"], "speedup": med["before"] / med["after"],
                "samples_seconds": runs, "before_commit": commit, **env,
                "settings": {"command": f"python train.py --epochs {args.experiment_epochs}" + limit,
                             "repeats": args.repeats,
                             "order": settings["order"], "statistic": "median wall time"}}
        else:
            with tempfile.TemporaryDirectory() as folder:
                names = [f"jobs{j}" for j in args.experiment_jobs]
                runs = compare(names, lambda n: fresh_experiment(int(n.removeprefix("jobs")), args, folder),
                               args.repeats)
            med = {n: statistics.median(v) for n, v in runs.items()}
            a, b = names
            result["experiment"] = {
                "jobs": args.experiment_jobs, f"{a}_seconds": med[a], f"{b}_seconds": med[b],
                "speedup": med[a] / med[b], "samples_seconds": runs, **env,
                "settings": {"command": f"python train.py --epochs {args.experiment_epochs} --jobs J" + limit,
                             "repeats": args.repeats, "order": settings["order"], "statistic": "median wall time"}}
        write_json(args.out, result)
    brief = lambda v: {k: brief(vv) if isinstance(vv, dict) and k != "isa_in_use" else vv
                       for k, vv in v.items()
                       if "speedup" in k or k.endswith("seconds") or (isinstance(vv, dict) and "speedup" in vv)}
    print(json.dumps({k: brief(v) for k, v in result.items() if isinstance(v, dict)}, indent=1))
    print(f"wrote {os.path.relpath(args.out)}")
    return result


if __name__ == "__main__":
    main()
