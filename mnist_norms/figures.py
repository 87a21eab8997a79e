"""The figures the notebook and train.py draw: test loss and accuracy per epoch, and the most confident mistakes."""
import os
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mnist_norms.recipe import experiment_folder
from mnist_norms.recipe import label as label_of
from mnist_norms.training import predict


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


def save_figures(figures, out, recipes):
    """Write {name: figure} as OUT/static/<the recipes' settings folder>/<name>.png; returns the paths."""
    folder = os.path.join(out, "static", experiment_folder(recipes))
    return [save_figure(fig, os.path.join(folder, f"{name}.png")) for name, fig in figures.items()]


def save_figure(fig, path, dpi=120):
    """Write a figure to `path` (PNG), creating its folder."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
