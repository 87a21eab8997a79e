"""The operations one training step dispatches, per model and path: on a GPU each is a kernel launch of a few
microseconds of work, so their count, not the arithmetic, sets a step's time there.

    python -m benchmarks.launches    # results/launches.json and its table in docs/performance.md

Counted on the CPU with a TorchDispatchMode (every ATen operation that returns a tensor, views and detach left out, as
tools.fingerprint counts them), over steps 2 to STEPS + 1 of an epoch of synthetic images (step 1 also draws the
epoch's order and augmentation), for each path a run takes (utils.fit chooses it by lean.lean_path):

- "cpu": the committed runs' (utils.train; bit-reproducible on x86-64 CPUs: tools.fingerprint);
- "gpu": what a run on a GPU takes (mnist_norms.lean: the weight average with its count on the host, L1's gradient
  added in one foreach operation, the augmentation's matrices for the whole epoch at once, the metrics gathered once
  per epoch), with SGD's foreach update, PyTorch's default on a GPU. On a CPU it is forced only here, to count it.

An ATen operation counts once however many kernels a GPU launches for it: a composite one (affine_grid's
aten.affine_grid_generator, aten.convolution_backward, aten._foreach_norm) is one operation here and several kernels
there, so the counts compare the paths rather than count a GPU's launches.

Each operation is put in the phase whose code dispatched it: the augmentation (augment.py, lean.batches), the average
(the weight average's update), the metrics (the epoch's own lines: utils.train, lean.train), the step (the rest:
forward, loss, backward, gradient norm, optimizer, schedule).
"""
import argparse
import os
import sys

from mnist_norms import machine

STEPS = 4  # steps counted, after the first
PHASES = ("augmentation", "step", "average", "metrics")


def _ours():
    """{absolute path: module name} of the repository's modules whose code phase_of names."""
    import utils
    from mnist_norms import augment, lean, training
    return {os.path.abspath(m.__file__): m.__name__.rsplit(".", 1)[-1] for m in (augment, lean, training, utils)}


def phase_of(frame, ours=None):
    """The phase of the code that dispatched an operation, from the innermost frame that names one."""
    ours = ours if ours is not None else _ours()
    while frame is not None:
        path, name = frame.f_code.co_filename, frame.f_code.co_name
        module = ours.get(os.path.abspath(path))
        if module == "augment" or module == "lean" and name == "batches":
            return "augmentation"
        if os.path.basename(path) == "swa_utils.py" or \
                name in ("update_parameters", "update") and module in ("training", "lean"):
            return "average"
        if name == "train" and module in ("utils", "lean"):
            return "metrics"
        if name == "train_step" and module in ("utils", "lean"):
            return "step"
        frame = frame.f_back
    return "step"


def count(recipe, lean, steps=STEPS):
    """{phase: operations per step} of `recipe`'s training on the CPU, averaged over steps 2 to steps + 1."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    import utils
    from mnist_norms import lean as gpu_path
    ours = _ours()

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts = {p: 0 for p in PHASES}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.is_view or str(func).startswith("aten.detach"):
                return out
            self.counts[phase_of(sys._getframe(1), ours)] += 1
            return out

    device = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    n = (steps + 1) * recipe.batch_size
    train = (torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g),
             torch.randint(0, 10, (n,), generator=g))
    one = tuple(t[:recipe.batch_size] for t in train)
    counters = []
    for data in (one, train):  # one step, then all of them: the difference is steps 2 to steps + 1
        model, optimizer, scheduler, averaged, generator = utils.setup(recipe, n, device, images=train[0],
                                                                       lean_path=lean)
        if lean:  # SGD's foreach update: PyTorch's default for CUDA tensors, not for the CPU's
            for group in optimizer.param_groups:
                group["foreach"] = True
        epoch = gpu_path.train if lean else utils.train
        with Counter() as c:
            epoch(model, data, optimizer, recipe, generator=generator, scheduler=scheduler, averaged=averaged,
                  progress=False)
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
        f"cpu: the committed runs' path; gpu: the path a run on a GPU takes (mnist_norms.lean.lean_path).")


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
