"""Training images per second, side by side in one process: the conventional DataLoader pipeline, ours, the ceiling.

1. conventional: torchvision.datasets.MNIST with RandomRotation, ToTensor and Normalize, through a
   DataLoader (batch 128, the fastest num_workers of those tried here, pinned memory on a GPU);
2. ours: an epoch of training on the dataset held on the device (batched rotation there);
3. ceiling: the same training step on one fixed batch already on the device (no data work at all).
All three train the same model (BN + L1, the experiment's BN run) with the same optimizer, in the same
precision (--precision, fp32 by default as in train.py), for the same number of steps, on the path a run on the
device takes (path(): utils' on a CPU, mnist_norms.lean's on a GPU; the weight average is not timed). Each is
measured --repeats times, in alternating order, and the median is reported. Run from the repository root as
`python -m benchmarks.pipeline`. Writes
results/benchmark.json (benchmark_bf16.json with --precision bf16;
--quick: results/benchmark_quick.json, a smoke test, not a measurement).
"""
import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import utils
from mnist_norms import cli, lean, machine
from mnist_norms.augment import MEAN, STD, batches
from mnist_norms.data import load_mnist
from mnist_norms.files import write_json
from mnist_norms.recipe import L1, PRECISIONS, Recipe
from mnist_norms.records import ROOT
from model import Net
from studies.tables import load_json


def sync(device):
    """Wait for queued GPU work, so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def path(device):
    """(batches, train_step, train): the functions a run on `device` trains with, chosen as utils.fit chooses them
    (lean.lean_path): mnist_norms.lean's on a GPU, augment.batches, utils.train_step and utils.train on a CPU."""
    if lean.lean_path(device):
        return lean.batches, lean.train_step, lean.train
    return batches, utils.train_step, utils.train


def fresh_model(device, seed=0):
    """The same BN network and optimizer for every measurement (the recipe's SGD, without the schedule)."""
    torch.manual_seed(seed)
    model = Net("BN").to(device).train()
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)


STEP_RECIPES = {precision: Recipe("BN", l1=L1, precision=precision) for precision in PRECISIONS}


def train_step(model, optimizer, x, y, precision):
    """A training step of the BN + L1 run, on the path a run on x's device takes (path)."""
    path(x.device)[1](model, optimizer, x, y, STEP_RECIPES[precision])


def conventional_loader(root, batch_size, num_workers, device, seed=0):
    """The pipeline most MNIST notebooks use: PIL images rotated one by one in DataLoader workers."""
    transform = transforms.Compose([
        transforms.RandomRotation(7, interpolation=transforms.InterpolationMode.BILINEAR, fill=0),
        transforms.ToTensor(),
        transforms.Normalize((MEAN,), (STD,)),
    ])
    dataset = datasets.MNIST(root, train=True, download=False, transform=transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                      pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))


def time_conventional(loader, steps, device, precision):
    """Images per second of `steps` training steps fed by the DataLoader. The iterator is started
    and its first batch drawn before the clock starts: worker start-up is not counted, in its favour."""
    model, optimizer = fresh_model(device)
    it = iter(loader)
    next(it)
    sync(device)
    start = time.perf_counter()
    n = 0
    for _ in range(steps):
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        train_step(model, optimizer, x, y, precision)
        n += len(y)
    sync(device)
    return n / (time.perf_counter() - start)


def time_ours(data, steps, batch_size, device, precision, seed=0):
    """Images per second of an epoch of training (path's train) over steps * batch_size images on the device."""
    model, optimizer = fresh_model(device)
    n = steps * batch_size
    subset = (data[0][:n], data[1][:n])
    sync(device)
    start = time.perf_counter()
    # rotation only, as the conventional pipeline's RandomRotation
    recipe = Recipe("BN", l1=L1, precision=precision, batch_size=batch_size, translate=0.0, scale=0.0, shear=0.0)
    path(device)[2](model, subset, optimizer, recipe, generator=torch.Generator().manual_seed(seed), progress=False)
    sync(device)
    return n / (time.perf_counter() - start)


def time_ceiling(batch, steps, device, precision):
    """Images per second of the same step on one batch already on the device."""
    model, optimizer = fresh_model(device)
    x, y = batch
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, x, y, precision)
    sync(device)
    return steps * len(y) / (time.perf_counter() - start)


def flops_per_image(device, batch_size=128):
    """Floating-point operations of one training step per image (forward and backward, a multiply-add counted as 2),
    counted by torch.utils.flop_counter on the BN + L1 step (convolutions and matrix products; the norms, ReLU,
    pooling and the update are a small remainder it does not count)."""
    from torch.utils.flop_counter import FlopCounterMode
    model, optimizer = fresh_model(device)
    x = torch.randn(batch_size, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    with FlopCounterMode(display=False) as counter:
        train_step(model, optimizer, x, y, "fp32")
    return counter.get_total_flops() / batch_size


def matmul_flop_s(device, n=2048, repeats=5):
    """This device's practical fp32 peak: FLOP/s of an n x n matrix product (torch.mm), the best of `repeats`,
    with the same threads as the training step."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def alternating(measure, names, repeats):
    """{name: [img/s per repeat]}, measuring the names forwards on even repeats and backwards on odd ones."""
    samples = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            samples[name].append(measure(name))
    return samples


def versions():
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__}


def device_description(device):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda)"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{device.type}: {cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--quick", action="store_true",
                   help="a few steps and repeats, workers 0 and 1 only: checks that it runs (for the tests)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per measurement (default 200; 3 with --quick)")
    p.add_argument("--repeats", type=int, default=None,
                   help="measurements of each pipeline (default 5; 2 with --quick)")
    p.add_argument("--workers", type=int, nargs="+", default=None, metavar="N",
                   help="num_workers values tried for the DataLoader (default: 0, 1, 2, 4, 8 up to the CPU count)")
    p.add_argument("--batch-size", type=int, default=128, help="images per training step (default 128)")
    p.add_argument("--data", default=os.path.join(ROOT, "data"), help="dataset root (DATA/MNIST/raw)")
    p.add_argument("--device", type=cli.device, default="auto", help="cpu, cuda[:N], mps, or auto (default)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="the training step's precision, the same for all three pipelines (default fp32, train.py's)")
    p.add_argument("--out", default=None,
                   help="the JSON written (default results/benchmark.json, results/benchmark_bf16.json with "
                        "--precision bf16; results/benchmark_quick.json with --quick)")
    args = p.parse_args(argv)
    args.steps = args.steps if args.steps is not None else (3 if args.quick else 200)
    args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    cpus = os.cpu_count() or 1
    args.workers = args.workers if args.workers is not None else \
        ([0, 1] if args.quick else [w for w in (0, 1, 2, 4, 8) if w <= cpus])
    for name in ("steps", "repeats", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"argument --{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if any(w < 0 for w in args.workers):
        p.error(f"argument --workers: expected integers >= 0, got {args.workers}")
    name = "benchmark_quick" if args.quick else "benchmark" if args.precision == "fp32" else \
        f"benchmark_{args.precision}"
    args.out = args.out or os.path.join(ROOT, "results", f"{name}.json")
    return args


def benchmark_table(results):
    """results/benchmark*.json (benchmarks/pipeline.py): the three pipelines side by side, per precision."""
    files = [f for f in ("benchmark.json", "benchmark_bf16.json")
             if load_json(results, f) is not None]
    if not files:
        return "(no results/benchmark.json yet: `python -m benchmarks.pipeline`)"
    lines = ["| training step | pipeline | images/s (median) | min | max | relative to ours |",
             "|---|---|---|---|---|---|"]
    notes = []
    for file in files:
        b = load_json(results, file)
        st = b["settings"]
        precision = st.get("precision", "fp32")
        for name, what in (("conventional", f"conventional: `DataLoader`, num_workers={st['num_workers']}"),
                           ("ours", "ours: on-device batches"), ("ceiling", "ceiling: one fixed batch, no data work")):
            samples = b["samples_img_s"][name]
            lines.append(f"| {precision} | {what} | {b[f'{name}_img_s']:,.0f} | {min(samples):,.0f} "
                         f"| {max(samples):,.0f} | {b[f'{name}_img_s'] / b['ours_img_s']:.2f} |")
        workers = ", ".join(f"{w}: {v:,.0f}" for w, v in st["num_workers_img_s"].items())
        v = b["versions"]
        notes.append(f"- `results/{file}` ({precision}): **speedup** (ours / conventional) **{b['speedup']:.2f}**, "
                     f"**efficiency** (ours / ceiling) **{b['efficiency']:.2f}**. {st['repeats']} repeats of "
                     f"{st['steps_per_measurement']} steps of batch {st['batch_size']}, alternating order, median; "
                     f"DataLoader images/s by num_workers (the fastest is used): {workers}. {b['device']}; "
                     f"Python {v['python']}, PyTorch {v['torch']}, torchvision {v['torchvision']}."
                     + (f" The step needs {b['flops_per_image'] / 1e6:.2f} MFLOP per image (forward and backward, "
                        f"`torch.utils.flop_counter`), so ours computes {b['ours_flop_s'] / 1e9:.1f} GFLOP/s: "
                        f"{100 * b['fraction_of_matmul_peak']:.0f}% of the {b['matmul_flop_s'] / 1e9:.0f} GFLOP/s of "
                        f"a 2048 x 2048 fp32 matrix product on the same threads." if "flops_per_image" in b else ""))
    return "\n".join(lines + [""] + notes)


def main(argv=None):
    args = parse_args(argv)
    machine.tune_malloc()  # train.py's default, for all three pipelines alike
    machine.pin_isa(onednn=args.precision == "fp32")  # as train.py does, before torch's first operation
    device, bs, steps = args.device, args.batch_size, args.steps
    (train, _test) = load_mnist(args.data)  # also makes sure the idx files torchvision reads are there
    if steps * bs > len(train[1]):
        raise SystemExit(f"pipeline.py: error: --steps x --batch-size must be at most {len(train[1])} images")
    on_device = tuple(t.to(device) for t in train)
    batch = next(path(device)[0](on_device, bs, generator=torch.Generator().manual_seed(0), degrees=7.0))

    # Warm up every path once (allocator, oneDNN kernels, CUDA context), then pick the DataLoader's workers.
    precision = args.precision
    time_ceiling(batch, 3, device, precision)
    time_ours(on_device, 3, bs, device, precision)
    trials = {}
    for w in args.workers:
        loader = conventional_loader(args.data, bs, w, device)
        time_conventional(loader, min(steps, 3), device, precision)
        trials[w] = statistics.median(time_conventional(loader, steps, device, precision)
                                      for _ in range(1 if args.quick else 2))
        print(f"conventional, num_workers={w}: {trials[w]:,.0f} img/s")
        del loader
    workers = max(trials, key=trials.get)
    loader = conventional_loader(args.data, bs, workers, device)

    names = ["conventional", "ours", "ceiling"]
    measure = {"conventional": lambda: time_conventional(loader, steps, device, precision),
               "ours": lambda: time_ours(on_device, steps, bs, device, precision),
               "ceiling": lambda: time_ceiling(batch, steps, device, precision)}
    samples = alternating(lambda name: measure[name](), names, args.repeats)
    median = {name: statistics.median(v) for name, v in samples.items()}
    flops, peak = flops_per_image(device, bs), matmul_flop_s(device)
    result = {
        "flops_per_image": flops, "matmul_flop_s": peak, "ours_flop_s": median["ours"] * flops,
        "fraction_of_matmul_peak": median["ours"] * flops / peak,
        "conventional_img_s": median["conventional"], "ours_img_s": median["ours"], "ceiling_img_s": median["ceiling"],
        "speedup": median["ours"] / median["conventional"], "efficiency": median["ours"] / median["ceiling"],
        "device": device_description(device), "versions": versions(),
        "settings": {"quick": args.quick, "batch_size": bs, "steps_per_measurement": steps, "repeats": args.repeats,
                     "order": "alternating (forwards, then backwards)", "statistic": "median",
                     "model": "Net('BN'), L1 1e-5, SGD(lr=0.01, momentum=0.9, nesterov=True)",
                     "precision": precision, "lean_path": lean.lean_path(device),
                     "num_workers": workers, "num_workers_img_s": {str(w): v for w, v in trials.items()},
                     "pin_memory": device.type == "cuda", "torch_threads": torch.get_num_threads(),
                     "augmentation": "rotation uniform in ±7 degrees, bilinear, fill 0 (both pipelines)"},
        "samples_img_s": samples,
    }
    write_json(args.out, result)
    print(f"\n{'pipeline':<14} {'img/s (median)':>15} {'min':>9} {'max':>9}")
    for name in names:
        print(f"{name:<14} {median[name]:>15,.0f} {min(samples[name]):>9,.0f} {max(samples[name]):>9,.0f}")
    print(f"\nspeedup (ours / conventional) {result['speedup']:.2f}; efficiency (ours / ceiling) "
          f"{result['efficiency']:.2f}; DataLoader num_workers={workers}; {precision}; {result['device']}")
    print(f"training step: {flops / 1e6:.2f} MFLOP per image, so ours runs at {result['ours_flop_s'] / 1e9:.1f} "
          f"GFLOP/s, "
          f"{100 * result['fraction_of_matmul_peak']:.0f}% of a large matrix product's {peak / 1e9:.1f} GFLOP/s")
    print(f"wrote {os.path.relpath(args.out)}")
    return result


if __name__ == "__main__":
    main()
