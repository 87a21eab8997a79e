"""The seeds figures' drawing: each seed's final accuracy with the mean and its interval (static/seeds.png), and each
seed's curve per epoch with the target line (static/seed_curves.png); studies/experiment.py gathers what they show."""

import textwrap

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mnist_norms.figures import METRICS
from studies import stats


def plot_seeds(panels, *, ylabel="final test accuracy (%)", off_scale=5.0):
    """Per-seed values as points, with each run's mean and 95% interval (stats.mean_ci) beside them.

    panels maps a panel title to {run label: {seed: value}}; one panel per title, one under another (a page's
    width holds a panel's runs with labels that stay readable), sharing the y-axis. Values more than
    `off_scale` below the median of all values (a run that did not learn) would squash the rest into one line:
    they are drawn as downward triangles on the bottom edge instead, with the run's mean written above them.
    """
    every = [v for runs in panels.values() for by_seed in runs.values() for v in by_seed.values()]
    floor = float(np.median(every)) - off_scale
    cis = {(title, run): stats.mean_ci(list(by_seed.values()))  # (mean, half-width) of each run
           for title, runs in panels.items() for run, by_seed in runs.items()}
    shown = [v for v in every if v >= floor]  # ... and the intervals of the runs on the scale fit inside it too
    shown += [m + sign * h for m, h in cis.values() if m >= floor and h == h for sign in (-1, 1)]
    pad = 0.08 * (max(shown) - min(shown)) or 0.05
    bottom, top = min(shown) - 3 * pad, max(shown) + 2 * pad
    widest = max(max(len(runs), 3) for runs in panels.values())  # a run at least 1.45 inches wide, so its label fits
    fig = Figure(figsize=(1.45 * widest + 1.2, 3.9 * len(panels) + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharey=True))
    for ax, (title, runs) in zip(axes, panels.items()):
        for i, (run, by_seed) in enumerate(runs.items()):
            values = np.array(list(by_seed.values()), dtype=float)
            xs = i - 0.12 + 0.5 * (np.linspace(-0.18, 0.18, len(values)) if len(values) > 1 else np.zeros(1))
            low = values < floor
            ax.scatter(xs[~low], values[~low], s=18, alpha=0.7, color=f"C{i}", zorder=2)
            mean, half = cis[title, run]
            if low.any():
                ax.scatter(xs[low], np.full(low.sum(), bottom + pad), marker="v", s=30, color=f"C{i}", zorder=2)
            if mean < floor:
                ax.annotate(f"mean {mean:.2f}\n(below the scale)", (i - 0.12, bottom + 1.8 * pad), ha="center",
                            va="bottom", fontsize=10.5)
                continue
            ax.errorbar(i + 0.18, mean, yerr=None if half != half else half, fmt="D", color=f"C{i}",
                        markeredgecolor="k", capsize=5, zorder=3)
            ax.annotate(f"{mean:.2f}" + (f"\n±{half:.2f}" if half == half else ""), (i + 0.26, mean),
                        va="center", fontsize=10.5)
        ax.set_xticks(range(len(runs)), [textwrap.fill(run, 16) + f"\n({len(v)} seed{'s' if len(v) > 1 else ''})"
                                         for run, v in runs.items()], fontsize=10.5)
        ax.tick_params(axis="y", labelsize=10.5)
        ax.set_xlim(-0.6, len(runs) - 0.3)
        ax.set_ylim(bottom, top)
        ax.set_title(title, fontsize=12)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylabel(ylabel, fontsize=11)
    below = "; triangles: seeds below the scale" if min(every) < floor else ""
    fig.suptitle(f"Each seed (dots{below}); mean and 95% Student-t interval (diamond, bar)", fontsize=12)
    return fig


def plot_seed_curves(panels, target, *, key="test_acc", from_epoch=None, below=1.0):
    """Every seed's `key` per epoch, one thin line each, with a dashed line at `target`: the spread of the curves
    that a mean hides. panels maps a panel title to {seed: history}; one panel per title, side by side, sharing
    the y-axis, which starts `below` points under the target. An epoch under that edge (a diverged one) is a
    triangle on the edge with its seed and value written above it. from_epoch, if given, shades the epochs from it
    on."""
    fig = Figure(figsize=(3.4 * len(panels) + 0.8, 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    top = max(e[key] for runs in panels.values() for h in runs.values() for e in h)
    bottom = target - below
    off_scale = False
    for i, (ax, (title, runs)) in enumerate(zip(axes, panels.items())):
        for h in runs.values():
            ax.plot([e["epoch"] for e in h], [e[key] for e in h], color=f"C{i}", alpha=0.6, linewidth=1)
        last = max(e["epoch"] for h in runs.values() for e in h)
        if from_epoch is not None:
            ax.axvspan(from_epoch, last, color="0.9", zorder=0)
        ax.axhline(target, color="k", linestyle="--", linewidth=1)
        ax.annotate(f"{target}%", (1, target), xytext=(2, 2), textcoords="offset points", fontsize=10)
        ax.set_xlim(1, last)
        ax.set_ylim(bottom, top + 0.1 * below)
        low = {}  # epoch -> [(seed, value)] of the epochs under the bottom edge
        for seed, h in runs.items():
            for e in h:
                if e[key] < bottom:
                    low.setdefault(e["epoch"], []).append((seed, e[key]))
        for epoch, points in sorted(low.items()):
            off_scale = True
            ax.scatter([epoch], [bottom], marker="v", s=70, color=f"C{i}", edgecolors="k", clip_on=False, zorder=4)
            left = epoch < (1 + last) / 2  # the note on the side of the marker with room for it
            ax.annotate("\n".join(f"seed {s}, epoch {epoch}: {v:.2f}%" for s, v in points), (epoch, bottom),
                        xytext=(8 if left else -8, 3), textcoords="offset points", ha="left" if left else "right",
                        va="bottom", fontsize=11, bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": f"C{i}",
                                                        "alpha": 0.85},
                        zorder=5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=10.5)
        ax.set_xlabel("epoch", fontsize=11)
        ax.set_title(title, fontsize=11)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(METRICS[key][0], fontsize=11)
    shade = f"; shaded: epochs {from_epoch} on" if from_epoch is not None else ""
    marks = "; ▼: an epoch below the axis" if off_scale else ""
    fig.suptitle(f"Each seed's curve (one line per seed; dashed: {target}%{shade}{marks})", fontsize=12)
    return fig
