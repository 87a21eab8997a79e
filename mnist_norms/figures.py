"""Beneath utils.py's figures: a model's most confident mistakes and their 5 x 2 grid, and writing figures."""
import os
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure

from mnist_norms.recipe import experiment_folder
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


METRICS = {  # history key -> (axis label, lower is better): the seeds figures' (studies/experiment.py)
    "test_loss": ("test loss (NLL, nats per image)", True),
    "test_acc": ("test accuracy (%)", False),
}


def save_figures(figures, out, recipes):
    """Write {name: figure} as OUT/static/<the recipes' settings folder>/<name>.png; returns the paths."""
    folder = os.path.join(out, "static", experiment_folder(recipes))
    return [save_figure(fig, os.path.join(folder, f"{name}.png")) for name, fig in figures.items()]


def save_figure(fig, path, dpi=120):
    """Write a figure to `path` (PNG), creating its folder."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
