"""Options that might speed up training and evaluation, each measured against the default in one process.

Training (img/s of the BN + L1 training step, fed by our on-device pipeline with the recipe's augmentation, both on
the path a run on the device takes, pipeline.path):
channels_last memory format, bfloat16 autocast, torch.compile, and batch sizes 128 / 256 / 512 against the recipe's
64. Evaluation (img/s over the 10,000 test images): batch 1,000 / 2,000 / 10,000 against the default 250
(training.EVAL_BATCH), and torch.no_grad against torch.inference_mode. Every option and its baseline are measured
--repeats times in alternating order; the median ratio is reported, with an end-to-end estimate for one 20-epoch run
(60,000 training and 10,000 test images per epoch, plus torch.compile's one-off compile time). Writes
results/options.json.
"""
import argparse
import os
import statistics
import time

import torch

from benchmarks import pipeline
from mnist_norms import cli, lean, machine
from mnist_norms.augment import to_input
from mnist_norms.data import load_mnist
from mnist_norms.files import write_json
from mnist_norms.recipe import Recipe
from mnist_norms.training import EVAL_BATCH, evaluate
from studies.tables import load_json

RECIPE = Recipe()  # the defaults: the batch size and augmentation measured against


def train_steps(model, optimizer, data, steps, batch_size, *, channels_last=False, autocast=False):
    """Seconds for `steps` of pipeline.train_step (a training epoch's step) on our batches, with the options; both on
    the path a run on the data's device takes (pipeline.path)."""
    device = data[0].device
    stream = pipeline.path(device)[0](data, batch_size, generator=torch.Generator().manual_seed(0),
                                      **RECIPE.augmentation)
    precision = "bf16" if autocast else "fp32"
    pipeline.sync(device)
    start = time.perf_counter()
    for _, (x, y) in zip(range(steps), stream):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        pipeline.train_step(model, optimizer, x, y, precision)
    pipeline.sync(device)
    return time.perf_counter() - start


BATCH = RECIPE.batch_size
TRAIN_OPTIONS = {  # name -> (batch size, channels_last, autocast, compile)
    f"default (fp32, batch {BATCH}, eager)": (BATCH, False, False, False),
    "channels_last": (BATCH, True, False, False),
    "bfloat16 autocast": (BATCH, False, True, False),
    "torch.compile": (BATCH, False, False, True),
    "bfloat16 autocast + channels_last": (BATCH, True, True, False),
    "bfloat16 autocast + torch.compile": (BATCH, False, True, True),
    **{f"batch {b}": (b, False, False, False) for b in (128, 256, 512)},
}
EVAL_OPTIONS = {  # name -> (batch size, no_grad instead of inference_mode)
    f"default (eval batch {EVAL_BATCH}, inference_mode)": (EVAL_BATCH, False),
    **{f"eval batch {b}": (b, False) for b in (1000, 2000, 10000)},
    "torch.no_grad instead of inference_mode": (EVAL_BATCH, True),
}


def make_trainer(name, data, images):
    """(measure, info) for one training option: measure(data) -> img/s; info["first_steps_seconds"] is the
    time of 3 warm-up steps, which includes torch.compile's compilation."""
    bs, channels_last, autocast, compile_ = TRAIN_OPTIONS[name]
    model, optimizer = pipeline.fresh_model(data[0].device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_:
        model = torch.compile(model)
    steps = max(1, images // bs)
    info = {}

    def measure(data):
        seconds = train_steps(model, optimizer, data, steps, bs, channels_last=channels_last, autocast=autocast)
        return steps * bs / seconds

    # First call: compilation (torch.compile) or kernel warm-up; its extra time is the one-off cost.
    start = time.perf_counter()
    warm_steps = 3
    train_steps(model, optimizer, data, warm_steps, bs, channels_last=channels_last, autocast=autocast)
    info["first_steps_seconds"] = time.perf_counter() - start
    return measure, info


def eval_img_s(model, test, batch_size, no_grad):
    """Images per second of evaluate over the test set (no_grad: the same with torch.no_grad)."""
    device = next(model.parameters()).device
    pipeline.sync(device)
    start = time.perf_counter()
    if no_grad:
        model.eval()
        with torch.no_grad():
            images, labels = test
            logp = torch.cat([model(to_input(images[i:i + batch_size]))
                              for i in range(0, len(images), batch_size)])
            (logp.argmax(1) == labels).sum().item()
    else:
        evaluate(model, test, batch_size)
    pipeline.sync(device)
    return len(test[1]) / (time.perf_counter() - start)


def options_table(results, file="options.json"):
    """results/<file> (benchmarks/options.py): every option against the baseline (the default settings
    unless --baseline said otherwise)."""
    o = load_json(results, file)
    if o is None:
        return f"(no results/{file} yet: `python -m benchmarks.options`)"
    baseline = o["settings"]["baseline"]
    lines = ["| option | images/s | baseline's images/s | ratio (median) | one 20-epoch run, estimated | end to end |",
             "|---|---|---|---|---|---|"]
    for group, what in (("train", "training"), ("eval", "evaluation")):
        for name, v in o[group].items():
            if "error" in v:
                lines.append(f"| {what}: {name} | failed: {v['error'][:120]} | | | | |")
                continue
            extra = f" (+{v['one_off_seconds']:.0f} s compiling)" if v.get("one_off_seconds", 0) >= 1 else ""
            lines.append(f"| {what}: {name} | {v['img_s']:,.0f} | {v['baseline_img_s']:,.0f} | {v['ratio']:.2f} "
                         f"| {v['run_seconds'] / 60:.1f} min{extra} | {v['end_to_end_speedup']:.2f} |")
    st = o["settings"]
    lines += ["", f"Training options are compared with: {baseline}; evaluation options with the default evaluation "
                  f"(batch {o['settings'].get('eval_batch', 2000)}, inference_mode). One 20-epoch run with the "
                  f"baseline estimated at "
                  f"{o['baseline_run_seconds'] / 60:.1f} min. {st['repeats']} alternating repeats of "
                  f"{st['training_images_per_measurement']:,} training images (evaluation: the 10,000 test images); "
                  f"median of the per-repeat ratios. {o['device']}; PyTorch {o['versions']['torch']}."]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--quick", action="store_true", help="tiny measurements: checks that it runs (for the tests)")
    p.add_argument("--images", type=int, default=None,
                   help=f"training images per measurement (default 6,400, i.e. {6400 // BATCH} steps of {BATCH}; "
                        "512 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="measurements of each option (default 7; 1 with --quick)")
    p.add_argument("--baseline", default=list(TRAIN_OPTIONS)[0], metavar="OPTION",
                   help="the training option the others are compared with (default: the default settings)")
    p.add_argument("--only", nargs="+", default=None, metavar="OPTION",
                   help=f"measure only these training options: {', '.join(repr(o) for o in list(TRAIN_OPTIONS)[1:])}")
    p.add_argument("--data", default=os.path.join(pipeline.ROOT, "data"), help="dataset root (DATA/MNIST/raw)")
    p.add_argument("--device", type=cli.device, default="auto", help="cpu, cuda[:N], mps, or auto (default)")
    p.add_argument("--out", default=None,
                   help="the JSON written (default results/options.json; results/options_quick.json with --quick)")
    args = p.parse_args(argv)
    args.images = args.images or (512 if args.quick else 6400)
    args.repeats = args.repeats or (1 if args.quick else 7)
    if args.images < 512 or args.repeats < 1:
        p.error("--images must be at least 512 and --repeats at least 1")
    unknown = [o for o in (args.only or []) + [args.baseline] if o not in TRAIN_OPTIONS]
    if unknown:
        p.error(f"argument --only: unknown {unknown}; choose from {list(TRAIN_OPTIONS)[1:]}")
    out = args.out or os.path.join(pipeline.ROOT, "results", "options_quick.json" if args.quick else "options.json")
    device = args.device

    machine.tune_malloc()  # every option on top of train.py's allocator setting
    machine.pin_isa()  # as train.py does, before torch's first operation
    train, test = load_mnist(args.data)
    data = tuple(t.to(device) for t in train)
    test = tuple(t[:2000 if args.quick else None].to(device) for t in test)
    names = [args.baseline] + [o for o in (args.only or list(TRAIN_OPTIONS)[1:]) if o != args.baseline]

    results = {"device": pipeline.device_description(device), "versions": pipeline.versions(),
               "settings": {"quick": args.quick, "training_images_per_measurement": args.images,
                            "repeats": args.repeats, "statistic": "median of per-repeat ratios",
                            "order": "alternating: option then baseline, baseline then option",
                            "baseline": args.baseline, "eval_batch": EVAL_BATCH,
                            "lean_path": lean.lean_path(device)},
               "train": {}, "eval": {}}
    base_name = names[0]
    base_measure, _ = make_trainer(base_name, data, args.images)
    for name in names[1:]:
        try:
            measure, info = make_trainer(name, data, args.images)
        except Exception as e:  # e.g. torch.compile without a working compiler: report, do not stop
            results["train"][name] = {"error": f"{type(e).__name__}: {e}"[:500]}
            print(f"{name}: failed: {e}")
            continue
        samples = pipeline.alternating(lambda n: (measure if n == name else base_measure)(data),
                                       [name, base_name], args.repeats)
        ratios = [o / b for o, b in zip(samples[name], samples[base_name])]
        ratio, img_s, base_img_s = statistics.median(ratios), statistics.median(samples[name]), \
            statistics.median(samples[base_name])
        results["train"][name] = {"img_s": img_s, "baseline_img_s": base_img_s, "ratio": ratio,
                                  "first_steps_seconds": info["first_steps_seconds"], "samples_img_s": samples[name],
                                  "baseline_samples_img_s": samples[base_name]}
        print(f"train  {name:<42} {img_s:>8,.0f} img/s  vs {base_img_s:>8,.0f}  x{ratio:.2f}  "
              f"(first 3 steps {info['first_steps_seconds']:.1f} s)")

    model, _ = pipeline.fresh_model(device)
    eval_names = list(EVAL_OPTIONS)
    for _ in range(2):  # warm-up
        eval_img_s(model, test, EVAL_BATCH, False)
    for name in eval_names[1:]:
        repeats = args.repeats if args.quick else max(args.repeats, 3)
        samples = pipeline.alternating(lambda n: eval_img_s(model, test, *EVAL_OPTIONS[n]), [name, eval_names[0]],
                                       repeats)
        ratios = [o / b for o, b in zip(samples[name], samples[eval_names[0]])]
        results["eval"][name] = {"img_s": statistics.median(samples[name]),
                                 "baseline_img_s": statistics.median(samples[eval_names[0]]),
                                 "ratio": statistics.median(ratios)}
        print(f"eval   {name:<42} {results['eval'][name]['img_s']:>8,.0f} img/s  vs "
              f"{results['eval'][name]['baseline_img_s']:>8,.0f}  x{results['eval'][name]['ratio']:.2f}")

    # End to end: one 20-epoch run = 20 x (60,000 training + 10,000 test images) + one-off costs.
    base_train = statistics.median(v["baseline_img_s"] for v in results["train"].values() if "ratio" in v) \
        if any("ratio" in v for v in results["train"].values()) else None
    base_eval = statistics.median(v["baseline_img_s"] for v in results["eval"].values())
    if base_train:
        base_run = 20 * (60000 / base_train + 10000 / base_eval)
        results["baseline_run_seconds"] = base_run
        for name, v in results["train"].items():
            if "ratio" not in v:
                continue
            one_off = max(0.0, v["first_steps_seconds"] - 3 * TRAIN_OPTIONS[name][0] / v["img_s"])
            run = 20 * (60000 / (base_train * v["ratio"]) + 10000 / base_eval) + one_off
            v["run_seconds"], v["end_to_end_speedup"], v["one_off_seconds"] = run, base_run / run, one_off
        for v in results["eval"].values():
            run = 20 * (60000 / base_train + 10000 / (base_eval * v["ratio"]))
            v["run_seconds"], v["end_to_end_speedup"] = run, base_run / run
        print(f"\none 20-epoch run, estimated: {args.baseline} {base_run / 60:.1f} min")
        for group in ("train", "eval"):
            for name, v in results[group].items():
                if "run_seconds" in v:
                    print(f"  {name:<42} {v['run_seconds'] / 60:>5.1f} min  "
                          f"(x{v['end_to_end_speedup']:.2f} end to end)")
    write_json(out, results)
    print(f"wrote {os.path.relpath(out)}")
    return results


if __name__ == "__main__":
    main()
