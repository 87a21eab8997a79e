"""python -m studies.lr_sweep: the learning-rate sweep and the controls' test runs (studies/lr_sweep), then its
table and figures."""
import functools
import os
import sys

import utils
from mnist_norms import cli
from studies.lr_sweep import EPOCHS, FOLDER, INIT_FILE, run_sweep
from studies.lr_sweep import __doc__ as DOC
from studies.lr_sweep.report import plot, sweep_table
from studies.tables import load_json


def parse_args(argv=None):
    p = cli.parser(DOC)
    cli.add_run_arguments(p)
    cli.add_quick_look_arguments(p, EPOCHS)
    p.add_argument("--sweep-only", action="store_true",
                   help="train the sweep only, not the control's test runs at the peak rule 3 chose")
    return cli.finish_run_arguments(p.parse_args(argv))


def main(argv=None):
    args = parse_args(argv)
    records = cli.run_quick_lookable(args, parse_args([]), "studies.lr_sweep",
                                     functools.partial(run_sweep, control=not args.sweep_only), utils.LOG_HEADER)
    print()
    print(sweep_table(os.path.join(args.out, "results")))
    if not args.no_figures:
        from mnist_norms.figures import save_figure
        init = load_json(os.path.join(args.out, "results", FOLDER), INIT_FILE)
        for fig, name in zip(plot(records, init and init["block_std"]), ("lr_sweep", "block_scales")):
            print("wrote " + save_figure(fig, os.path.join(args.out, "static", f"{name}.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
