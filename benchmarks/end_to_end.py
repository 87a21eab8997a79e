"""Seconds per epoch of real train.py runs, fp32 against bf16, each run in a fresh process, in alternating order.

options.py compares options inside one process, where the fp32 baseline's speed drifts with what ran
before it. This measures the kept option the way it is used: `python train.py --norms BN --epochs E
--precision P` (BN + L1, evaluation every epoch), run --repeats times per precision, alternating which
goes first. The first epoch (warm-up) is left out; the median epoch time of the rest is reported.
Writes results/end_to_end.json.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import utils
from benchmarks import pipeline


def run_once(precision, epochs, args, folder):
    """Epoch seconds (all epochs) of one fresh `train.py` process."""
    out = os.path.join(folder, f"{precision}_{len(os.listdir(folder))}")
    cmd = [sys.executable, os.path.join(pipeline.ROOT, "train.py"), "--norms", "BN", "--epochs", str(epochs),
           "--precision", precision, "--no-figures", "--no-progress", "--data", args.data, "--out", out,
           "--device", args.device]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    name = utils.Recipe("BN", l1=utils.L1, precision=precision).name
    with open(os.path.join(out, "results", f"{name}_seed0.json")) as f:
        return [e["seconds"] for e in json.load(f)["history"]]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 repeat of 2 epochs on 512 images (for the tests)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run, the first one left out (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="runs per precision (default 3)")
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only (default: all)")
    p.add_argument("--data", default=os.path.join(pipeline.ROOT, "data"), help="dataset root (DATA/MNIST/raw)")
    p.add_argument("--device", default="cpu", help="the device train.py is given (default cpu)")
    p.add_argument("--out", default=None,
                   help="the JSON written (default results/end_to_end.json; results/end_to_end_quick.json with --quick)")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats, args.limit = 2, 1, 512
    if args.epochs < 2 or args.repeats < 1:
        p.error("--epochs must be at least 2 (the first is left out) and --repeats at least 1")
    out = args.out or os.path.join(pipeline.ROOT, "results", "end_to_end_quick.json" if args.quick else "end_to_end.json")
    utils.load_mnist(args.data)  # fetch once here rather than in every process
    samples = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.repeats):
            for precision in (["fp32", "bf16"] if r % 2 == 0 else ["bf16", "fp32"]):
                seconds = run_once(precision, args.epochs, args, folder)
                samples[precision].append(seconds)
                print(f"{precision}: epoch seconds {', '.join(f'{s:.1f}' for s in seconds)}", flush=True)
    epoch = {k: statistics.median(s for run in v for s in run[1:]) for k, v in samples.items()}
    result = {"fp32_epoch_seconds": epoch["fp32"], "bf16_epoch_seconds": epoch["bf16"],
              "speedup": epoch["fp32"] / epoch["bf16"], "samples_epoch_seconds": samples,
              "device": pipeline.device_description(utils.pick_device(args.device)), "versions": pipeline.versions(),
              "settings": {"quick": args.quick, "command": "train.py --norms BN --epochs E --precision P",
                           "epochs": args.epochs, "repeats": args.repeats, "limit": args.limit,
                           "statistic": "median epoch time, first epoch of each run left out",
                           "order": "alternating, a fresh process per run"}}
    utils.write_json(out, result)
    print(f"\nBN + L1 epoch (train + test evaluation): fp32 {epoch['fp32']:.1f} s, bf16 {epoch['bf16']:.1f} s, "
          f"bf16 {result['speedup']:.2f}x as fast; wrote {os.path.relpath(out)}")
    return result


if __name__ == "__main__":
    main()
