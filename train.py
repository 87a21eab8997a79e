"""Train BN + L1, LN and GN on MNIST; write results/*.json, the figures in static/ and a summary table.
With --study batch-size: train BN, LN and GN at every batch size from 2 to 256 (results/batch_size/)."""
import argparse
import math
import os
import sys

import utils
from model import NORMS, VALID_GROUPS

HERE = os.path.dirname(os.path.abspath(__file__))


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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" except where the default is None: those helps say it in words."""
    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--norms", nargs="+", type=str.upper, choices=NORMS, default=list(NORMS), metavar="NORM",
                   help=f"which models to train, any of {', '.join(NORMS)} (any case)")
    p.add_argument("--study", choices=["batch-size"], default=None,
                   help="instead of the main experiment, the batch-size study: every norm at every --batch-sizes, "
                        "peak learning rate LR x batch / 128, resuming from the runs already in results/batch_size/")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs per run (default: 20; 2 with --study)")
    p.add_argument("--seeds", nargs="+", type=number(int, "a seed >= 0", 0), default=None, metavar="SEED",
                   help="one run per seed (default: 0; 0 1 with --study)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="training batch size")
    p.add_argument("--batch-sizes", nargs="+", type=number(int, "an integer >= 2", 2), default=None, metavar="B",
                   help=f"with --study: the batch sizes (default: {' '.join(map(str, utils.STUDY_BATCH_SIZES))})")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="with --study: runs trained in parallel, in that many processes (1 CPU thread each on a CPU)")
    p.add_argument("--lr", type=number(float, "a number > 0", 0, low_open=True), default=0.1,
                   help="peak learning rate of the one-cycle schedule (with --study: at batch 128, "
                        "and in proportion to the batch size at the others)")
    p.add_argument("--dropout", type=number(float, "a probability in [0, 1)", 0, high=1), default=0.05,
                   help="dropout after every norm layer")
    p.add_argument("--l1", type=number(float, "a finite number >= 0", 0), default=None,
                   help="L1 weight added to the BN run's loss (LN and GN train without it); 0 for none "
                        "(default: 1e-5; 0 with --study, which compares the norms alone)")
    p.add_argument("--groups", type=int, choices=VALID_GROUPS, default=2, help="groups in every GroupNorm layer")
    p.add_argument("--precision", choices=utils.PRECISIONS, default="fp32",
                   help="the training forward pass: fp32, or bf16 (bfloat16 autocast; about 1.16x as fast end to end "
                        "on our AVX-512 BF16 CPU: see the README's Performance section)")
    p.add_argument("--data", default="data", help="dataset root (torchvision layout: DATA/MNIST/raw)")
    p.add_argument("--out", default=HERE, help="where results/ and static/ are written (the repository root)")
    p.add_argument("--device", default="auto", help="cpu, cuda[:N], mps, or auto: cuda, then mps, then cpu")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="train on only the first N training images, for a quick run")
    p.add_argument("--val", type=positive_int, default=None, metavar="N",
                   help="hold out the last N training images and evaluate on them instead of the test set "
                        "(for choosing settings; results go to OUT/results/val/<settings>/, no figures)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars, only the per-epoch log")
    p.add_argument("--no-figures", action="store_true",
                   help="write results/ only, leaving static/ as it is (for extra seeds and side runs)")
    args = p.parse_args(argv)
    try:
        args.device = utils.pick_device(None if args.device == "auto" else args.device)
    except (RuntimeError, ValueError) as e:
        p.error(f"argument --device: {e}")
    if args.val is not None and args.val >= 60000:
        p.error(f"argument --val: must be smaller than the 60000 training images, got {args.val}")
    study = args.study is not None
    if not study:
        for option in ("batch_sizes", "jobs"):
            if getattr(args, option) != p.get_default(option):
                p.error(f"argument --{option.replace('_', '-')}: only with --study batch-size")
    elif args.val is not None or args.batch_size != 128:
        p.error("argument --study: sets the batch sizes itself (--batch-sizes) and evaluates on the test set; "
                "--batch-size and --val do not apply")
    args.epochs = args.epochs or (2 if study else 20)
    args.seeds = args.seeds or ([0, 1] if study else [0])
    args.l1 = args.l1 if args.l1 is not None else (0.0 if study else 1e-5)
    args.batch_sizes = args.batch_sizes or list(utils.STUDY_BATCH_SIZES)
    return args


def batch_size_study(args, train, test):
    """--study batch-size: the runs (resumed), then static/batch_size_study.png and a table."""
    results_dir = os.path.join(args.out, "results", "batch_size")
    try:
        records = utils.run_study(args.norms, args.batch_sizes, args.seeds, train=train, test=test,
                                  device=args.device, results_dir=results_dir, epochs=args.epochs, lr=args.lr,
                                  l1=args.l1, groups=args.groups, dropout=args.dropout, precision=args.precision,
                                  jobs=args.jobs)
    except ValueError as e:  # results of other settings in the folder: say so without a traceback
        sys.exit(f"train.py: error: {e}")
    print()
    print(f"{'run':<16} {'lr':>8} {'seeds':>5} {'final test acc %':>17} {'with batch stats %':>19}")
    for r in utils.study_summary(records):
        stats = f"{r['batch_stats_mean']:>10.2f} ± {r['batch_stats_std']:<4.2f}" if "batch_stats_mean" in r else ""
        print(f"{r['label']:<16} {r['lr']:>8.4g} {len(r['seeds']):>5} "
              f"{r['final_mean']:>10.2f} ± {r['final_std']:<4.2f} {stats}")
    if not args.no_figures:
        path = utils.save_figure(utils.plot_batch_size_study(records),
                                 os.path.join(args.out, "static", "batch_size_study.png"))
        print("wrote " + os.path.relpath(path, args.out))
    return records


def main(argv=None):
    args = parse_args(argv)
    train, test = utils.load_mnist(args.data)
    if args.val:
        train, test = utils.split_validation(train, args.val)
    if args.limit:
        train = (train[0][:args.limit], train[1][:args.limit])
    if args.study:
        return batch_size_study(args, train, test)
    results_dir = os.path.join(args.out, "results")
    if args.val:  # one folder per setting, so runs that choose the recipe never overwrite each other
        results_dir = os.path.join(results_dir, "val", f"lr{args.lr:g}_bs{args.batch_size}_dropout{args.dropout:g}"
                                                       f"_epochs{args.epochs}")
    print(f"device {args.device}, {args.precision}; training on {len(train[1])} images, evaluating on "
          f"{len(test[1])} {'held-out training' if args.val else 'test'} images")
    print(utils.LOG_HEADER)
    specs = [(norm, args.l1 if norm == "BN" else 0.0) for norm in args.norms]  # L1 goes to the BN run only
    records, models = utils.run_experiments(
        specs, args.seeds, train=train, test=test, device=args.device, groups=args.groups, dropout=args.dropout,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, precision=args.precision, results_dir=results_dir,
        progress=not args.no_progress,
        eval_split=f"validation: the last {args.val} training images" if args.val else "test")
    print()
    print(utils.format_summary(records))
    if args.val or args.no_figures:
        return records
    static = os.path.join(args.out, "static")
    written = [utils.save_figure(fig, os.path.join(static, f"{name}.png"))
               for name, fig in utils.experiment_figures(records, models, test).items()]
    print("wrote " + ", ".join(os.path.relpath(w, args.out) for w in written))
    return records


if __name__ == "__main__":
    main()
