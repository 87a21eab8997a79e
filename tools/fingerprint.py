"""The arithmetic of a training run, op by op: a hash of the result of every operation in the first steps of BN + L1,
LN and GN, compared with the committed one (results/fingerprint.json), to check in seconds that this machine computes
what the machine that made the committed runs computed, bit for bit.

Each model trains STEPS steps of its recipe (augmentation, forward, loss with L1, backward, optimizer step, schedule,
weight-average update) on seeded synthetic images, then evaluates its averaged weights on EVAL_IMAGES images
in batches as a run does, through the same functions as train.py (utils.setup, utils.train,
utils.test), pinned to AVX2, with one thread as the committed runs. Every ATen operation that PyTorch
dispatches, forward and backward, is hashed as it returns (a TorchDispatchMode), with where it was called from (the
layer, the function, or the backward node).

    python -m tools.fingerprint            compare this machine with results/fingerprint.json: exit 0 if identical,
                                           1 if an operation differs (named, with both CPUs), 2 if they cannot be
                                           compared
    python -m tools.fingerprint --write    write this machine's fingerprint instead (after a change meant to change the
                                           arithmetic, once the runs it affects are re-run)
"""
import argparse
import hashlib
import json
import os
import re
import sys

from mnist_norms import machine
from mnist_norms.records import ROOT

FILE = os.path.join(ROOT, "results", "fingerprint.json")
STEPS = 3           # training steps per model: the first ones of a run of the recipe
EVAL_IMAGES = 500  # two evaluation batches of utils.test (training.EVAL_BATCH), so that its kernels are a run's
FULL_TRAIN = 60000  # the schedule is that of a run on the whole training set, so each step's rate is a real run's
# Operations whose result is memory not yet written (its hash would be noise); what writes it next is hashed.
UNWRITTEN = ("aten.empty", "aten.empty_like", "aten.empty_strided", "aten.new_empty", "aten.new_empty_strided",
             "aten.resize_", "aten.set_")
# CPU flags that decide which kernels run, recorded with the fingerprint
SIMD_PREFIXES = ("sse", "ssse", "avx", "fma", "f16c", "amx")


def cpu_description():
    """This CPU as the fingerprint records it: model and vendor, and its vector-instruction flags."""
    flags = machine.cpu_flags() or set()
    return {"cpu": machine.cpu_name(), "flags": " ".join(sorted(f for f in flags if f.startswith(SIMD_PREFIXES)))}


def digest(tensors):
    """A short hash of tensors' dtypes, shapes and values."""
    import torch
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach()
        h.update(f"{t.dtype} {tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def trace_class():
    """The TorchDispatchMode that records operations (defined once torch is imported, after the pin)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Trace(TorchDispatchMode):
        """Records (phase, operation, where, hash of its result) for every operation dispatched inside it."""

        def __init__(self, names):
            super().__init__()
            self.ops, self.names, self.modules, self.phase = [], names, [], "training"
            self.step, self.last = 0, ""

        def where(self):
            """The innermost layer running (forward), else the innermost function of this repository or of
            torch.optim that called the operation, as "file.function"."""
            if self.modules:
                return self.modules[-1]
            frame = sys._getframe(2)
            while frame is not None:
                path = frame.f_code.co_filename
                ours = os.path.dirname(path) == ROOT and os.path.basename(path) != "fingerprint.py"
                if ours or f"{os.sep}torch{os.sep}optim{os.sep}" in path:
                    return f"{os.path.splitext(os.path.basename(path))[0]}.{frame.f_code.co_name}"
                frame = frame.f_back
            return "?"

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = str(func)
            # A view or detach computes nothing (it shows the same numbers), and unwritten memory is noise
            if func.is_view or name.rsplit(".", 1)[0] in UNWRITTEN + ("aten.detach",):
                return out
            tensors = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            if not tensors:  # an in-place operation that returns nothing (torch._foreach_add_): what it wrote
                written = [a for a, spec in zip(args, func._schema.arguments)
                           if spec.alias_info is not None and spec.alias_info.is_write]
                tensors = [t for t in tree_flatten(written)[0] if isinstance(t, torch.Tensor)]
            if not tensors:  # a number read back (item()): its tensor was hashed where it was computed
                return out
            node = torch._C._current_autograd_node()
            where = f"backward: {node.name()}" if node is not None else self.where()
            if self.phase == "training" and where.startswith("augment.") and \
                    not self.last.startswith(("augment.", "data.")):
                self.step += 1  # each step begins with its batch's augmentation (in augment.py and data.py)
            self.last = where
            phase = self.phase if self.phase != "training" else f"step {self.step}" if self.step else "set-up"
            self.ops.append([phase, name, where, digest(tensors)])
            return out

    return Trace


def fingerprint(check_trace=True):
    """{"cpu", "flags", "isa", "torch", "threads", "runs": {label: {"ops": [[phase, op, where,
    hash]], "final": hash of the weights and averaged weights after training}}}. Pins the instruction set first (call
    it before any torch operation). check_trace: also run the steps untraced, and raise if they end elsewhere (the
    trace must not change what is computed)."""
    isa = machine.pin_isa()
    import torch

    from mnist_norms.recipe import experiment
    from utils import setup, test, train

    torch.set_num_threads(1)
    Trace = trace_class()
    device = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    batch = experiment()[0].batch_size
    train_data = (torch.randint(0, 256, (STEPS * batch, 28, 28), dtype=torch.uint8, generator=g),
             torch.randint(0, 10, (STEPS * batch,), generator=g))
    test_data = (torch.randint(0, 256, (EVAL_IMAGES, 28, 28), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (EVAL_IMAGES,), generator=g))

    def steps(recipe, trace=None):
        model, optimizer, scheduler, averaged, generator = setup(recipe, FULL_TRAIN, device)
        evaluated = averaged.module if averaged is not None else model
        if trace is not None:  # name the layers: the trained model's and the evaluated one's
            trace.names.update({m: f"layer {n}" for n, m in model.named_modules() if n})
            trace.names.update({m: f"evaluated layer {n}" for n, m in evaluated.named_modules() if n})
        train(model, train_data, optimizer, recipe, generator=generator, scheduler=scheduler, averaged=averaged,
              progress=False)
        if trace is not None:
            trace.phase = "evaluation"
        test(evaluated, test_data)
        return [model] + ([averaged] if averaged is not None else [])

    def final(models):  # the weights (and BN's statistics) after training, trained and averaged
        return digest([t for m in models for t in m.state_dict().values()])

    runs = {}
    for recipe in experiment():
        plain = final(steps(recipe)) if check_trace else None
        trace = Trace({})

        def enter(module, inputs):  # hooks on every module: the trace names the innermost layer running
            if module in trace.names:
                trace.modules.append(trace.names[module])

        def leave(module, inputs, output):  # returns None: the output stays as it is
            if module in trace.names:
                trace.modules.pop()
        pre = torch.nn.modules.module.register_module_forward_pre_hook(enter)
        post = torch.nn.modules.module.register_module_forward_hook(leave)
        try:
            with trace:
                models = steps(recipe, trace)
        finally:
            pre.remove()
            post.remove()
        if check_trace and final(models) != plain:  # recording must not change what is computed
            raise RuntimeError(f"{recipe.label}: the traced steps end with other weights than the same steps untraced")
        runs[recipe.label] = {"ops": trace.ops, "final": final(models)}
    return {**cpu_description(), "isa": isa, "torch": str(torch.__version__), "threads": torch.get_num_threads(),
            "runs": runs}


def compare(mine, theirs):
    """(exit code, message) for this machine's fingerprint against a committed one."""
    if mine["torch"] != theirs["torch"]:
        return 2, (f"cannot compare: the fingerprint was made with torch {theirs['torch']}, this is {mine['torch']} "
                   f"(a run is bit-reproducible only with the same PyTorch version)")
    if mine["isa"] != theirs["isa"]:
        return 2, f"cannot compare: the fingerprint computed with {theirs['isa']}, this machine with {mine['isa']}"
    here = f"this CPU: {mine['cpu']} ({mine['flags']})"
    there = f"the fingerprint's: {theirs['cpu']} ({theirs['flags']})"
    total = 0
    for label, run in theirs["runs"].items():
        ops = mine["runs"][label]["ops"]
        for i, (a, b) in enumerate(zip(ops, run["ops"])):
            # The operation and its result are compared; where it ran (a module's function) only names it, so that
            # code moved between modules with the same arithmetic still matches.
            if a[1] != b[1]:
                return 1, (f"{label}: operation {i + 1} is {a[1]} in {a[2]} here and {b[1]} in {b[2]} in the "
                           f"fingerprint: the code's operations changed since it was written (write it again with "
                           f"--write once the runs the change affects are re-run)")
            if a[3] != b[3]:
                differing = sum(x[3] != y[3] for x, y in zip(ops, run["ops"]))
                return 1, (f"{label}: operation {i + 1} of {len(ops)}, {a[1]} in {a[2]} ({a[0]}), is the first whose "
                           f"result differs ({differing} differ in all); {here}; {there}")
        if len(ops) != len(run["ops"]):
            return 1, f"{label}: {len(ops)} operations here, {len(run['ops'])} in the fingerprint: the code changed"
        if mine["runs"][label]["final"] != run["final"]:
            return 1, f"{label}: every operation gives the fingerprint's result, but not the final weights; {here}"
        total += len(ops)
    return 0, (f"identical: all {total} operations of {', '.join(theirs['runs'])} give the results of the fingerprint "
               f"({theirs['cpu']}); {here}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--write", action="store_true", help="write this machine's fingerprint to --file instead")
    p.add_argument("--file", default=FILE, help=f"the fingerprint file (default: {os.path.relpath(FILE, ROOT)})")
    args = p.parse_args(argv)
    if not args.write and not os.path.isfile(args.file):
        p.error(f"argument --file: no such file: {args.file} (--write makes one)")
    mine = fingerprint(check_trace=args.write)  # a written fingerprint's final weights are checked untraced
    if args.write:
        from mnist_norms.files import atomic_write
        text = json.dumps({"made_with": "python -m tools.fingerprint --write", **mine}, indent=1)
        # one operation a line: [phase, operation, where, hash]
        text = re.sub(r'\[\s+("[^"]*"),\s+("[^"]*"),\s+("[^"]*"),\s+("[^"]*")\s+\]', r"[\1, \2, \3, \4]", text)
        atomic_write(args.file, (text + "\n").encode())
        print(f"wrote {args.file}: {sum(len(r['ops']) for r in mine['runs'].values())} operations on {mine['cpu']}")
        return 0
    with open(args.file) as f:
        theirs = json.load(f)
    code, message = compare(mine, theirs)
    print(message)
    return code


if __name__ == "__main__":
    sys.exit(main())
