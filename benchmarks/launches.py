"""The operations one training step dispatches, per model and path: on a GPU each is a kernel launch of a few
microseconds of work, so their count, not the arithmetic, sets a step's time there.

    python -m benchmarks.launches    # results/launches.json and its table in docs/performance.md

Counted on the CPU with a TorchDispatchMode (every ATen operation that returns a tensor, views and detach left out, as
tools.fingerprint counts them), over steps 2 to STEPS + 1 of an epoch of synthetic images (step 1 also draws the
epoch's order and augmentation), for each path training.train_epoch takes:

- "cpu": the committed runs' (bit-reproducible on x86-64 CPUs: tools.fingerprint);
- "gpu": what a run on a GPU takes (training.lean_path: the weight average with its count on the host, L1's gradient
  added in one foreach operation, SGD's foreach update, the augmentation's matrices for the whole epoch at once, the
  metrics gathered once per epoch). On a CPU it is forced only here, to count it.

Each operation is put in the phase whose code dispatched it: the augmentation (augment.py), the average (the weight
average's update), the metrics (train_epoch's own lines), the step (the rest: forward, loss, backward, gradient norm,
optimizer, schedule).
"""
import argparse
import os
import sys

from mnist_norms import machine

STEPS = 4  # steps counted, after the first
PHASES = ("augmentation", "step", "average", "metrics")


def phase_of(frame):
    """The phase of the code that dispatched an operation, from the innermost frame that names one."""
    while frame is not None:
        path, name = frame.f_code.co_filename, frame.f_code.co_name
        base = os.path.basename(path)
        if base == "augment.py":
            return "augmentation"
        if base == "swa_utils.py" or name in ("update_parameters", "update") and base == "training.py":
            return "average"
        if name == "train_epoch" and base == "training.py":
            return "metrics"
        if name == "train_step" and base == "training.py":
            return "step"
        frame = frame.f_back
    return "step"


def count(recipe, lean, steps=STEPS):
    """{phase: operations per step} of `recipe`'s training on the CPU, averaged over steps 2 to steps + 1."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from mnist_norms.training import initial_state, train_epoch

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts = {p: 0 for p in PHASES}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.is_view or str(func).startswith("aten.detach"):
                return out
            self.counts[phase_of(sys._getframe(1))] += 1
            return out

    device = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    n = (steps + 1) * recipe.batch_size
    train = (torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g),
             torch.randint(0, 10, (n,), generator=g))
    one = tuple(t[:recipe.batch_size] for t in train)
    counters = []
    for data in (one, train):  # one step, then all of them: the difference is steps 2 to steps + 1
        model, optimizer, scheduler, averaged, generator = initial_state(recipe, n, device, images=train[0],
                                                                         lean=lean)
        with Counter() as c:
            train_epoch(model, data, optimizer, recipe, generator=generator, scheduler=scheduler, averaged=averaged,
                        progress=False, lean=lean)
        counters.append(c.counts)
    return {p: (counters[1][p] - counters[0][p]) / steps for p in PHASES}


def launches_table(results, file="launches.json"):
    """The counts in results/launches.json, per model and path."""
    from studies.tables import load_json, markdown
    data = load_json(results, file)
    if data is None:
        return f"(no results/{file} yet: `python -m benchmarks.launches`)"
    rows = [[r["model"], r["path"]] + [f"{r['phases'][p]:g}" for p in PHASES] + [f"{sum(r['phases'].values()):g}"]
            for r in data["rows"]]
    return markdown(["model", "path"] + list(PHASES) + ["per step"], rows) + (
        f"\n\nATen operations dispatched per training step (batch {data['batch_size']}), counted on the CPU "
        f"(`python -m benchmarks.launches`, torch {data['torch']}), steps 2 to {data['steps'] + 1} of an epoch. "
        f"cpu: the committed runs' path; gpu: the path a run on a GPU takes (training.lean_path).")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--out", default=None, help="the JSON written (default: results/launches.json)")
    args = p.parse_args(argv)
    machine.pin_isa()
    import torch

    from mnist_norms.files import write_json
    from mnist_norms.recipe import experiment
    from mnist_norms.records import ROOT
    torch.set_num_threads(1)
    rows = []
    for recipe in experiment():
        for lean in (False, True):
            phases = count(recipe, lean)
            rows.append({"model": recipe.label, "path": "gpu" if lean else "cpu", "phases": phases})
            print(f"{recipe.label:<8} {'gpu' if lean else 'cpu'}: {sum(phases.values()):g} operations a step "
                  f"({', '.join(f'{k} {v:g}' for k, v in phases.items())})")
    out = args.out or os.path.join(ROOT, "results", "launches.json")
    write_json(out, {"command": "python -m benchmarks.launches", "torch": str(torch.__version__),
                     "batch_size": experiment()[0].batch_size, "steps": STEPS, "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
