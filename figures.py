"""The figures: test loss and accuracy per epoch, the most confident mistakes, and every seed with its interval."""
import os
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from recipe import experiment_folder, label as label_of
from training import predict


@dataclass
class Mistake:
    index: int          # position in the test set
    image: torch.Tensor  # uint8 [28, 28], on the CPU
    pred: int
    true: int
    confidence: float   # the model's probability for `pred`, in [0, 1]


def misclassified(model, data, n=10):
    """The n test images the model gets wrong with the highest confidence in its wrong answer
    (most confident mistakes first; ties by test-set index). Fewer if it makes fewer mistakes."""
    images, labels = data
    prob, pred = predict(model, images).exp().max(1)
    labels = labels.to(pred.device)
    wrong = (pred != labels).nonzero().flatten()
    # A stable sort on -confidence keeps test-set order among equal confidences.
    top = wrong[torch.sort(-prob[wrong], stable=True).indices[:n]].cpu()
    return [Mistake(int(i), images[i].cpu(), int(pred[i]), int(labels[i]), float(prob[i])) for i in top]


def plot_misclassified(mistakes, title):
    """A 5 x 2 grid of (up to 10) mistakes, each labelled "pred 3 (97%), true 5"."""
    fig = Figure(figsize=(4, 9.5), layout="constrained")
    axes = fig.subplots(5, 2)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m in zip(axes.flat, mistakes):
        ax.imshow(m.image.numpy(), cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(f"pred {m.pred} ({100 * m.confidence:.0f}%), true {m.true}", fontsize=11)
    fig.suptitle(title, fontsize=12)
    return fig


METRICS = {  # history key -> (axis label, lower is better)
    "test_loss": ("test loss (NLL, nats per image)", True),
    "test_acc": ("test accuracy (%)", False),
}


def plot_curves(runs, metric="test_acc", *, title=None, train=False):
    """One figure of `metric` over epochs for several runs.

    runs maps a label to a list of histories (one per seed): the mean is drawn, with the min-max
    band over seeds when there are several. Each run's best epoch (of the mean) is marked with a
    star, and its value and epoch are given in the legend. train=True adds the train curve, dashed.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    ylabel, lower = METRICS[metric]
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for label, histories in runs.items():
        epochs = [r["epoch"] for r in histories[0]]
        values = np.array([[r[metric] for r in h] for h in histories])  # [seeds, epochs]
        mean = values.mean(0)
        best = int(np.argmin(mean) if lower else np.argmax(mean))
        value = f"{mean[best]:.4f}" if lower else f"{mean[best]:.2f}%"
        seeds = f", mean of {len(histories)} seeds" if len(histories) > 1 else ""
        (line,) = ax.plot(epochs, mean, marker="o", markersize=3,
                          label=f"{label}: best {value} at epoch {epochs[best]}{seeds}")
        if len(histories) > 1:
            ax.fill_between(epochs, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
        if train:
            train_values = np.array([[r[metric.replace("test", "train")] for r in h] for h in histories])
            ax.plot(epochs, train_values.mean(0), linestyle="--", color=line.get_color(), label=f"{label} train")
        ax.plot(epochs[best], mean[best], marker="*", markersize=15, color=line.get_color(), markeredgecolor="k",
                zorder=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(y=0.08)
    _keep_early_epochs_off_scale(ax, runs, metric, "%" if not lower else "")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    name = ylabel.split(" (")[0]
    ax.set_title(title or f"{name[0].upper() + name[1:]} per epoch (★ best epoch"
                          f"{'; band: min to max over seeds' if any(len(h) > 1 for h in runs.values()) else ''})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right" if lower else "lower right")
    return fig


def _keep_early_epochs_off_scale(ax, runs, metric, unit, far=20.0):
    """Early epochs far from the rest (an averaged model's first epochs still hold much of its random start) would
    flatten every later epoch into a line. So the y-axis spans the epochs after the first quarter, and an epoch more
    than `far` times their range beyond them is left off the scale: a triangle on the edge, and a note that gives its
    value (each run's mean over seeds)."""
    means = {label: np.array([[r[metric] for r in h] for h in hs]).mean(0) for label, hs in runs.items()}
    n = min(len(m) for m in means.values())
    if n < 4:
        return
    later = np.concatenate([m[n // 4:] for m in means.values()])
    lo, hi = later.min(), later.max()
    span = max(hi - lo, 1e-12)
    off = {label: [i for i in range(n // 4) if not lo - far * span <= m[i] <= hi + far * span]
           for label, m in means.items()}
    if not any(off.values()):
        return
    kept = np.concatenate([np.delete(m, off[label]) for label, m in means.items()])
    pad = 0.05 * (kept.max() - kept.min() or span)
    bottom, top = kept.min() - pad, kept.max() + pad
    ax.set_ylim(bottom, top)
    notes = []
    for i, (label, m) in enumerate(means.items()):
        epochs = [runs[label][0][j]["epoch"] for j in off[label]]
        for j, epoch in zip(off[label], epochs):
            below = m[j] < bottom
            ax.plot(epoch, bottom if below else top, marker="v" if below else "^", markersize=9, color=f"C{i}",
                    clip_on=False, zorder=4)
        if epochs:
            notes.append(f"{label}, epoch{'s' if len(epochs) > 1 else ''} {', '.join(map(str, epochs))}: "
                         + ", ".join(f"{m[j]:.4g}{unit}" for j in off[label]))
    ax.text(0.3, 0.6, "off the scale (▲▼):\n" + "\n".join(notes), transform=ax.transAxes, fontsize=8, va="center")


def experiment_figures(records, models, test):
    """The figures of an experiment, by file name (without .png): graph_losses and graph_accuracies
    (every run, mean over seeds) and misclassified_<run> (the first seed's model on `test`)."""
    runs = {label_of(recs[0]): [r["history"] for r in recs] for recs in records.values()}
    figures = {"graph_losses": plot_curves(runs, "test_loss"), "graph_accuracies": plot_curves(runs, "test_acc")}
    for name, model in models.items():  # runs without a model (weights not kept) have no grid
        # misclassified_bn_l1 whatever the precision, so that the README and notebook name one file
        key = f"misclassified_{name.removesuffix('_bf16')}"
        key = key if key not in figures else f"misclassified_{name}"
        first = records[name][0]
        title = (f"{label_of(first)}, seed {first['config']['seed']}: test accuracy "
                 f"{first['history'][-1]['test_acc']:.2f}%\nits most confident mistakes")
        figures[key] = plot_misclassified(misclassified(model, test), title)
    return figures


def plot_seeds(panels, *, ylabel="final test accuracy (%)", off_scale=5.0):
    """Per-seed values as points, with each run's mean and 95% interval (stats.mean_ci) beside them.

    panels maps a panel title to {run label: {seed: value}}; one panel per title, side by side. Values more than
    `off_scale` below the median of all values (a run that did not learn) would squash the rest into one line:
    they are drawn as downward triangles on the bottom edge instead, with the run's mean written above them.
    """
    import stats  # only for this figure: the rest of utils runs without scipy

    every = [v for runs in panels.values() for by_seed in runs.values() for v in by_seed.values()]
    floor = float(np.median(every)) - off_scale
    cis = {(title, label): stats.mean_ci(list(by_seed.values()))  # (mean, half-width) of each run
           for title, runs in panels.items() for label, by_seed in runs.items()}
    shown = [v for v in every if v >= floor]  # ... and the intervals of the runs on the scale fit inside it too
    shown += [m + sign * h for m, h in cis.values() if m >= floor and h == h for sign in (-1, 1)]
    pad = 0.08 * (max(shown) - min(shown)) or 0.05
    bottom, top = min(shown) - 3 * pad, max(shown) + 2 * pad
    fig = Figure(figsize=(4.5 * len(panels) + 1, 4.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, (title, runs) in zip(axes, panels.items()):
        for i, (label, by_seed) in enumerate(runs.items()):
            values = np.array(list(by_seed.values()), dtype=float)
            xs = i - 0.12 + 0.5 * (np.linspace(-0.18, 0.18, len(values)) if len(values) > 1 else np.zeros(1))
            low = values < floor
            ax.scatter(xs[~low], values[~low], s=18, alpha=0.7, color=f"C{i}", zorder=2)
            mean, half = cis[title, label]
            if low.any():
                ax.scatter(xs[low], np.full(low.sum(), bottom + pad), marker="v", s=30, color=f"C{i}", zorder=2)
            if mean < floor:
                ax.annotate(f"mean {mean:.2f}\n(below the scale)", (i - 0.12, bottom + 1.8 * pad), ha="center",
                            va="bottom", fontsize=8)
                continue
            ax.errorbar(i + 0.18, mean, yerr=None if half != half else half, fmt="D", color=f"C{i}",
                        markeredgecolor="k", capsize=5, zorder=3)
            ax.annotate(f"{mean:.2f}" + (f"\n±{half:.2f}" if half == half else ""), (i + 0.26, mean),
                        va="center", fontsize=8)
        ax.set_xticks(range(len(runs)), [f"{label}\n({len(v)} seed{'s' if len(v) > 1 else ''})" for label, v in runs.items()], fontsize=9)
        ax.set_xlim(-0.6, len(runs) - 0.3)
        ax.set_ylim(bottom, top)
        ax.set_title(title, fontsize=11)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(ylabel)
    below = "; triangles: seeds below the scale" if min(every) < floor else ""
    fig.suptitle(f"Each seed (dots{below}); mean and 95% Student-t interval (diamond, bar)", fontsize=11)
    return fig


def plot_seed_curves(panels, target, *, key="test_acc", from_epoch=None, below=1.0):
    """Every seed's `key` per epoch, one thin line each, with a dashed line at `target`: the spread of the curves
    that a mean hides. panels maps a panel title to {seed: history}; one panel per title, side by side, sharing
    the y-axis, which starts `below` points under the target (earlier, lower epochs leave the bottom edge).
    from_epoch, if given, shades the epochs from it on."""
    fig = Figure(figsize=(4.2 * len(panels) + 1, 4.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    top = max(e[key] for runs in panels.values() for h in runs.values() for e in h)
    for i, (ax, (title, runs)) in enumerate(zip(axes, panels.items())):
        for h in runs.values():
            ax.plot([e["epoch"] for e in h], [e[key] for e in h], color=f"C{i}", alpha=0.6, linewidth=1)
        last = max(e["epoch"] for h in runs.values() for e in h)
        if from_epoch is not None:
            ax.axvspan(from_epoch, last, color="0.9", zorder=0)
        ax.axhline(target, color="k", linestyle="--", linewidth=1)
        ax.annotate(f"{target}%", (1, target), xytext=(2, 2), textcoords="offset points", fontsize=8)
        ax.set_xlim(1, last)
        ax.set_ylim(target - below, top + 0.1 * below)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(METRICS[key][0])
    shade = f"; shaded: epochs {from_epoch} on" if from_epoch is not None else ""
    fig.suptitle(f"Each seed's curve (one line per seed; dashed: {target}%{shade})", fontsize=11)
    return fig


def save_figures(figures, out, recipes):
    """Write {name: figure} as OUT/static/<the recipes' settings folder>/<name>.png; returns the paths."""
    folder = os.path.join(out, "static", experiment_folder(recipes))
    return [save_figure(fig, os.path.join(folder, f"{name}.png")) for name, fig in figures.items()]


def save_figure(fig, path, dpi=120):
    """Write a figure to `path` (PNG), creating its folder."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def plot_shift(rows, examples, *, title="Test accuracy (%) on corrupted test images, mean over seeds"):
    """A heatmap of accuracy per model (rows: {label: {set name: accuracy}}) and test set (columns, in the order of
    `examples`), under a row of one test image as each set shows it (examples: {set name: uint8 [28, 28]})."""
    names = list(examples)
    fig = Figure(figsize=(0.42 * len(names) + 2.2, 1.2 + 0.42 * len(rows)), layout="constrained")
    grid = fig.add_gridspec(2, len(names), height_ratios=[1, 0.42 * len(rows)])
    for i, name in enumerate(names):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(examples[name].numpy(), cmap="gray_r", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(grid[1, :])
    values = np.array([[row.get(name, np.nan) for name in names] for row in rows.values()])
    ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for (r, c), v in np.ndenumerate(values):
        if v == v:
            ax.text(c, r, f"{v:.0f}" if v < 99.5 else f"{v:.1f}", ha="center", va="center", fontsize=6.5,
                    color="black" if 25 < v < 90 else "white")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=9)
    fig.suptitle(title, fontsize=11)
    return fig
