"""Train BN + L1, LN and GN on MNIST: results/*.json, weights/*.pt, the figures in static/ and a summary table.

Runs go to --out (default runs/, a folder of your own that git ignores), in a subfolder named after the settings
that differ from the experiment's defaults (runs/results/epochs1_limit2000/ ...), so that no two sets of settings
share files. The committed runs are written only by asking for them: --out . (docs/experiments.md, Reproduce);
`python train.py --out .` on them finds every run finished and only redraws static/.

Runs resume: run the same command again after an interruption and each unfinished run continues from its last
finished epoch, while finished runs are loaded, not retrained. On a CPU every run computes with one thread, as the
committed runs did, so `python train.py` gives their numbers bit for bit (python -m tools.rerun checks one file).
"""
import os
import sys

import utils
from mnist_norms import cli
from mnist_norms.data import MNIST_SHA256, load_mnist, select
from mnist_norms.figures import save_figures
from mnist_norms.recipe import ABLATION_GROUPS, L1, ablations, experiment, experiment_folder
from mnist_norms.records import format_summary, shown
from mnist_norms.runner import effective_jobs


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_recipe_arguments(p, defaults={"l1": L1, "val": None},
                             helps={"l1": "L1 weight added to the BN run's loss (LN and GN train without it); 0 for "
                                          "none",
                                    "val": "hold out the last N training images and evaluate on them instead of the "
                                           "test set (for choosing settings; no figures)"})
    p.add_argument("--ablation-seeds", nargs="+", type=cli.number(int, "a seed >= 0", 0), default=[],
                   metavar="SEED", help="also train, for these seeds, BN without L1 and GN with "
                   f"{' and '.join(map(str, ABLATION_GROUPS))} groups (one group is LN), with the same settings "
                   "(default: none)")
    cli.add_run_arguments(p)
    args = p.parse_args(argv)
    if args.val is not None and not 0 < args.val < MNIST_SHA256["train"][0]:
        p.error(f"argument --val: must be between 1 and 59999 (of the 60000 training images), got {args.val}")
    args.val = args.val or 0
    return args


def recipes(args):
    """(main runs, ablation runs) the command line asks for, each seed by seed (so that an interrupted invocation
    leaves whole pairs): each norm for each seed, L1 on the BN run only; the ablations for their seeds."""
    settings = cli.recipe_settings(args)
    l1, groups = settings.pop("l1"), settings.pop("groups")
    main = experiment(args.norms, args.seeds, l1=l1, groups=groups, **settings)
    by_seed = lambda runs: sorted(runs, key=lambda r: r.seed)
    return by_seed(main), by_seed(ablations(args.ablation_seeds, **settings))


def main(argv=None):
    args = parse_args(argv)

    def body():
        main_runs, ablation_runs = recipes(args)  # bad settings: an error before the data is loaded
        data = load_mnist(args.data)
        runs = main_runs + ablation_runs
        train, test = select(data, runs[0])
        args.jobs = effective_jobs(args.device, args.jobs, len(runs))  # 1 on a GPU: one run after another
        print(f"device {args.device}, {args.precision}, {args.jobs} job{'s' if args.jobs > 1 else ''}"
              f"{' (one CPU thread each)' if args.device.type == 'cpu' else ''}; training on {len(train[1])} images, "
              f"evaluating on {len(test[1])} {'held-out training' if args.val else 'test'} images")
        folder = experiment_folder(runs)
        where = os.path.join(shown(os.path.join(args.out, "results", folder)), "")  # one trailing separator
        print(f"runs go to {where} (their weights and "
              f"figures to the same folder under weights{os.sep} and static{os.sep})")
        print(utils.LOG_HEADER)
        return main_runs, data, utils.run_experiments(runs, data, device=args.device, out=args.out, jobs=args.jobs,
                                                      progress=not args.no_progress, fresh=args.fresh)
    main_runs, data, (records, models) = cli.run_command("train.py", body, pin=not args.native_isa,
                                                              precision=args.precision)
    print()
    print(format_summary(records))
    if args.val or args.no_figures:
        return 0
    main_names = {r.name for r in main_runs}  # the figures show the main runs
    records = {name: recs for name, recs in records.items() if name in main_names}
    models = {name: model for name, model in models.items() if name in main_names}
    written = save_figures(utils.figures(records, models, data[1]), args.out, main_runs)
    print("wrote " + ", ".join(shown(w) for w in written))
    missing = [name for name in records if name not in models]
    if missing:
        print(f"no weights kept for {', '.join(missing)}: no misclassified figure for them (--fresh retrains)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
