"""Graphs 1 and 2 (utils.plot_graph), the misclassified grid and the seeds figure."""

import pytest
import torch
from torch import nn

import utils
from conftest import synthetic
from mnist_norms.augment import MEAN, STD
from mnist_norms.figures import Mistake, misclassified, plot_misclassified, save_figure
from studies.seed_figures import plot_seeds


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


def test_graphs_show_each_runs_first_seed_with_the_target_line_a_tick_per_epoch_and_what_they_show(tmp_path):
    history = lambda shift: [{"epoch": e, "test_loss": 1 / e + shift, "test_acc": 98 + e / 4 - shift}
                             for e in range(1, 9)]
    records = {"bn_l1": [{"config": {"norm": "BN", "l1": 1e-5, "seed": 0}, "history": history(0)},
                         {"config": {"norm": "BN", "l1": 1e-5, "seed": 1}, "history": history(5)}],
               "gn": [{"config": {"norm": "GN", "seed": 0}, "history": history(0.1)}]}
    ax = utils.plot_graph(records, "test_acc").axes[0]
    assert ax.get_xlabel() == "epoch" and "(%)" in ax.get_ylabel()
    assert "Graph 2" in ax.get_title() and "seed 0" in ax.get_title() and "averaged weights" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "BN + L1: 100.00% at the end", "GN: 99.90% at the end", "99.4%, the course's target"]
    (target,) = [line for line in ax.get_lines() if line.get_label().startswith("99.4%")]
    assert list(target.get_ydata()) == [99.4, 99.4]
    assert [int(t) for t in ax.get_xticks() if 1 <= t <= 8] == list(range(1, 9))  # one tick per epoch
    ax = utils.plot_graph(records, "test_loss").axes[0]
    assert "Graph 1" in ax.get_title() and not [line for line in ax.get_lines() if "99.4" in line.get_label()]
    path = save_figure(ax.figure, str(tmp_path / "static" / "loss.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    images = synthetic(10)[0]
    mistakes = [Mistake(i, images[i], 3, 5, 0.97) for i in range(10)]
    fig = plot_misclassified(mistakes, "BN + L1: test accuracy 99.50%")
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 10 and titles[0] == "pred 3 (97%), true 5"
    assert fig._suptitle.get_text() == "BN + L1: test accuracy 99.50%"


def test_graph_2_keeps_a_run_far_below_the_target_on_the_scale():
    # A one-epoch try on 2,000 images ends near 60%: the axis reaches down to it instead of hiding it.
    records = {"ln": [{"config": {"norm": "LN", "seed": 0}, "history": [{"epoch": 1, "test_acc": 55.79}]}]}
    bottom, top = utils.plot_graph(records, "test_acc").axes[0].get_ylim()
    assert bottom < 55.79 and top > 99.4


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
