"""Train BN + L1, LN and GN on MNIST: results/*.json, weights/*.pt, the figures in static/ and a summary table.

Runs resume: run the same command again after an interruption and each unfinished run continues from
its last finished epoch, while finished runs are loaded, not retrained (so on the committed results this
only redraws the figures). --rerun FILE trains again exactly the run a results file records and says
whether its history came out identical.
"""
import json
import os
import shlex
import sys

import torch

import cli
import utils


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_recipe_arguments(p)
    p.add_argument("--batch-size", type=cli.positive_int, default=cli.DEFAULT.batch_size, help="training batch size")
    p.add_argument("--l1", type=cli.number(float, "a finite number >= 0", 0), default=utils.L1,
                   help="L1 weight added to the BN run's loss (LN and GN train without it); 0 for none")
    p.add_argument("--ablation-seeds", nargs="+", type=cli.number(int, "a seed >= 0", 0), default=[],
                   metavar="SEED", help="also train, for these seeds, BN without L1 and GN with "
                   f"{' and '.join(map(str, utils.ABLATION_GROUPS))} groups (one group is LN), with the same settings "
                   "(default: none)")
    p.add_argument("--val", type=cli.positive_int, default=None, metavar="N",
                   help="hold out the last N training images and evaluate on them instead of the test set "
                        "(for choosing settings; results go to OUT/results/val/<settings>/, no figures)")
    p.add_argument("--rerun", metavar="FILE", default=None,
                   help="train again the run recorded in FILE (a results JSON), with its settings and CPU thread "
                        "count, write it under --out, and compare its history with FILE's")
    cli.add_run_arguments(p, jobs_default=1, jobs_help="runs trained at once, in that many processes with one CPU "
                          "thread each; 1: one after another in this process, with all threads (the faster for the "
                          "three models on 2 cores: docs/performance.md)")
    args = p.parse_args(argv)
    if args.val is not None and args.val >= utils.MNIST_SHA256["train"][0]:
        p.error(f"argument --val: must be smaller than the 60000 training images, got {args.val}")
    if args.rerun and not os.path.isfile(args.rerun):
        p.error(f"argument --rerun: no such file: {args.rerun}")
    return args


def recipes(args):
    """(main runs, ablation runs) the command line asks for, each seed by seed (so that an interrupted invocation
    leaves whole pairs): each norm for each seed, L1 on the BN run only; the ablations for their seeds."""
    settings = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, dropout=args.dropout,
                    **cli.augmentation(args), precision=args.precision, val=args.val or 0, limit=args.limit)
    main = utils.experiment(args.norms, args.seeds, l1=args.l1, groups=args.groups, **settings)
    by_seed = lambda runs: sorted(runs, key=lambda r: r.seed)
    return by_seed(main), by_seed(utils.ablations(args.ablation_seeds, **settings))


def val_folder(args):
    """Where --val runs go: one folder per setting, so that runs that choose settings never clash ("" without --val).
    The augmentation is named only when it is not rotation alone in ±7 degrees."""
    if not args.val:
        return ""
    aug = cli.augmentation(args)
    return os.path.join("val", f"lr{args.lr:g}_bs{args.batch_size}_dropout{args.dropout:g}_epochs{args.epochs}"
                        + ("" if aug == utils.UNRECORDED else "_aug" + "-".join(f"{v:g}" for v in aug.values())))


def rerun(args, data):
    """--rerun FILE: the recorded run again, with its recipe and thread count; 0 if its history is identical."""
    with open(args.rerun) as f:
        saved = json.load(f)
    recipe = utils.Recipe.from_config(saved["config"])
    threads = saved["config"].get("threads")
    if threads and args.device.type == "cpu":
        torch.set_num_threads(threads)
    print(f"re-running {args.rerun}: {recipe}, {torch.get_num_threads()} CPU threads"
          + ("" if threads else " (the file does not record its thread count)"))
    path = utils.run_paths(args.out, "", saved["name"], recipe.seed)["results"]
    if os.path.abspath(path) == os.path.abspath(args.rerun):
        sys.exit(f"train.py: error: --rerun would overwrite {args.rerun}; choose another --out")
    print(utils.LOG_HEADER)
    _, record = utils.run(recipe, data, device=args.device, out=args.out, name=saved["name"],
                          progress=not args.no_progress, fresh=args.fresh)
    strip = lambda history: [{k: v for k, v in e.items() if k != "seconds"} for e in history]
    new, old = strip(record["history"]), strip(saved["history"])
    same = next((i for i, (a, b) in enumerate(zip(new, old)) if a != b), None)
    if same is None and len(new) == len(old):
        print(f"identical: all {len(new)} epochs of {path} equal {args.rerun} (every key but seconds)")
        return 0
    where = f"epoch {same + 1} differs: {new[same]} against {old[same]}" if same is not None else \
        f"{len(new)} epochs against {len(old)}"
    print(f"different: {where}")
    return 1


def main(argv=None):
    args = parse_args(argv)
    utils.tune_malloc()
    data = utils.load_mnist(args.data)
    try:
        if args.rerun:
            return rerun(args, data)
        main_runs, ablation_runs = recipes(args)
        runs = main_runs + ablation_runs
        folder = val_folder(args)
        train, test = utils.select(data, runs[0])
        print(f"device {args.device}, {args.precision}, {args.jobs} job{'s' if args.jobs > 1 else ''}; training on "
              f"{len(train[1])} images, evaluating on {len(test[1])} {'held-out training' if args.val else 'test'} "
              f"images")
        print(utils.LOG_HEADER)
        records, models = utils.run_experiments(runs, data, device=args.device, out=args.out, folder=folder,
                                                jobs=args.jobs, progress=not args.no_progress, fresh=args.fresh)
    except utils.SettingsClash as e:
        sys.exit(f"train.py: error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"\nstopped: every finished epoch is kept; resume with: "
                 f"{shlex.join(['python'] + sys.argv)}")
    print()
    print(utils.format_summary(records))
    if args.val or args.no_figures:
        return 0
    static = os.path.join(args.out, "static")
    shown = {r.name for r in main_runs}  # the figures show the main runs
    records = {name: recs for name, recs in records.items() if name in shown}
    models = {name: model for name, model in models.items() if name in shown}
    written = [utils.save_figure(fig, os.path.join(static, f"{name}.png"))
               for name, fig in utils.experiment_figures(records, models, data[1]).items()]
    print("wrote " + ", ".join(os.path.relpath(w, args.out) for w in written))
    missing = [name for name in records if name not in models]
    if missing:
        print(f"no weights kept for {', '.join(missing)}: no misclassified figure for them (--fresh retrains)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
