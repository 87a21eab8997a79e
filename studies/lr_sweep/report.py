"""The learning-rate sweep's tables and figures, from its results files (studies/lr_sweep): validation accuracy by
model and peak, each block's output scale at initialization and at the end, and how often each model failed."""
import math
import os

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mnist_norms.recipe import Recipe
from mnist_norms.records import load_records
from model import CONTROLS, MODELS
from studies import stats
from studies.lr_sweep import (
    BLOCKS,
    EPOCHS,
    FOLDER,
    INIT_FILE,
    PEAKS,
    SCALE_IMAGES,
    SEEDS,
    VAL,
    control_peak,
    recipes,
    seeds_phrase,
    table,
    trained,
)
from studies.tables import interval, load_json, markdown


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
                cell = interval(finals)
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
        f"seeds that trained (the sweep's table), or over all seeds where none did, so one seed decides a cell that "
        f"reads 0 (every output of that seed's block is 0: its ReLUs are dead) or not finite (its weights are not). "
        f"Gradient norm: of the whole gradient in a "
        f"training step, over the same seeds: the median over the run's epochs of each epoch's median (the median "
        f"over the seeds), and the largest in any step of any of them.")


def init_table(results):
    """Each model's block scales as it starts (lr_sweep.INIT_FILE): the geometric mean over the sweep's seeds."""
    data = load_json(os.path.join(results, FOLDER), INIT_FILE)
    if data is None:
        return f"(no results/{FOLDER}/{INIT_FILE} yet: `python -m studies.lr_sweep --out .`)"
    rows, labels = [], {r.norm: r.label for r in recipes(PEAKS[:1])}
    for norm in MODELS:
        by_seed = data["block_std"].get(norm)
        if by_seed:
            rows.append([labels[norm], ", ".join(sorted(by_seed))]
                        + [f"{geometric_mean([s[b] for s in by_seed.values()]):.2g}" for b in BLOCKS])
    return markdown(["model", "seeds"] + list(BLOCKS), rows) + (
        f"\n\nThe standard deviation of each block's output as each seed's run starts (before its first step; the "
        f"second control after its scaling), over {data['images']}, in train mode (BN normalizes by the batch's "
        f"statistics, as in a training step); the geometric mean over the seeds. From results/{FOLDER}/{INIT_FILE}.")


def failure_cell(histories):
    """"1 of 3 (1% to 91%); not finite: seed 0" for {seed: history}: how many failed (stats.failure), the failure
    rate's 95% Clopper-Pearson interval, and which seeds failed how."""
    how = {seed: stats.failure(h) for seed, h in sorted(histories.items())}
    failed = [s for s, f in how.items() if f]
    _, low, high = stats.rate_ci(len(failed), len(how))
    pct = lambda x: f"{100 * x:.0f}%" if x == 0 or x >= 0.01 else f"{100 * x:.1g}%"  # 0.3%, not 0%, for 1 in 10
    return f"{len(failed)} of {len(how)} ({pct(low)} to {pct(high)})" + "".join(
        f"; {f}: {seeds_phrase([s for s in failed if how[s] == f])}" for f in stats.FAILURES if f in how.values())


def failures_table(results):
    """How often each model failed (stats.failure), per peak: in the sweep (validation split, its epochs and seeds) and
    on the test set (the recipe's epochs: the norms at the recipe's peak, each control at its rule-3 peak and at the
    recipe's), with the failure rate's 95% Clopper-Pearson interval."""
    from studies.experiment import every_run  # the test runs, each control at both of its peaks
    records = load_records(os.path.join(results, FOLDER)) if os.path.isdir(os.path.join(results, FOLDER)) else {}
    cells = table(records)
    if not cells:
        return "(no runs in results/lr_sweep/ yet: `python -m studies.lr_sweep --out .`)"
    histories = {}
    for recs in records.values():
        for r in stats.finished(recs).values():
            histories.setdefault((r["config"]["norm"], r["config"]["lr"]), {})[r["config"]["seed"]] = r["history"]
    peaks = sorted({p for _, p in cells})
    sweep = markdown(["model"] + [f"peak {p:g}" for p in peaks],
                     [[next(c["label"] for (m, _), c in cells.items() if m == n)]
                      + [failure_cell(histories[n, p]) if (n, p) in cells else "" for p in peaks]
                      for n in MODELS if any((n, p) in cells for p in peaks)])
    test, _ = every_run(results)
    rows = []
    for name in ["bn_l1", "ln", "gn"] + [n for n in test if n.split("_lr")[0] in [Recipe(c).name for c in CONTROLS]]:
        done = stats.finished(test.get(name, []))
        if done:
            recipe = Recipe.from_config(next(iter(done.values()))["config"])
            rows.append([recipe.label, f"{recipe.lr:g}",
                         failure_cell({s: r["history"] for s, r in done.items()})])
    return (f"In the sweep (validation split, {EPOCHS} epochs, seeds {', '.join(map(str, SEEDS))}):\n\n{sweep}\n\n"
            f"On the test set ({Recipe.epochs} epochs):\n\n" + markdown(["model", "peak", "failed"], rows) +
            f"\n\nFailed runs of all, with the failure rate's exact (Clopper-Pearson) 95% interval, and how each "
            f"failed: not finite (a training or evaluated loss not finite in some epoch), collapsed (the training or "
            f"the evaluated accuracy fell by {stats.COLLAPSE:g} points or more from one epoch to the next), never "
            f"learned (evaluated accuracy below {stats.NOT_LEARNED:g}% in every epoch). Rule 2 of the sweep counts "
            f"only a fall of the evaluated accuracy or a last loss that is not finite.")


ZOOM = (97.5, 99.6)  # % validation accuracy: the right panel of static/lr_sweep.png
# static/block_scales.png: the first control's best peak, the recipe's, and two larger ones
SCALE_PEAKS = (0.03, 0.1, 0.3, 1.0)


def plot(records, init=None):
    """static/lr_sweep.png: validation accuracy against the peak, one line per model; left every seed (x: diverged,
    hollow: never learned; seeds side by side) and the median seed, right the mean and 95% interval of the seeds that
    trained (a mean off ZOOM's scale is a triangle on the edge with its value; an interval past an edge ends in a
    triangle there, its half-width written beside it); the legend below both. static/block_scales.png: each block's
    output scale at the start (`init`: INIT_FILE's block_std) and at the end at SCALE_PEAKS."""
    cells = table(records)
    fig = Figure(figsize=(10, 6.4), layout="constrained")
    every, zoom = fig.subplots(1, 2)
    handles = []
    last = max((p for (_, p), c in cells.items() if trained(c)), default=None)  # the right panel's last peak
    for i, norm in enumerate(MODELS):
        points = sorted((p, c) for (n, p), c in cells.items() if n == norm)
        if not points:
            continue
        label = points[0][1]["label"]
        handles.append(Line2D([], [], color=f"C{i}", marker="o", label=label))
        shift = 1.09 ** (i - (len(MODELS) - 1) / 2)  # models side by side on the log axis ...
        every.plot([p * shift for p, _ in points], [np.median(list(c["finals"].values())) for _, c in points],
                   color=f"C{i}", label=label, alpha=0.6)
        for p, c in points:
            for seed, acc in c["finals"].items():
                style = ({"marker": "x", "s": 50} if seed in c["diverged"] else
                         {"marker": "o", "facecolors": "none", "s": 30} if seed in c["never"] else
                         {"marker": "o", "s": 16})
                # ... and seeds side by side within a model, so that equal accuracies stay three markers
                every.scatter([p * shift * 1.025 ** (seed - 1)], [acc], color=f"C{i}", zorder=3, **style)
        line = []  # the means on the scale, joined (a gap where one is off it)
        for p, c in points:
            ok = trained(c)
            if not ok:
                continue
            mean, half = stats.mean_ci([c["finals"][s] for s in ok])
            half = half if half == half else 0.0  # a lone seed has no interval
            whole = len(ok) == len(c["finals"])
            x, face = p * shift, f"C{i}" if whole else "white"
            notes = [] if whole else [f"{len(ok)} of {len(c['finals'])}"]
            if ZOOM[0] <= mean <= ZOOM[1]:
                low, high = min(half, mean - ZOOM[0]), min(half, ZOOM[1] - mean)  # the bar stops at the edges ...
                zoom.errorbar([x], [mean], yerr=[[low], [high]], marker="o", capsize=4, color=f"C{i}",
                              markerfacecolor=face)
                for edge, marker, cut in ((ZOOM[0], "v", low < half), (ZOOM[1], "^", high < half)):
                    if cut:  # ... where a triangle says it goes on
                        zoom.scatter([x], [edge], marker=marker, s=45, color=f"C{i}", clip_on=False, zorder=4)
                if low < half or high < half:
                    notes.append(f"±{half:.2f}")
                at, offset = mean, (7, -15)
            else:  # the mean itself is off the scale: a triangle on the edge, and the value
                at = ZOOM[0] if mean < ZOOM[0] else ZOOM[1]
                zoom.scatter([x], [at], marker="v" if mean < ZOOM[0] else "^", s=90, color=f"C{i}",
                             facecolors=face, edgecolors=f"C{i}", linewidths=1.5, clip_on=False, zorder=4)
                notes.insert(0, f"mean {mean:.2f}" + (f" ± {half:.2f}" if half else ""))
                offset = (7, 5) if mean < ZOOM[0] else (7, -17)
            line.append((x, mean if ZOOM[0] <= mean <= ZOOM[1] else np.nan))
            if notes:
                left = p == last  # the last peak's notes to the left of it, inside the panel
                zoom.annotate("; ".join(notes), (x, at), xytext=(-offset[0], offset[1]) if left else offset,
                              textcoords="offset points", ha="right" if left else "left", fontsize=11,
                              color=f"C{i}")
        zoom.plot(*zip(*line), color=f"C{i}", alpha=0.4, label=label) if line else None
    for ax in (every, zoom):
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate of the one-cycle schedule", fontsize=11)
        ax.tick_params(labelsize=10.5)
        ax.grid(alpha=0.3, which="both")
    every.set_ylabel(f"final validation accuracy % (epoch {EPOCHS})", fontsize=11)
    every.set_ylim(0, 100)
    every.set_title("Every seed (x: diverged, hollow: never learned);\nline: the median seed", fontsize=11.5)
    zoom.set_ylim(*ZOOM)
    zoom.set_title("Mean and 95% interval of the seeds that trained\n(hollow: not every seed trained; ▲▼: off the "
                   "scale)", fontsize=11.5)
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=11)
    return fig, scales_figure(cells, init)


def scales_figure(cells, init=None):
    """Each model's block scales at the start (`init`) and at the end at SCALE_PEAKS: the geometric mean over the
    seeds that trained (dashed: over every seed, where none trained). A dead block (0) sits on the bottom line."""
    panels = ([("at the start", {n: [geometric_mean([s[b] for s in init[n].values()]) for b in BLOCKS]
                                 for n in MODELS if n in init}, {})] if init else [])
    for p in SCALE_PEAKS:
        lines, none = {}, {}
        for norm in MODELS:
            c = cells.get((norm, p))
            if not c or not c["std"]:
                continue
            seeds = [s for s in trained(c) if s in c["std"]]
            (lines if seeds else none)[norm] = [geometric_mean([c["std"][s][b] for s in seeds or c["std"]])
                                                for b in BLOCKS]
        panels.append((f"after {EPOCHS} epochs at peak {p:g}", lines, none))
    positive = [v for _, lines, none in panels for vs in (*lines.values(), *none.values()) for v in vs
                if v > 0 and math.isfinite(v)]
    floor = min(positive) / 4 if positive else 1e-3
    # at most 3 panels a row (2 for 4 panels), so that the figure stays readable at a page's width (~900 px)
    ncols = 3 if len(panels) > 4 else min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    handles = {}  # the legend's: a model's line, then what dashed means
    fig = Figure(figsize=(3.3 * ncols + 0.9, 3.4 * nrows + (0.3 if nrows * ncols > len(panels) else 1.1)),
                 layout="constrained")
    grid = fig.add_gridspec(nrows, ncols)
    axes = []
    for k in range(len(panels)):
        axes.append(fig.add_subplot(grid[k // ncols, k % ncols], sharey=axes[0] if axes else None))
    for k, (ax, (title, lines, none)) in enumerate(zip(axes, panels)):
        for i, norm in enumerate(MODELS):
            for values, style in ((lines.get(norm), "-"), (none.get(norm), "--")):
                if values is None:
                    continue
                shown = [floor if v == 0 else v if math.isfinite(v) else np.nan for v in values]
                ax.plot(range(len(BLOCKS)), shown, style, marker="o", color=f"C{i}", markersize=5)
                handles.setdefault(recipes((1.0,))[MODELS.index(norm)].label,
                                   Line2D([], [], color=f"C{i}", marker="o", markersize=5))
        ax.axhline(floor, color="0.5", lw=0.8, ls=":")
        ax.set_title(title, fontsize=12)
        ax.set_xticks(range(len(BLOCKS)), BLOCKS, rotation=45, fontsize=11)
        ax.set_yscale("log")
        ax.tick_params(axis="y", labelsize=11, labelleft=k % ncols == 0)
        ax.grid(alpha=0.3, which="both")
        if k % ncols == 0:
            ax.set_ylabel(f"std of the block's output\n({SCALE_IMAGES:,} validation images;\ngeometric mean over "
                          f"seeds)", fontsize=11)
    axes[0].annotate("0: every ReLU of the block dead", (0, floor), xytext=(0, 3), textcoords="offset points",
                     fontsize=10, color="0.4")
    if any(none for _, _, none in panels):
        handles["dashed: no seed trained\n(the mean over every seed)"] = Line2D([], [], color="0.3", ls="--")
    if nrows * ncols > len(panels):  # the legend in the empty place at the end of the last row
        legend = axes[-1].legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.07, 0.5),
                                 fontsize=10.5, borderaxespad=0)
        legend.set_in_layout(False)
    else:
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=3, fontsize=10.5)
    return fig


