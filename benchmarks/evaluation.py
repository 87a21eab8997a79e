"""The evaluation's batch size: how fast training.evaluate is at each, and whether it gives every committed weights
file the same loss and accuracy, bit for bit, as the batch the runs were evaluated with.

    python -m benchmarks.evaluation            # results/evaluation.json, alone on the machine
    python -m benchmarks.evaluation --quick    # a smoke test: one repeat, three files, 1,000 images (no measurement)

Speed: the averaged model of results/bn_l1_seed0.json (weights/bn_l1_seed0.pt) on the 10,000 test images, each batch
size --repeats times in alternating order in this process, one CPU thread as a run has, pinned to AVX2 as train.py;
the median time per batch size and its ratio to the reference's (training.EVAL_BATCH before the change, 2,000).
Identity: every weights file of the experiment's runs (weights/*.pt) evaluated at the sizes in CHECKED and at the
reference, its test loss and accuracy compared exactly.
"""
import argparse
import glob
import os
import statistics
import sys
import time

from mnist_norms import machine
from studies.tables import load_json, markdown

REFERENCE = 2000
SIZES = (250, 500, 1000, REFERENCE)
CHECKED = (250,)  # the sizes whose loss and accuracy are compared with the reference's on every weights file


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--quick", action="store_true",
                   help="one repeat, three weights files, 1,000 test images: checks that it runs")
    p.add_argument("--repeats", type=int, default=None, help="timings of each batch size (default 9; 1 with --quick)")
    p.add_argument("--data", default="data", help="dataset root (DATA/MNIST/raw)")
    p.add_argument("--out", default=None, help="the JSON written (default results/evaluation.json; "
                                               "results/evaluation_quick.json with --quick)")
    args = p.parse_args(argv)
    machine.pin_isa()  # before torch's first operation, as train.py
    import torch

    from mnist_norms.data import load_mnist
    from mnist_norms.files import write_json
    from mnist_norms.records import ROOT, load_weights
    from mnist_norms.training import evaluate
    torch.set_num_threads(1)
    repeats = args.repeats or (1 if args.quick else 9)
    out = args.out or os.path.join(ROOT, "results", "evaluation_quick.json" if args.quick else "evaluation.json")
    test = load_mnist(args.data)[1]
    if args.quick:  # a smoke test: the first 1,000 test images
        test = tuple(t[:1000] for t in test)
    # the experiment's runs (weights/*.pt; the studies' folders below it were evaluated by the same code)
    files = sorted(glob.glob(os.path.join(ROOT, "weights", "*.pt")))[:3 if args.quick else None]
    model, _ = load_weights(os.path.join(ROOT, "weights", "bn_l1_seed0.pt"))
    seconds = {b: [] for b in SIZES}
    for r in range(repeats):
        for b in (SIZES if r % 2 == 0 else SIZES[::-1]):  # alternating order
            start = time.perf_counter()
            evaluate(model, test, b)
            seconds[b].append(time.perf_counter() - start)
    median = {b: statistics.median(v) for b, v in seconds.items()}
    identical, differ = {b: 0 for b in CHECKED}, {b: [] for b in CHECKED}
    for path in files:
        model, _ = load_weights(path)
        reference = evaluate(model, test, REFERENCE)
        for b in CHECKED:
            if evaluate(model, test, b) == reference:
                identical[b] += 1
            else:
                differ[b].append(os.path.relpath(path, ROOT))
    result = {"reference_batch": REFERENCE, "seconds_median": median, "ratio_to_reference": {
        b: median[b] / median[REFERENCE] for b in SIZES}, "samples_seconds": seconds, "weights_files": len(files),
        "identical_to_reference": identical, "different": differ,
        "settings": {"repeats": repeats, "threads": 1, "order": "alternating, in one process",
                     "model": "weights/bn_l1_seed0.pt", "images": len(test[1]), "isa": machine.isa_in_use(),
                     "cpu": machine.cpu_name(), "torch": str(torch.__version__)}}
    write_json(out, result)
    print(evaluation_table(os.path.dirname(out), os.path.basename(out)))
    return 0


def evaluation_table(results, file="evaluation.json"):
    """results/<file> (benchmarks/evaluation.py): time and bit-for-bit agreement of each evaluation batch size."""
    e = load_json(results, file)
    if e is None:
        return f"(no results/{file} yet: `python -m benchmarks.evaluation`)"
    ref = e["reference_batch"]
    same = e["identical_to_reference"]
    rows = [[b, f"{e['seconds_median'][str(b)]:.2f}", f"**{e['ratio_to_reference'][str(b)]:.2f}**",
             f"{same[str(b)]} of {e['weights_files']}" if str(b) in same else "(the reference)" if b == ref else "-"]
            for b in sorted(map(int, e["seconds_median"]))]
    st = e["settings"]
    return markdown(["evaluation batch", f"seconds for the {st['images']:,} test images (median)",
                     f"time / batch {ref}'s",
                     f"weights files with the same loss and accuracy as at {ref}, bit for bit"], rows) + (
        f"\n\n`results/{file}`: {st['repeats']} alternating repeats in one process, {st['threads']} thread, "
        f"`{st['model']}`, {st['cpu']}, kernels {st['isa']}, PyTorch {st['torch']}.")


if __name__ == "__main__":
    sys.exit(main())
