"""What normalization buys: the peak learning rates BN + L1, LN, GN and the two controls (model.CONTROLS: no norm,
default init; no norm, scaled init + affine) tolerate, on the validation split, with each block's output scale at the
end.

    python -m studies.lr_sweep --out .    # results/lr_sweep/, static/lr_sweep.png, static/block_scales.png

Every model at every peak of the one-cycle schedule in PEAKS, seeds SEEDS, EPOCHS epochs (the cycle spans them all and
peaks after 15% of its steps, as the recipe's does), trained on the first 50,000 training images and scored on the
last VAL (never the test set); everything else is today's recipe (recipe.Recipe), L1 on the BN run only. Each run
records what every run records (the gradient's norm included), and, once finished, the standard deviation of each
block's output (`block_std`) of the evaluated model on the first SCALE_IMAGES validation images, in eval mode.

The rule, fixed and committed before the sweep's first run:

1. Every model at every peak of PEAKS, seeds SEEDS. If any model's mean final validation accuracy at the largest peak
   of PEAKS is at least TRAINS, every model also trains at EXTRA_PEAK.
2. A run diverged if its validation accuracy fell by stats.COLLAPSE (10) points or more from one epoch to the next
   (stats.diverged), or its last epoch's validation loss is not finite.
3. A control's peak (for its ten seeds on the test set): among the peaks at which none of the control's seeds
   diverged, the one with the highest mean final validation accuracy over its seeds. Peaks within TIE points of that
   mean are tied, and the tie goes to the peak nearest the recipe's (0.1) on a log scale, then to the larger.

Then each control on the test set, as train.py trains it: seeds CONTROL_SEEDS, Recipe.epochs epochs, at the peak rule
3 chose for it, and, if that is not the recipe's, at the recipe's peak for seeds RECIPE_SEEDS (--sweep-only leaves
them out). Their files go where train.py puts a run of those settings: OUT/results/none_seed<S>.json at the recipe's
peak, OUT/results/lr<peak>/ at another (affine_seed<S>.json for the second control). The second control (AFFINE) joined
the sweep after its first 72 runs, under the same rule, with its hypotheses committed before its first run
(docs/experiments.md).

Runs resume like train.py's (run the same command again); the sweep's results go to OUT/results/lr_sweep/ (--out: by
default runs/), and each invocation that trains logs its wall time to sweep.json there (the control's to control.json
in its own folder).
"""
import functools
import math
import os
import sys

import numpy as np
import torch
from matplotlib.figure import Figure

import cli
import utils
from data import select
from files import write_json
from model import CONTROL, CONTROLS, MODELS
from recipe import L1, Recipe, settings_folder
from records import load_records, load_weights, run_paths
from studies import stats
from studies.tables import markdown

PEAKS = (0.01, 0.03, 0.1, 0.3, 1.0)
EXTRA_PEAK = 3.0
TRAINS = 90.0     # % mean final validation accuracy: a model that still trains at a peak (rule 1)
TIE = 0.05        # points (rule 3)
SEEDS = (0, 1, 2)
EPOCHS = 6        # the rise to the peak (in epoch 1) and five epochs of the anneal: enough to see a divergence
VAL = 10_000
SCALE_IMAGES = 1000
BLOCKS = ("conv0", "conv1", "trans1", "conv2", "conv3", "conv4", "conv5", "conv6")  # model.Net's, input to output
FOLDER = "lr_sweep"
CONTROL_SEEDS = tuple(range(10))  # the control on the test set: the experiment's ten seeds at rule 3's peak ...
RECIPE_SEEDS = tuple(range(5))    # ... and these at the recipe's peak, when rule 3 chose another


def recipes(peaks=None, **settings):
    """The sweep's recipes at `peaks` (default PEAKS), seed by seed, then peak, then model (an interrupted sweep leaves
    whole comparisons); `settings` (Recipe fields) for all."""
    return [Recipe(norm, l1=L1 if norm == "BN" else 0.0, lr=peak, **{"epochs": EPOCHS, "val": VAL, **settings},
                   seed=seed)
            for seed in SEEDS for peak in peaks or PEAKS for norm in MODELS]


def run_name(recipe):
    """ "bn_l1_lr0.3": the run's file name stem (its files add _seed<S>)."""
    return f"{recipe.name}_lr{recipe.lr:g}"


def diverged(record):
    """Rule 2: its validation accuracy fell by stats.COLLAPSE points in one epoch, or its last loss is not finite."""
    return stats.diverged(record["history"]) or not math.isfinite(record["history"][-1]["test_loss"])


def planned_peaks(records):
    """PEAKS, and EXTRA_PEAK once rule 1 asks for it (it needs every model's seeds at the largest peak)."""
    top = PEAKS[-1]
    for norm in MODELS:
        runs = [r for recs in records.values() for r in recs if r["config"]["norm"] == norm
                and r["config"]["lr"] == top and len(r["history"]) >= r["config"]["epochs"]]
        if len(runs) == len(SEEDS) and np.mean([stats.final(r) for r in runs]) >= TRAINS:
            return PEAKS + (EXTRA_PEAK,)
    return PEAKS


def table(records):
    """{(norm, peak): {"label", "finals": {seed: final acc}, "diverged": [seeds], "never": [seeds], "std": {seed:
    block_std}}} of the finished runs; "never": the seeds that never learned (stats.never_learned)."""
    out = {}
    for recs in records.values():
        for r in recs:
            if len(r["history"]) < r["config"]["epochs"]:
                continue
            recipe = Recipe.from_config(r["config"])
            cell = out.setdefault((recipe.norm, recipe.lr), {"label": recipe.label, "finals": {}, "diverged": [],
                                                             "never": [], "std": {}})
            cell["finals"][recipe.seed] = stats.final(r)
            if diverged(r):
                cell["diverged"].append(recipe.seed)
            elif stats.never_learned(r["history"]):
                cell["never"].append(recipe.seed)
            if "block_std" in r:
                cell["std"][recipe.seed] = r["block_std"]
    return out


def trained(cell):
    """The seeds of a table cell that trained: neither diverged nor never learned."""
    return sorted(set(cell["finals"]) - set(cell["diverged"]) - set(cell["never"]))


def seeds_phrase(seeds):
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, sorted(seeds)))}"


def control_peak(records, norm=CONTROL):
    """Rule 3: (control `norm`'s peak, the peaks tied with it), or None while a planned peak of it is unfinished."""
    cells = table(records)
    peaks = planned_peaks(records)
    if any(len(cells.get((norm, p), {}).get("finals", {})) < len(SEEDS) for p in peaks):
        return None
    alive = {p: float(np.mean(list(cells[norm, p]["finals"].values()))) for p in peaks
             if not cells[norm, p]["diverged"]}
    if not alive:
        return None
    best = max(alive.values())
    tied = sorted(p for p, acc in alive.items() if acc >= best - TIE - 1e-9)
    return min(tied, key=lambda p: (abs(math.log(p / Recipe.lr)), -p)), tied


@torch.inference_mode()
def block_std(model, images):
    """{block: the standard deviation of its output over `images` (uint8 [N, 28, 28])}, in eval mode."""
    from augment import to_input
    outputs = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda m, i, o, name=name: outputs.__setitem__(name, o.float().std().item())) for name in BLOCKS]
    try:
        model.eval()(to_input(images))
    finally:
        for h in hooks:
            h.remove()
    return {name: outputs[name] for name in BLOCKS}


def add_block_std(records, data, out):
    """Write block_std into every finished run's results file that lacks it, from its weights file."""
    images = select(data, Recipe(val=VAL))[1][0][:SCALE_IMAGES]
    for name, recs in records.items():
        for r in recs:
            paths = run_paths(out, FOLDER, name, r["config"]["seed"])
            if "block_std" in r or len(r["history"]) < r["config"]["epochs"] or not os.path.exists(paths["weights"]):
                continue
            model, _ = load_weights(paths["weights"], sha256=r.get("weights_sha256"))
            r["block_std"] = block_std(model, images)
            write_json(paths["results"], r)


def control_recipes(peak, norm=CONTROL, **settings):
    """Control `norm`'s test runs: [its seeds CONTROL_SEEDS at `peak`], then [RECIPE_SEEDS at the recipe's peak] when
    `peak` is another; `settings` (Recipe fields) for all. One list per settings folder."""
    runs = [[Recipe(norm, lr=peak, seed=seed, **settings) for seed in CONTROL_SEEDS]]
    if peak != Recipe.lr:
        runs.append([Recipe(norm, seed=seed, **settings) for seed in RECIPE_SEEDS])
    return runs


def control_runs(results, norm=CONTROL):
    """(rule 3's peak, {seed: record} of control `norm`'s finished test runs at it) from RESULTS (the folder
    train.py writes), or None while rule 3 has not chosen."""
    folder = os.path.join(results, FOLDER)
    chosen = control_peak(load_records(folder), norm) if os.path.isdir(folder) else None
    if chosen is None:
        return None
    peak = chosen[0]
    where = os.path.join(results, settings_folder(Recipe(norm, lr=peak)))
    runs = load_records(where).get(Recipe(norm).name, []) if os.path.isdir(where) else []
    return peak, stats.finished(runs)


def run_sweep(data, *, device, out, jobs, fresh=False, progress=True, control=True, **overrides):
    """Train (or resume) what the rule asks for, then the block scales, then (`control`) the control's test runs at
    the peak rule 3 chose; returns the records under OUT/results/lr_sweep/. A quick look (`overrides` with other
    epochs than EPOCHS) gives the control's runs those epochs too."""
    folder = os.path.join(out, "results", FOLDER)
    for stage in (1, 2):
        records = load_records(folder) if os.path.isdir(folder) else {}
        peaks = planned_peaks(records) if stage == 2 else PEAKS
        if stage == 2 and peaks == PEAKS:
            break
        runs = recipes(peaks if stage == 1 else (EXTRA_PEAK,), **overrides)
        print(f"learning-rate sweep, stage {stage}: {len(runs)} runs")
        utils.run_experiments(runs, data, device=device, out=out, folder=FOLDER, jobs=jobs,
                              names=[run_name(r) for r in runs], progress=progress, fresh=fresh, log="sweep.json")
    records = load_records(folder)
    add_block_std(records, data, out)
    records = load_records(folder)
    for norm in CONTROLS if control else ():
        chosen = control_peak(records, norm)
        label = Recipe(norm).label
        if chosen is None:
            print(f"{label}: its test runs wait for rule 3 (an unfinished run of the sweep, or every peak diverged)")
            continue
        # on the test set (no val), with the recipe's epochs unless a quick look shortened the sweep's
        settings = {k: v for k, v in overrides.items() if k != "val" and (k != "epochs" or v != EPOCHS)}
        for runs in control_recipes(chosen[0], norm, **settings):
            print(f"{label} on the test set at peak {runs[0].lr:g}: {len(runs)} runs")
            utils.run_experiments(runs, data, device=device, out=out, jobs=jobs, progress=progress, fresh=fresh,
                                  log="control.json")
    return records


def sweep_table(results):
    """The sweep's main table: each model's mean final validation accuracy ± its 95% interval at each peak, with the
    runs that diverged; and rule 3's choice."""
    folder = os.path.join(results, FOLDER)
    records = load_records(folder) if os.path.isdir(folder) else {}
    cells = table(records)
    if not cells:
        return "(no runs in results/lr_sweep/ yet: `python -m studies.lr_sweep --out .`)"
    peaks = sorted({p for _, p in cells})
    rows = []
    for norm in MODELS:
        row = [next((c["label"] for (n, _), c in cells.items() if n == norm), norm)]
        for p in peaks:
            c = cells.get((norm, p))
            if c is None:
                row.append("")
                continue
            finals = [c["finals"][s] for s in sorted(c["finals"])]
            if len(trained(c)) == len(finals):
                mean, half = stats.mean_ci(finals)
                cell = f"{mean:.2f} ± {half:.2f}" if half == half else f"{mean:.2f}"
            else:  # an interval would mix runs that trained with runs that did not: each seed instead
                cell = (f"{finals[0]:.2f} (each seed)" if len(set(finals)) == 1
                        else "seeds: " + ", ".join(f"{a:.2f}" for a in finals))
            if len(c["finals"]) < len(SEEDS):
                cell += f" ({len(c['finals'])} of {len(SEEDS)} seeds)"
            for key, what in (("diverged", "diverged"), ("never", "never learned")):
                if c[key]:
                    cell += f"; {what}: {seeds_phrase(c[key])}"
            row.append(cell)
        rows.append(row)
    status = " ".join(
        f"Rule 3 chooses the peak {c[0]:g} for {Recipe(n).label} (tied: {', '.join(f'{p:g}' for p in c[1])})."
        if (c := control_peak(records, n)) else f"Rule 3 waits for every planned run of {Recipe(n).label}."
        for n in CONTROLS)
    return markdown(["model"] + [f"peak {p:g}" for p in peaks], rows) + (
        f"\n\nFinal (epoch {EPOCHS}) validation accuracy % (the last {VAL:,} training images), mean ± the half-width "
        f"of its 95% Student-t interval over seeds {', '.join(map(str, SEEDS))}. Diverged: rule 2; never learned: "
        f"below {stats.NOT_LEARNED:g}% in every epoch (a constant guess scores about 10%). A cell with such a run "
        f"lists each seed's final accuracy instead of an interval. {status}")


def geometric_mean(values):
    """The geometric mean of non-negative `values`: 0 if one is 0 (a dead block), nan if one is not finite."""
    x = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(x)):
        return math.nan
    return 0.0 if np.any(x == 0) else float(np.exp(np.mean(np.log(x))))


def scales_table(results):
    """Each model at each peak: every block's output scale at the end (block_std, the geometric mean over the seeds
    that trained, or over all when none did) and the gradient's norm while training (the median of the epochs'
    medians, and the largest in any step), over the same seeds."""
    folder = os.path.join(results, FOLDER)
    records = load_records(folder) if os.path.isdir(folder) else {}
    cells = table(records)
    runs = {}
    for recs in records.values():
        for r in recs:
            if len(r["history"]) >= r["config"]["epochs"] and "block_std" in r:
                recipe = Recipe.from_config(r["config"])
                runs.setdefault((recipe.norm, recipe.lr), {})[recipe.seed] = r
    if not runs:
        return "(no finished runs with their block scales in results/lr_sweep/ yet)"
    rows = []
    for norm, peak in sorted(runs, key=lambda k: (MODELS.index(k[0]), k[1])):
        by_seed = runs[norm, peak]
        seeds = [s for s in trained(cells[norm, peak]) if s in by_seed]
        shown = ", ".join(map(str, seeds)) if seeds else f"none trained ({', '.join(map(str, sorted(by_seed)))})"
        rs = [by_seed[s] for s in seeds or sorted(by_seed)]
        scale = [geometric_mean([r["block_std"][b] for r in rs]) for b in BLOCKS]
        medians = [float(np.median([e["grad_norm_median"] for e in r["history"]])) for r in rs]
        largest = float(np.max([e["grad_norm_max"] for r in rs for e in r["history"]]))  # nan if any step's is
        rows.append([cells[norm, peak]["label"], f"{peak:g}", shown]
                    + [f"{v:.3g}" if math.isfinite(v) else "not finite"
                       for v in scale + [float(np.median(medians)), largest]])
    return markdown(["model", "peak", "seeds"] + list(BLOCKS) + ["gradient norm, median", "gradient norm, largest"],
                    rows) + (
        f"\n\nBlock columns: the standard deviation of the block's output (model.Net's blocks, input to output; "
        f"conv0 to conv5 end in the norm, trans1 and conv6 in a convolution) over the first {SCALE_IMAGES:,} "
        f"validation images, of the evaluated model after epoch {EPOCHS}, in eval mode; the geometric mean over the "
        f"seeds that trained (the sweep's table), or over all seeds where none did. 0: every output of the block is "
        f"0 (its ReLUs are dead); not finite: the weights are not. Gradient norm: of the whole gradient in a "
        f"training step, over the same seeds: the median over the run's epochs of each epoch's median (the median "
        f"over the seeds), and the largest in any step of any of them.")


ZOOM = (97.5, 99.6)  # % validation accuracy: the right panel of static/lr_sweep.png
SCALE_PEAKS = (0.03, 0.1, 1.0)  # static/block_scales.png: the control's best peak, the recipe's and a large one


def plot(records):
    """static/lr_sweep.png: validation accuracy against the peak, one line per model; left every seed (x: diverged,
    hollow: never learned) and the mean, right the mean and 95% interval where every seed trained.
    static/block_scales.png: each block's output scale at SCALE_PEAKS, over the seeds that trained."""
    cells = table(records)
    fig = Figure(figsize=(12, 5), layout="constrained")
    every, zoom = fig.subplots(1, 2)
    for i, norm in enumerate(MODELS):
        points = sorted((p, c) for (n, p), c in cells.items() if n == norm)
        if not points:
            continue
        label = points[0][1]["label"]
        shift = 1.06 ** (i - 1.5)  # side by side on the log axis
        every.plot([p * shift for p, _ in points], [np.mean(list(c["finals"].values())) for _, c in points],
                   color=f"C{i}", label=label, alpha=0.7)
        for p, c in points:
            for seed, acc in c["finals"].items():
                style = ({"marker": "x", "s": 60} if seed in c["diverged"] else
                         {"marker": "o", "facecolors": "none", "s": 40} if seed in c["never"] else
                         {"marker": "o", "s": 20})
                every.scatter([p * shift], [acc], color=f"C{i}", zorder=3, **style)
        whole = [(p, stats.mean_ci(list(c["finals"].values()))) for p, c in points
                 if len(trained(c)) == len(c["finals"])]
        if whole:
            zoom.errorbar([p * shift for p, _ in whole], [m for _, (m, _) in whole],
                          yerr=[h if h == h else 0.0 for _, (_, h) in whole], marker="o", capsize=4,
                          color=f"C{i}", label=label)
    for ax in (every, zoom):
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate of the one-cycle schedule")
        ax.grid(alpha=0.3, which="both")
    every.set_ylabel(f"final validation accuracy % (epoch {EPOCHS})")
    every.set_ylim(0, 100)
    every.set_title("Every seed (x: diverged, hollow: never learned); line: the mean")
    zoom.set_ylim(*ZOOM)
    zoom.set_title("Mean and 95% interval, where every seed trained")
    zoom.legend(*every.get_legend_handles_labels(), loc="lower right")  # the left panel's corners hold runs
    scales = Figure(figsize=(13, 4.5), layout="constrained")
    axes = scales.subplots(1, len(SCALE_PEAKS), sharey=True)
    for ax, p in zip(axes, SCALE_PEAKS):
        for i, norm in enumerate(MODELS):
            c = cells.get((norm, p))
            seeds = [s for s in trained(c) if s in c["std"]] if c else []
            if not seeds:
                continue
            values = [geometric_mean([c["std"][s][b] for s in seeds]) for b in BLOCKS]
            label = c["label"] + ("" if len(seeds) == len(c["finals"]) else
                                  f" ({len(seeds)} of {len(c['finals'])} seeds trained)")
            ax.plot(range(len(BLOCKS)), [v if v > 0 else np.nan for v in values], marker="o", color=f"C{i}",
                    label=label)
        missing = [cells[n, p]["label"] for n in MODELS if (n, p) in cells and not trained(cells[n, p])]
        ax.set_title(f"peak {p:g}" + (f" ({', '.join(missing)}: no seed trained)" if missing else ""))
        ax.set_xticks(range(len(BLOCKS)), BLOCKS, rotation=45)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        if ax.lines:
            ax.legend(fontsize="small")
    axes[0].set_ylabel(f"std of the block's output\n({SCALE_IMAGES:,} validation images; geometric mean over seeds)")
    return fig, scales


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_run_arguments(p)
    cli.add_quick_look_arguments(p, EPOCHS)
    p.add_argument("--sweep-only", action="store_true",
                   help="train the sweep only, not the control's test runs at the peak rule 3 chose")
    return cli.finish_run_arguments(p.parse_args(argv))


def main(argv=None):
    args = parse_args(argv)
    records = cli.run_quick_lookable(args, parse_args([]), "studies.lr_sweep",
                                     functools.partial(run_sweep, control=not args.sweep_only))
    print()
    print(sweep_table(os.path.join(args.out, "results")))
    if not args.no_figures:
        from figures import save_figure
        for fig, name in zip(plot(records), ("lr_sweep", "block_scales")):
            print("wrote " + save_figure(fig, os.path.join(args.out, "static", f"{name}.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
