"""The recipe search: a small grid of training settings compared on the validation split, and the rule that picks one.

Every setting trains BN + L1, LN and GN for 20 epochs on the first 50,000 training images and is scored
on the last 10,000 (never on the test set). The rule, fixed before any of these runs was trained:

1. Seed 0 of the three norms for every setting in GRID. A setting's score is its mean final (epoch 20)
   validation accuracy over the three norms and over the seeds it has.
2. Every setting whose seed-0 score is within CLOSE points of the best seed-0 score also trains seed 1.
3. Among those, the settings whose two-seed score is within TIE points of the best are tied, and the tie
   goes to the cheapest (cost()): no dropout before dropout (drawing the masks is about 18% of a CPU step),
   then the larger batch (batch 64 trains about 0.9x the images per second of 128 here: docs/performance.md),
   then rotation before the full affine map (the same cost; the simpler one).

Runs resume like train.py's (run the same command again); results go to OUT/results/tune/ (--out: by default
runs/; the committed search is `--out .`), and each invocation that trains logs its wall time to tune.json there.
"""
import itertools
import os
import sys

import numpy as np

import cli
import machine
import stats
import utils
from data import load_mnist
from recipe import Recipe, experiment
from records import load_records

# Each augmentation names all four of its settings, so that a setting means the same whatever Recipe's defaults.
AUGMENTATIONS = {
    "rotate": dict(degrees=7.0, translate=0.0, scale=0.0, shear=0.0),
    "affine": dict(degrees=7.0, translate=0.1, scale=0.1, shear=5.0),
}
GRID = {"augmentation": tuple(AUGMENTATIONS), "dropout": (0.0, 0.05), "batch_size": (64, 128)}
VAL = 10_000     # validation images, held out from the end of the training set
CLOSE = 0.10     # points: a setting this close to the best after seed 0 gets a second seed
TIE = 0.05       # points: settings this close to the best after two seeds are tied
FOLDER = "tune"


def settings():
    """Every setting of the grid, as {"augmentation": ..., "dropout": ..., "batch_size": ...}."""
    return [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]


def setting_id(setting):
    """ "affine_dropout0.05_bs64": the setting's part of its runs' file names."""
    return f"{setting['augmentation']}_dropout{setting['dropout']:g}_bs{setting['batch_size']}"


def recipes(setting, seed, **overrides):
    """BN + L1, LN and GN for one setting and seed, on the validation split (overrides: for tests)."""
    aug = AUGMENTATIONS[setting["augmentation"]]
    return experiment(seeds=(seed,), dropout=setting["dropout"], batch_size=setting["batch_size"],
                            **{"val": VAL, **aug, **overrides})


def run_names(recipes_, setting):
    return [f"{r.name}_{setting_id(setting)}" for r in recipes_]


def scores(records):
    """{setting id: {"seeds": {seed: score}, "score": mean, "runs": n, "seconds": mean s/epoch}} over the settings
    whose three norms have finished for at least seed 0. A seed counts once all three norms have finished it."""
    out = {}
    for setting in settings():
        sid = setting_id(setting)
        by_seed = {}
        for name, recs in records.items():
            if not name.endswith("_" + sid):
                continue
            for seed, r in stats.finished(recs).items():
                by_seed.setdefault(seed, []).append(r)
        done = {seed: recs for seed, recs in by_seed.items() if len(recs) == 3}
        if 0 not in done:
            continue
        finals = {seed: float(np.mean([r["history"][-1]["test_acc"] for r in recs])) for seed, recs in done.items()}
        runs = [r for recs in done.values() for r in recs]
        out[sid] = {"setting": setting, "seeds": finals, "score": float(np.mean(list(finals.values()))),
                    "runs": len(runs), "seconds": float(np.mean([e["seconds"] for r in runs for e in r["history"]]))}
    return out


def second_seeds(table):
    """The settings (ids) that the rule gives a second seed: within CLOSE of the best seed-0 score. None until every
    setting has its seed-0 score."""
    if len(table) < len(settings()):
        return None
    best = max(t["seeds"][0] for t in table.values())
    return [sid for sid, t in table.items() if t["seeds"][0] >= best - CLOSE - 1e-9]


def cost(setting):
    """The rule's order of cheapness, cheapest first (see the module's docstring)."""
    return setting["dropout"] > 0, -setting["batch_size"], list(AUGMENTATIONS).index(setting["augmentation"])


def choose(table):
    """(chosen setting id, the tied ids) by the rule, or None while runs it needs are missing."""
    finalists = second_seeds(table)
    if finalists is None or any(1 not in table[sid]["seeds"] for sid in finalists):
        return None
    best = max(table[sid]["score"] for sid in finalists)
    tied = [sid for sid in finalists if table[sid]["score"] >= best - TIE - 1e-9]
    return min(tied, key=lambda sid: cost(table[sid]["setting"])), tied


def run_search(data, *, device, out, jobs, fresh=False, progress=True, **overrides):
    """Train what the rule needs next, until it can choose; returns the records under results/tune/."""
    folder = os.path.join(out, "results", FOLDER)
    for stage, seed in ((1, 0), (2, 1)):
        records = load_records(folder) if os.path.isdir(folder) else {}
        todo = settings() if stage == 1 else [s for s in settings() if setting_id(s) in second_seeds(scores(records))]
        runs, names = [], []
        for setting in todo:
            rs = recipes(setting, seed, **overrides)
            runs += rs
            names += run_names(rs, setting)
        print(f"stage {stage}: seed {seed} of {len(todo)} setting{'s' if len(todo) != 1 else ''}, {len(runs)} runs")
        utils.run_experiments(runs, data, device=device, out=out, folder=FOLDER, jobs=jobs, names=names,
                              progress=progress, fresh=fresh, log="tune.json")
    return load_records(folder)


def format_table(table):
    lines = [f"{'setting':<28} {'seed 0':>7} {'seed 1':>7} {'score':>7} {'s/epoch':>8}"]
    for sid, t in sorted(table.items(), key=lambda kv: -kv[1]["score"]):
        s1 = f"{t['seeds'][1]:.3f}" if 1 in t["seeds"] else ""
        lines.append(f"{sid:<28} {t['seeds'][0]:>7.3f} {s1:>7} {t['score']:>7.3f} {t['seconds']:>8.1f}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_run_arguments(p, jobs_default=min(2, os.cpu_count() or 1),
                          jobs_help="runs trained at once, in that many processes with one CPU thread each", figures=False)
    p.add_argument("--epochs", type=cli.positive_int, default=Recipe.epochs,
                   help="epochs per run (the search uses the default; fewer only for a quick look, which goes to a "
                        "folder of its own under --out)")
    p.add_argument("--limit", type=cli.positive_int, default=None,
                   help="train on only the first N training images, for a quick look (a folder of its own under "
                        "--out; default: all 50,000)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # A quick look (fewer epochs or images) goes to a folder of its own under --out (cli.variant)
    args.out = os.path.join(args.out, cli.variant(args, parse_args([]), ("epochs", "limit")))
    machine.tune_malloc()
    machine.pin_isa(not args.native_isa)  # before torch's first operation, so that the runs reproduce on any AVX2 CPU
    print(utils.LOG_HEADER)
    try:
        data = load_mnist(args.data)
        records = run_search(data, device=args.device, out=args.out, jobs=args.jobs, fresh=args.fresh,
                             progress=not args.no_progress, epochs=args.epochs, limit=args.limit)
    except utils.USER_ERRORS as e:
        sys.exit(f"tune.py: error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"\nstopped: every finished epoch is kept; resume with: python {' '.join(sys.argv)}")
    table = scores(records)
    print()
    print(format_table(table))
    chosen = choose(table)
    print(f"\nchosen: {chosen[0]} (tied: {', '.join(chosen[1])})" if chosen else "\nnot yet decided")
    return 0


if __name__ == "__main__":
    sys.exit(main())
