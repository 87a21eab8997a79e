"""Train BN + L1, LN and GN on MNIST; write results/*.json, the figures in static/ and a summary table."""
import argparse
import math
import os

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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--norms", nargs="+", type=str.upper, choices=NORMS, default=list(NORMS), metavar="NORM",
                   help=f"which models to train, any of {', '.join(NORMS)} (any case)")
    p.add_argument("--epochs", type=positive_int, default=20, help="epochs per run")
    p.add_argument("--seeds", nargs="+", type=number(int, "a seed >= 0", 0), default=[0], metavar="SEED",
                   help="one run per seed")
    p.add_argument("--batch-size", type=positive_int, default=128, help="training batch size")
    p.add_argument("--lr", type=number(float, "a number > 0", 0, low_open=True), default=0.1,
                   help="peak learning rate of the one-cycle schedule")
    p.add_argument("--dropout", type=number(float, "a probability in [0, 1)", 0, high=1), default=0.05,
                   help="dropout after every norm layer")
    p.add_argument("--l1", type=number(float, "a finite number >= 0", 0), default=1e-5,
                   help="L1 weight added to the BN run's loss (LN and GN train without it); 0 for none")
    p.add_argument("--groups", type=int, choices=VALID_GROUPS, default=2, help="groups in every GroupNorm layer")
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
    return args


def main(argv=None):
    args = parse_args(argv)
    train, test = utils.load_mnist(args.data)
    if args.val:
        train, test = utils.split_validation(train, args.val)
    if args.limit:
        train = (train[0][:args.limit], train[1][:args.limit])
    results_dir = os.path.join(args.out, "results")
    if args.val:  # one folder per setting, so runs that choose the recipe never overwrite each other
        results_dir = os.path.join(results_dir, "val", f"lr{args.lr:g}_bs{args.batch_size}_dropout{args.dropout:g}"
                                                       f"_epochs{args.epochs}")
    print(f"device {args.device}; training on {len(train[1])} images, evaluating on "
          f"{len(test[1])} {'held-out training' if args.val else 'test'} images")
    print(utils.LOG_HEADER)
    specs = [(norm, args.l1 if norm == "BN" else 0.0) for norm in args.norms]  # L1 goes to the BN run only
    records, models = utils.run_experiments(
        specs, args.seeds, train=train, test=test, device=args.device, groups=args.groups, dropout=args.dropout,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, results_dir=results_dir,
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
