"""The batch-size study: BN, LN and GN trained with 2 to 256 images per batch (results/batch_size/, its figure and
table).

Every norm at every batch size for every seed, today's recipe (Recipe's defaults, no L1) for EPOCHS epochs, with the
peak learning rate scaled linearly with the batch (Goyal et al. 2017, as Wu & He do): the recipe's LR at the recipe's
batch (0.1 at 64). BN runs also record the test set evaluated with batch statistics.

    python -m studies.batch_size --out .    # the committed study: results/batch_size/, static/batch_size_study.png

Runs resume like train.py's (run the same command again); results go to OUT/results/batch_size/ (--out: by default
runs/), and each invocation that trains logs its wall time to study.json there.
"""
import json
import os

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

import utils
from mnist_norms import cli, runner
from mnist_norms.data import load_mnist
from mnist_norms.figures import save_figure
from mnist_norms.recipe import Recipe, run_order
from mnist_norms.records import is_finished, load_records, summarize
from studies import stats
from studies.tables import runs_cell

BATCH_SIZES = (2, 4, 8, 16, 32, 64, 128, 256)
# The study's own defaults: short runs (an epoch at batch 2 is 30,000 steps, about 6x the time of one at 64), three
# seeds; everything else is today's recipe.
EPOCHS, SEEDS = 2, (0, 1, 2)
BASE_BATCH = Recipe.batch_size  # the batch at which the peak learning rate is --lr: the recipe's own
SETTINGS = {}
FOLDER = "batch_size"


def scaled_lr(batch_size, lr=Recipe.lr, base=BASE_BATCH):
    """The linear scaling rule: the peak learning rate is proportional to the batch size, and is `lr` at `base`."""
    return lr * batch_size / base


def plan(norms, batch_sizes, seeds, **settings):
    """The study's recipes, slowest first (small batches take the most steps per epoch): every norm at
    every batch size for every seed, no L1 unless `settings` says so, lr scaled by scaled_lr."""
    if not norms or not batch_sizes or not seeds:
        raise ValueError("the study needs at least one norm, one batch size and one seed")
    bad = [b for b in batch_sizes if not isinstance(b, int) or b < 2]
    if bad:  # BatchNorm cannot normalize a batch of one image in training
        raise ValueError(f"batch sizes must be integers >= 2, got {bad}")
    lr = settings.pop("lr", Recipe.lr)
    return [Recipe(norm, seed=seed, batch_size=b, lr=scaled_lr(b, lr), **settings)
            for b in sorted(batch_sizes) for norm in norms for seed in seeds]


def run_name(recipe):
    return f"{recipe.name}_bs{recipe.batch_size}"


def run_study(recipes, data, *, device, out, jobs=1, fresh=False, progress=True):
    """Train (or resume) the study's recipes; returns {run name: [record per seed]} for every run in the folder."""
    folder = os.path.join(out, "results", FOLDER)
    names = [run_name(r) for r in recipes]
    todo = sum(fresh or not is_finished(os.path.join(folder, f"{n}_seed{r.seed}.json"))
               for r, n in zip(recipes, names))
    print(f"batch-size study: {len(recipes)} runs, {len(recipes) - todo} already finished in {folder}, "
          f"{todo} to train with {jobs} job{'s' if jobs > 1 else ''}")
    print(utils.LOG_HEADER)
    utils.run_experiments(recipes, data, device=device, out=out, jobs=jobs, progress=progress, fresh=fresh,
                          study=runner.Study(folder=FOLDER, names=tuple(names), batch_stats=True,
                                            invocations="study.json"))
    return load_records(folder)


def summary(records):
    """One row per (norm, batch size) of a study's records, by norm then batch size: summarize()'s
    keys plus norm, batch_size, lr, and for BN batch_stats (each seed's final accuracy with batch statistics) and its
    batch_stats_mean/_std."""
    rows = []
    for row in summarize(records):
        recs = [r for r in records[row["name"]] if r["history"]]
        config = recs[0]["config"]
        recipe = Recipe.from_config(config)
        row.update(norm=recipe.name, norm_label=recipe.label, batch_size=config["batch_size"], lr=config.get("lr"),
                   epochs=config["epochs"])
        stats = [r["history"][-1].get("test_acc_batch_stats") for r in recs]
        if all(v is not None for v in stats):
            row["batch_stats_mean"], row["batch_stats_std"] = float(np.mean(stats)), float(np.std(stats))
            row["batch_stats"] = stats
        rows.append(row)
    return sorted(rows, key=lambda r: run_order(records[r["name"]][0]["config"]))


def plot(records):
    """Final test error (%, log axis) against batch size (log axis), one line per norm: the mean over
    seeds with a min-max band, and for BN a dashed line evaluated with batch statistics."""
    rows = summary(records)
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    lines = {}
    for row in rows:
        recs = [r for r in records[row["name"]] if r["history"]]
        lines.setdefault(row["norm_label"], []).append(
            (row["batch_size"], [100 - r["history"][-1]["test_acc"] for r in recs]))
        if "batch_stats_mean" in row:
            lines.setdefault(f"{row['norm_label']}, evaluated with batch statistics", []).append(
                (row["batch_size"], [100 - r["history"][-1]["test_acc_batch_stats"] for r in recs]))
    colours = {}
    for label, points in lines.items():
        points.sort()
        sizes = [b for b, _ in points]
        err = [np.array(v) for _, v in points]
        mean = np.array([e.mean() for e in err])
        base = label.split(",")[0]
        other = sizes.index(BASE_BATCH) if BASE_BATCH in sizes[1:] else len(sizes) - 1  # the recipe's batch, if studied
        ends = f"{mean[0]:.2f}% at batch {sizes[0]}, {mean[other]:.2f}% at {sizes[other]}"
        (line,) = ax.plot(sizes, mean, marker="o", markersize=4, linestyle="--" if "," in label else "-",
                          color=colours.get(base), label=f"{label}: {ends}")
        colours.setdefault(base, line.get_color())
        if any(len(e) > 1 for e in err):
            ax.fill_between(sizes, [e.min() for e in err], [e.max() for e in err], color=line.get_color(), alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    # Plain numbers (0.5, 1, 2, 5) rather than powers of ten: the errors span less than two decades.
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    all_sizes = sorted({r["batch_size"] for r in rows})
    ax.set_xticks(all_sizes, [str(b) for b in all_sizes])
    ax.set_xlim(all_sizes[0] / 1.6, all_sizes[-1] * 1.25)
    base_lr = {round(r["lr"] * BASE_BATCH / r["batch_size"], 12) for r in rows if r["lr"] is not None}
    rule = f" (peak learning rate {base_lr.pop():g} x batch / {BASE_BATCH})" if len(base_lr) == 1 else ""
    ax.set_xlabel("images per batch" + rule)
    ax.set_ylabel("final test error (%, log scale)")
    epochs = sorted({r["epochs"] for r in rows})
    seeds = sorted({len(r["seeds"]) for r in rows})
    ax.set_title(f"Test error after {'/'.join(map(str, epochs))} epochs against batch size "
                 f"(mean of {'/'.join(map(str, seeds))} seeds; band: min to max)")
    ax.grid(alpha=0.3, which="both")
    # below the axes: inside, it covered LN's band at batch 16 (the legend gives the values at batch 2)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="outside lower center", ncols=2)
    return fig


def batch_size_table(results):
    """The batch-size study in results/batch_size/: final test accuracy per norm and batch size, and
    its wall time from study.json."""
    folder = os.path.join(results, FOLDER)
    records = load_records(folder) if os.path.isdir(folder) else {}
    rows = summary(records)
    if not rows:
        return "(no runs in results/batch_size/ yet: `python -m studies.batch_size --out .`)"
    norms = list(dict.fromkeys(r["norm"] for r in rows))
    labels = {r["norm"]: r["norm_label"] for r in rows}
    cell = {(r["norm"], r["batch_size"]): r for r in rows}
    columns = []  # (heading, norm, key)
    for norm in norms:
        label = labels[norm]
        columns.append((f"{label} final test acc %" + (" (running averages)" if norm.startswith("bn") else ""),
                        norm, "final"))
        if any("batch_stats_mean" in r for r in rows if r["norm"] == norm):
            columns.append((f"{label} with batch statistics", norm, "batch_stats"))
    sizes = sorted({r["batch_size"] for r in rows})
    lines = ["| batch | peak lr | " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * (len(columns) + 2)]
    def values(row, key):  # ({seed: final accuracy}, {seed: how it failed}) of a row's runs
        recs = [r for r in records[row["name"]] if r["history"]]
        field = "test_acc" if key == "final" else "test_acc_batch_stats"
        if any(r["history"][-1].get(field) is None for r in recs):
            return {}, {}
        return ({r["config"]["seed"]: r["history"][-1][field] for r in recs},
                {r["config"]["seed"]: how for r in recs if (how := stats.failure(r["history"]))})

    for b in sizes:
        lr = next(r["lr"] for r in rows if r["batch_size"] == b)
        cells = [runs_cell(*values(cell[n, b], key)) if (n, b) in cell else "" for _, n, key in columns]
        lines.append(f"| {b} | {lr:g} | " + " | ".join(cells) + " |")
    ends = [sizes[0]] + ([BASE_BATCH] if BASE_BATCH in sizes[1:] else sizes[-1:] if len(sizes) > 1 else [])
    train = "; ".join(f"{labels[n]} " + " / ".join(f"{cell[n, b]['train_mean']:.2f}" if (n, b) in cell else "-"
                                                          for b in ends) for n in norms)
    lines += ["", f"Final training accuracy % at batch {' / '.join(map(str, ends))} (measured during training, "
                  f"so with batch statistics for BN and augmented images): {train}."]
    seeds = sorted({s for r in rows for s in r["seeds"]})
    epochs = sorted({r["epochs"] for r in rows})
    unfinished = sum(len(r["unfinished"]) for r in rows)
    train_images = sorted({rec["config"]["train_images"] for recs in records.values() for rec in recs})
    lines += ["", f"Mean ± the half-width of its 95% Student-t interval over seeds {', '.join(map(str, seeds))}; "
                  f"{'/'.join(map(str, epochs))} epoch(s) on "
                  f"{'/'.join(f'{n:,}' for n in train_images)} training images per run; "
                  f"{sum(len(r['seeds']) for r in rows)} runs"
                  + (f", {unfinished} of them unfinished" if unfinished else "") + ". A cell whose interval would "
                  "reach past 100% gives each seed's value instead; a run that failed (a loss not finite, an accuracy "
                  "falling by 10 points or more from one epoch to the next, or below 20% in every epoch: "
                  "`studies.stats.failure`) is given apart, and the interval is over the others."]
    log_path = os.path.join(folder, "study.json")
    if os.path.exists(log_path):
        with open(log_path) as f:
            log = json.load(f)["invocations"]
        trained = sum(i["runs_trained"] for i in log)
        how = "; ".join(sorted({f"{i['jobs']} parallel job{'s' if i['jobs'] > 1 else ''} on {i['cpus']} CPUs, "
                                f"device {i['device']}" for i in log}))
        lines[-1] += (f" Wall time: {sum(i['wall_seconds'] for i in log) / 60:.1f} minutes for the {trained} runs "
                      f"trained, in {len(log)} invocation{'s' if len(log) > 1 else ''} ({how}).")
    return "\n".join(lines)


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_recipe_arguments(p, helps={"lr": f"peak learning rate at batch {BASE_BATCH} (in proportion to the batch "
                                             f"size at the others)",
                                       "l1": "L1 weight added to the BN runs' loss (the study compares the norms "
                                             "alone)"},
                             defaults={"epochs": EPOCHS, **SETTINGS},
                             names=[n for n in cli.FIELDS if n not in ("norm", "seed", "batch_size", "val")])
    p.add_argument("--batch-sizes", nargs="+", type=cli.number(int, "an integer >= 2", 2), default=list(BATCH_SIZES),
                   metavar="B", help="the batch sizes")
    cli.add_run_arguments(p)
    p.set_defaults(seeds=list(SEEDS))
    return cli.finish_run_arguments(p.parse_args(argv))


def recipes_of(args):
    """The study's recipes that the parsed command line asks for."""
    return plan(args.norms, args.batch_sizes, args.seeds, **cli.recipe_settings(args))


def main(argv=None):
    args = parse_args(argv)
    # Settings other than the study's own go to a folder of their own under --out (cli.variant)
    variant = cli.variant(args, parse_args([]), list(cli.recipe_settings(args)))
    args.out = os.path.join(args.out, variant)
    records = cli.run_command("studies.batch_size", lambda: run_study(
        recipes_of(args), load_mnist(args.data), device=args.device, out=args.out, jobs=args.jobs, fresh=args.fresh,
        progress=not args.no_progress), pin=not args.native_isa, precision=args.precision)
    print()
    print(f"{'run':<16} {'lr':>8} {'seeds':>5} {'final test acc %':>17} {'with batch stats %':>19}")
    for r in summary(records):
        stats = f"{r['batch_stats_mean']:>10.2f} ± {r['batch_stats_std']:<4.2f}" if "batch_stats_mean" in r else ""
        print(f"{r['norm_label'] + ', batch ' + str(r['batch_size']):<16} {r['lr']:>8.4g} {len(r['seeds']):>5} "
              f"{r['final_mean']:>10.2f} ± {r['final_std']:<4.2f} {stats}")
    if not args.no_figures:
        path = save_figure(plot(records), os.path.join(args.out, "static", "batch_size_study.png"))
        print("wrote " + os.path.relpath(path, args.out))
    return records


if __name__ == "__main__":
    main()
