"""figures.py: the misclassified grid, the loss and accuracy curves and the seeds figure."""

import pytest
import torch
from torch import nn

from conftest import synthetic
from mnist_norms.augment import MEAN, STD
from mnist_norms.figures import Mistake, misclassified, plot_curves, plot_misclassified, save_figure
from studies.experiment import plot_seeds


class TableModel(nn.Module):
    """Returns fixed log-probabilities per image; the image's first pixel holds its index."""

    def __init__(self, logp):
        super().__init__()
        self.register_buffer("logp", logp)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        idx = ((x[:, 0, 0, 0] * STD + MEAN) * 255).round().long()
        return self.logp[idx]


def test_misclassified_returns_the_most_confident_mistakes():
    n = 8
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    images[:, 0, 0] = torch.arange(n, dtype=torch.uint8)
    labels = torch.zeros(n, dtype=torch.long)
    conf = [0.9, 0.6, 0.95, 0.7, 0.99, 0.6, 0.5, 0.8]   # probability of the predicted class
    pred = [0, 3, 4, 0, 7, 2, 1, 0]                      # wrong for 1, 2, 4, 5, 6
    probs = torch.full((n, 10), 0.0)
    for i, (c, p) in enumerate(zip(conf, pred)):
        probs[i] = (1 - c) / 9
        probs[i, p] = c
    mistakes = misclassified(TableModel(probs.log()), (images, labels), n=4)
    assert [m.index for m in mistakes] == [4, 2, 1, 5]  # 0.99, 0.95, then the 0.6 tie in index order
    assert [m.pred for m in mistakes] == [7, 4, 3, 2] and all(m.true == 0 for m in mistakes)
    assert mistakes[0].confidence == pytest.approx(0.99)
    assert torch.equal(mistakes[0].image, images[4])
    assert len(misclassified(TableModel(probs.log()), (images, labels), n=10)) == 5


def test_figures_are_written_with_titles_labels_and_legend(tmp_path):
    history = lambda shift: [{"epoch": e, "test_loss": 1 / e + shift, "test_acc": 90 + e - shift,
                              "train_loss": 1.2 / e, "train_acc": 89 + e} for e in range(1, 6)]
    fig = plot_curves({"BN + L1": [history(0), history(0.1)], "GN": [history(0.3)]}, "test_acc", train=True)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch" and "(%)" in ax.get_ylabel() and ax.get_title()
    # Each run's best epoch (of the mean over seeds) is labelled: 95 and 94.9 at epoch 5 average 94.95.
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "BN + L1: best 94.95% at epoch 5, mean of 2 seeds", "BN + L1 train", "GN: best 94.70% at epoch 5", "GN train"]
    path = save_figure(fig, str(tmp_path / "static" / "acc.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    images = synthetic(10)[0]
    mistakes = [Mistake(i, images[i], 3, 5, 0.97) for i in range(10)]
    fig = plot_misclassified(mistakes, "BN + L1: test accuracy 99.50%")
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 10 and titles[0] == "pred 3 (97%), true 5"
    assert fig._suptitle.get_text() == "BN + L1: test accuracy 99.50%"
    with pytest.raises(ValueError, match="metric must be one of"):
        plot_curves({}, "accuracy")


def test_curves_leave_an_early_epoch_far_below_the_rest_off_the_scale_and_say_so():
    # An averaged model's epoch 1 (11%, then 46%) would squeeze epochs 3 to 20 (98.0 to 99.6%) into a line.
    accs = [11.35, 46.11, 98.0] + [99.0 + 0.6 * e / 20 for e in range(4, 21)]
    history = [{"epoch": e, "test_acc": a, "test_loss": 0.1} for e, a in enumerate(accs, 1)]
    steady = [{"epoch": e, "test_acc": 99.0, "test_loss": 0.1} for e in range(1, 21)]
    ax = plot_curves({"BN + L1": [history], "LN": [steady]}, "test_acc").axes[0]
    bottom, top = ax.get_ylim()
    assert 97.8 < bottom < 98.0 and 99.6 < top < 99.8
    (note,) = [t.get_text() for t in ax.texts if t.get_text().startswith("off the scale")]
    assert note.endswith("BN + L1, epochs 1, 2: 11.35%, 46.11%")
    # Curves without such an epoch keep matplotlib's own limits, and no note.
    ax = plot_curves({"LN": [steady], "GN": [history[2:]]}, "test_acc").axes[0]
    assert not [t for t in ax.texts if t.get_text().startswith("off the scale")]


def test_seeds_figure_shows_every_seed_and_the_mean_with_its_interval():
    panels = {"norms": {"BN + L1": {0: 99.5, 1: 99.6, 2: 99.7}, "LN": {0: 99.4}},
              "groups": {"2 groups": {0: 99.5, 1: 99.5}}}
    fig = plot_seeds(panels)
    norms, groups = fig.axes
    assert norms.get_title() == "norms" and "accuracy" in norms.get_ylabel()
    assert [t.get_text() for t in norms.get_xticklabels()] == ["BN + L1\n(3 seeds)", "LN\n(1 seed)"]
    points = [c.get_offsets()[:, 1].tolist() for c in norms.collections if len(c.get_offsets())]
    assert [99.5, 99.6, 99.7] in [[round(v, 6) for v in p] for p in points]
    # The mean 99.6 with t(0.975, 2) * 0.1 / sqrt(3) = 0.248 written beside it; a lone seed has no interval.
    labels = [t.get_text() for t in norms.texts]
    assert labels == ["99.60\n±0.25", "99.40"]


def test_seeds_figure_keeps_a_run_that_did_not_learn_off_the_scale():
    from matplotlib.collections import PathCollection

    panels = {"groups": {"2 groups": {0: 99.5, 1: 99.6}, "10 groups": {0: 11.35, 1: 11.35}}}
    (ax,) = plot_seeds(panels).axes
    bottom, top = ax.get_ylim()
    assert 98.5 < bottom < 98.91 and 100.19 < top < 100.5  # scaled to the run that learned, with its interval
    assert [t.get_text() for t in ax.texts] == ["99.55\n±0.64", "mean 11.35\n(below the scale)"]
    marks = [c.get_offsets()[:, 1] for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
    assert all(bottom <= y <= top for m in marks for y in m)  # every seed drawn inside the axes
    assert sum(len(m) for m in marks) == 4
