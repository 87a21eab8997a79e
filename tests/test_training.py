"""Training, evaluation, the L1 term, per-epoch JSON, misclassified images, figures and the CLI."""
import json
import os
import subprocess
import sys

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

import train as train_cli
import utils
from conftest import ROOT, synthetic
from model import Net


def test_l1_penalty_is_the_sum_of_absolute_conv_weights():
    model = Net("BN")
    by_hand = sum(m.weight.abs().sum().item() for m in model.modules() if isinstance(m, nn.Conv2d))
    assert utils.l1_penalty(model).item() == pytest.approx(by_hand, rel=1e-6)


def one_step(l1):
    torch.manual_seed(0)
    model = Net("BN", dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    utils.train_epoch(model, synthetic(32), opt, batch_size=32, generator=torch.Generator().manual_seed(0),
                      l1=l1, progress=False)
    return model


def test_l1_adds_lr_times_l1_times_sign_to_conv_weights_only():
    # One plain SGD step (lr 1) on the same batch: the L1 term's gradient is l1 * sign(w).
    torch.manual_seed(0)
    start = Net("BN", dropout=0.0).state_dict()
    plain, with_l1 = one_step(0.0), one_step(0.01)
    for (name, p0), p1 in zip(plain.named_parameters(), with_l1.parameters()):
        expected = -0.01 * torch.sign(start[name]) if p0.ndim > 1 else torch.zeros_like(p0)
        assert torch.allclose(p1 - p0, expected, atol=1e-6), name


def test_a_few_epochs_on_a_small_subset_lower_the_loss():
    data, test = synthetic(512), synthetic(256, seed=1)
    torch.manual_seed(0)
    model = Net("GN")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    before, _ = utils.evaluate(model, test)
    g = torch.Generator().manual_seed(0)
    losses = [utils.train_epoch(model, data, opt, batch_size=64, generator=g, progress=False)[0] for _ in range(4)]
    after, acc = utils.evaluate(model, test)
    assert losses[-1] < losses[0] and after < before
    assert acc > 30  # chance is 10%


@pytest.mark.parametrize("norm", ["BN", "LN", "GN"])
def test_bf16_training_runs_the_convolutions_in_bfloat16_and_keeps_fp32_weights(norm):
    data = synthetic(256)
    torch.manual_seed(0)
    model = Net(norm)
    seen = []
    model.conv1[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    losses = [utils.train_epoch(model, data, opt, batch_size=64, generator=g, progress=False, precision="bf16")[0]
              for _ in range(3)]
    assert seen[0] == torch.bfloat16 and all(p.dtype == torch.float32 for p in model.parameters())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("settings,message", [
    (dict(precision="fp16"), r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"),
    (dict(norm="XN"), "norm must be one of BN, LN, GN"),
    (dict(groups=3), "groups must divide both 10 and 20"),
    (dict(epochs=0), "epochs must be an integer >= 1, got 0"),
    (dict(lr=0.0), "lr must be a finite number > 0, got 0.0"),
    (dict(l1=float("nan")), "l1 must be a finite number >= 0, got nan"),
    (dict(limit=0), "limit must be None or an integer >= 1, got 0"),
    (dict(translate=1.0), r"translate must be a number in \[0, 1\), got 1.0"),
    (dict(scale=-0.1), r"scale must be a number in \[0, 1\), got -0.1"),
    (dict(shear=90), r"shear must be a number in \[0, 90\), got 90"),
])
def test_bad_recipe_is_rejected_naming_what_is_accepted(settings, message):
    with pytest.raises(ValueError, match=message):
        utils.Recipe(**settings)


def test_making_a_recipe_draws_no_random_numbers():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    utils.Recipe("GN", groups=5)
    assert torch.equal(torch.rand(3), expected) and utils.params(utils.Recipe("LN")) == 7750


def test_recipe_names_and_labels_come_from_its_settings():
    assert [(r.name, r.label) for r in utils.experiment()] == [("bn_l1", "BN + L1"), ("ln", "LN"), ("gn", "GN")]
    assert utils.experiment()[0].l1 == utils.L1 and utils.Recipe("gn", groups=5).name == "gn_g5"
    assert utils.Recipe("LN", precision="bf16").label == "LN (bf16)"
    assert utils.Recipe("GN", groups=5).label == "GN (5 groups)"
    # A config written before degrees, val and limit were recorded reads back with its split sizes.
    old = {"norm": "GN", "groups": 2, "lr": 0.2, "train_images": 50000, "eval_images": 10000,
           "eval_split": "validation: the last 10000 training images", "torch": "x"}
    # ... and with the augmentation such runs had (rotation only, ±7 degrees), whatever the defaults are now.
    assert utils.Recipe.from_config(old) == utils.Recipe("GN", lr=0.2, val=10000, degrees=7.0, translate=0.0,
                                                         scale=0.0, shear=0.0)
    assert utils.Recipe.from_config({**old, "train_images": 512}).limit == 512


TRAIN, TEST = synthetic(256), synthetic(64, seed=1)
SMALL = utils.Recipe("BN", l1=1e-5, epochs=2, batch_size=64)


def small_run(tmp_path, recipe=SMALL, **kw):
    return utils.run(recipe, (TRAIN, TEST), device=torch.device("cpu"), out=str(tmp_path), progress=False, **kw)


def stop_at_evaluation(monkeypatch, n):
    """Make utils.evaluate raise KeyboardInterrupt at its n-th call (an interrupted run); returns the real one."""
    real, calls = utils.evaluate, []

    def evaluate_then_stop(*args, **kw):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kw)
    monkeypatch.setattr(utils, "evaluate", evaluate_then_stop)
    return real


def without_time(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_one_seed_pairs_the_norms_same_weights_batches_augmentation_and_dropout_masks(tmp_path, monkeypatch):
    # What every norm's run sees, recorded through hooks on the model run() builds: the convolution weights it
    # starts from, the input of every step (order and augmentation), and the random-number state at every
    # dropout call (dropout draws its mask from it, with the same shape and probability in every norm).
    seen = {}

    def watched(norm, **kw):
        model = Net(norm, **kw)
        if next(model.parameters()).is_meta:  # a Recipe checking its settings
            return model
        log = seen.setdefault((norm, kw["groups"]), {"conv": [p.detach().clone() for p in model.parameters()
                                                            if p.ndim > 1], "x": [], "rng": []})
        model.register_forward_pre_hook(lambda m, args: log["x"].append(args[0].clone()) if m.training else None)
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.register_forward_pre_hook(lambda m, args: log["rng"].append(torch.get_rng_state()) if m.training else None)
        return model

    monkeypatch.setattr(utils, "Net", watched)
    for recipe in utils.experiment(seeds=(3,), epochs=2, batch_size=64, translate=0.1, scale=0.1, shear=5.0) \
            + [utils.Recipe("GN", groups=g, epochs=2, batch_size=64, seed=3, translate=0.1, scale=0.1, shear=5.0)
               for g in (1, 5)]:
        utils.run(recipe, (TRAIN, TEST), device=torch.device("cpu"), out=str(tmp_path / recipe.name),
                  progress=False)
    (first, a), *others = seen.items()
    assert len(a["x"]) == 2 * 4 and len(a["rng"]) == 6 * len(a["x"])  # 4 steps per epoch, 6 dropout layers
    for key, b in others:
        assert all(torch.equal(p, q) for p, q in zip(a["conv"], b["conv"])), key
        assert all(torch.equal(p, q) for p, q in zip(a["x"], b["x"])), key
        assert len(b["rng"]) == len(a["rng"]) and all(torch.equal(p, q) for p, q in zip(a["rng"], b["rng"])), key


def test_gn_with_one_group_is_ln():
    torch.manual_seed(0)
    ln = Net("LN")
    torch.manual_seed(0)
    gn = Net("GN", groups=1)
    x = torch.randn(4, 1, 28, 28)
    assert all(torch.equal(p, q) for p, q in zip(ln.state_dict().values(), gn.state_dict().values()))
    assert torch.equal(ln.eval()(x), gn.eval()(x))


def test_same_seed_same_history_on_cpu(tmp_path):
    _, a = small_run(tmp_path / "a")
    _, b = small_run(tmp_path / "b")
    _, c = small_run(tmp_path / "c", replace(SMALL, seed=1))
    assert without_time(a["history"]) == without_time(b["history"])
    assert without_time(a["history"]) != without_time(c["history"])


def test_json_and_weights_are_written_and_a_finished_run_is_not_retrained(tmp_path):
    model, record = small_run(tmp_path)
    saved = json.load(open(tmp_path / "results" / "bn_l1_seed0.json"))
    assert saved == json.loads(json.dumps(record))
    assert [r["epoch"] for r in saved["history"]] == [1, 2]
    assert set(saved["history"][0]) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"}
    config = saved["config"]
    assert utils.Recipe.from_config(config) == SMALL
    assert config["threads"] == torch.get_num_threads() and config["train_images"] == 256 and config["params"] == 7750
    # The weights file holds the final model and its config, loadable as data only.
    loaded, weights_config = utils.load_weights(tmp_path / "weights" / "bn_l1_seed0.pt")
    assert weights_config == config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert not os.path.exists(tmp_path / "checkpoints" / "bn_l1_seed0.pt")  # removed once finished
    mtime = os.path.getmtime(tmp_path / "results" / "bn_l1_seed0.json")
    again, record2 = small_run(tmp_path)
    assert record2 == saved and os.path.getmtime(tmp_path / "results" / "bn_l1_seed0.json") == mtime
    assert torch.equal(again.conv6.weight, model.conv6.weight)


def test_an_interrupted_run_resumes_to_the_same_history_and_weights(tmp_path, monkeypatch):
    recipe = replace(SMALL, epochs=4)
    _, whole = small_run(tmp_path / "whole", recipe)
    real_evaluate = stop_at_evaluation(monkeypatch, 3)  # stop during the third epoch's evaluation
    with pytest.raises(KeyboardInterrupt):
        small_run(tmp_path / "cut", recipe)
    saved = json.load(open(tmp_path / "cut" / "results" / "bn_l1_seed0.json"))
    assert [r["epoch"] for r in saved["history"]] == [1, 2]  # every finished epoch kept
    assert os.path.exists(tmp_path / "cut" / "checkpoints" / "bn_l1_seed0.pt")
    assert sorted(os.listdir(tmp_path / "cut" / "results")) == ["bn_l1_seed0.json"]  # no temporary files left
    monkeypatch.setattr(utils, "evaluate", real_evaluate)
    _, resumed = small_run(tmp_path / "cut", recipe)
    assert without_time(resumed["history"]) == without_time(whole["history"])
    assert resumed["config"] == whole["config"]
    a = torch.load(tmp_path / "whole" / "weights" / "bn_l1_seed0.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "weights" / "bn_l1_seed0.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_resumed_on_another_kind_of_processor_records_which_epochs_ran_where(tmp_path, monkeypatch):
    recipe = replace(SMALL, epochs=3)
    real_evaluate = stop_at_evaluation(monkeypatch, 2)  # stop during the second epoch's evaluation
    with pytest.raises(KeyboardInterrupt):
        small_run(tmp_path, recipe)
    monkeypatch.setattr(utils, "evaluate", real_evaluate)
    path = tmp_path / "checkpoints" / "bn_l1_seed0.pt"
    state = torch.load(path, weights_only=True)
    state["config"]["hardware"] = "CPU OTHER"
    utils.save_torch(str(path), state)
    _, record = small_run(tmp_path, recipe)
    here = utils.hardware(torch.device("cpu"))
    assert len(record["history"]) == 3 and record["config"]["hardware"] == f"CPU OTHER until epoch 1, then {here}"


def test_files_of_other_settings_are_never_mixed_in(tmp_path):
    small_run(tmp_path, replace(SMALL, epochs=1))
    with pytest.raises(utils.SettingsClash, match=r"bn_l1_seed0.json was written with other settings "
                                                  r"\(epochs 1 there, 2 now\); .*--fresh"):
        small_run(tmp_path)
    # A checkpoint from a run with another thread count is not resumed either.
    state_path = tmp_path / "checkpoints" / "bn_l1_seed0.pt"
    _, record = small_run(tmp_path, fresh=True)  # --fresh starts over
    assert len(record["history"]) == 2
    os.makedirs(state_path.parent, exist_ok=True)
    os.remove(tmp_path / "weights" / "bn_l1_seed0.pt")
    cut = json.load(open(tmp_path / "results" / "bn_l1_seed0.json"))
    cut["history"] = cut["history"][:1]
    utils.write_json(str(tmp_path / "results" / "bn_l1_seed0.json"), cut)
    utils.save_torch(str(state_path), {"config": {**cut["config"], "threads": 99}, "history": cut["history"]})
    with pytest.raises(utils.SettingsClash, match=r"checkpoints/bn_l1_seed0.pt was written with other settings "
                                                  rf"\(threads 99 there, {torch.get_num_threads()} now\)"):
        small_run(tmp_path)


def test_parallel_jobs_give_the_same_histories_as_one_process_with_one_thread(tmp_path):
    recipes = [replace(SMALL, norm=n, l1=0.0, epochs=1) for n in ("BN", "GN")]
    data = (TRAIN, TEST)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial, _ = utils.run_experiments(recipes, data, device=torch.device("cpu"), out=str(tmp_path / "a"),
                                          progress=False)
    finally:
        torch.set_num_threads(threads)
    parallel, models = utils.run_experiments(recipes, data, device=torch.device("cpu"), out=str(tmp_path / "b"),
                                             jobs=2)
    assert list(parallel) == ["bn", "gn"] and set(models) == {"bn", "gn"}
    for name in serial:
        assert without_time(serial[name][0]["history"]) == without_time(parallel[name][0]["history"])
        assert parallel[name][0]["config"]["threads"] == 1
    log_path = tmp_path / "b" / "results" / "epochs1" / "invocations.json"  # 1 epoch: not the defaults' folder
    (log,) = json.load(open(log_path))["invocations"]
    assert log["runs_trained"] == 2 and log["jobs"] == 2 and log["threads"] == 1 and log["wall_seconds"] > 0
    utils.run_experiments(recipes, data, device=torch.device("cpu"), out=str(tmp_path / "b"), jobs=2)
    assert len(json.load(open(log_path))["invocations"]) == 1  # nothing trained


def test_malloc_setting_changes_no_number(tmp_path):
    # Two fresh processes, the same 1-epoch run with and without utils.tune_malloc(): identical histories.
    code = ("import sys, torch, utils; torch.set_num_threads(1); sys.argv[2] == '1' and utils.tune_malloc(); "
            "from conftest import synthetic; "
            "utils.run(utils.Recipe('BN', l1=1e-5, epochs=1, batch_size=64), (synthetic(512), synthetic(64, seed=1)), "
            "device=torch.device('cpu'), out=sys.argv[1], progress=False)")
    for flag in ("0", "1"):
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / flag), flag], capture_output=True, text=True,
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tests")))
        assert done.returncode == 0, done.stderr
    a, b = (json.load(open(tmp_path / flag / "results" / "bn_l1_seed0.json")) for flag in ("0", "1"))
    assert without_time(a["history"]) == without_time(b["history"])
    import platform
    assert utils.tune_malloc() == (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")


class TableModel(nn.Module):
    """Returns fixed log-probabilities per image; the image's first pixel holds its index."""

    def __init__(self, logp):
        super().__init__()
        self.register_buffer("logp", logp)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        idx = ((x[:, 0, 0, 0] * utils.STD + utils.MEAN) * 255).round().long()
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
    mistakes = utils.misclassified(TableModel(probs.log()), (images, labels), n=4)
    assert [m.index for m in mistakes] == [4, 2, 1, 5]  # 0.99, 0.95, then the 0.6 tie in index order
    assert [m.pred for m in mistakes] == [7, 4, 3, 2] and all(m.true == 0 for m in mistakes)
    assert mistakes[0].confidence == pytest.approx(0.99)
    assert torch.equal(mistakes[0].image, images[4])
    assert len(utils.misclassified(TableModel(probs.log()), (images, labels), n=10)) == 5


def test_figures_are_written_with_titles_labels_and_legend(tmp_path):
    history = lambda shift: [{"epoch": e, "test_loss": 1 / e + shift, "test_acc": 90 + e - shift,
                              "train_loss": 1.2 / e, "train_acc": 89 + e} for e in range(1, 6)]
    fig = utils.plot_curves({"BN + L1": [history(0), history(0.1)], "GN": [history(0.3)]}, "test_acc", train=True)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch" and "(%)" in ax.get_ylabel() and ax.get_title()
    # Each run's best epoch (of the mean over seeds) is labelled: 95 and 94.9 at epoch 5 average 94.95.
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "BN + L1: best 94.95% at epoch 5, mean of 2 seeds", "BN + L1 train", "GN: best 94.70% at epoch 5", "GN train"]
    path = utils.save_figure(fig, str(tmp_path / "static" / "acc.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    images = synthetic(10)[0]
    mistakes = [utils.Mistake(i, images[i], 3, 5, 0.97) for i in range(10)]
    fig = utils.plot_misclassified(mistakes, "BN + L1: test accuracy 99.50%")
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 10 and titles[0] == "pred 3 (97%), true 5"
    assert fig._suptitle.get_text() == "BN + L1: test accuracy 99.50%"
    with pytest.raises(ValueError, match="metric must be one of"):
        utils.plot_curves({}, "accuracy")


def test_seeds_figure_shows_every_seed_and_the_mean_with_its_interval():
    panels = {"norms": {"BN + L1": {0: 99.5, 1: 99.6, 2: 99.7}, "LN": {0: 99.4}},
              "groups": {"2 groups": {0: 99.5, 1: 99.5}}}
    fig = utils.plot_seeds(panels)
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
    (ax,) = utils.plot_seeds(panels).axes
    bottom, top = ax.get_ylim()
    assert 98.5 < bottom < 98.91 and 100.19 < top < 100.5  # scaled to the run that learned, with its interval
    assert [t.get_text() for t in ax.texts] == ["99.55\n±0.64", "mean 11.35\n(below the scale)"]
    marks = [c.get_offsets()[:, 1] for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
    assert all(bottom <= y <= top for m in marks for y in m)  # every seed drawn inside the axes
    assert sum(len(m) for m in marks) == 4


def test_summary_table_reports_mean_and_spread():
    rec = lambda acc, seed: {"config": {"norm": "GN", "groups": 5, "params": 7750, "seed": seed, "epochs": 2}, "history": [
        {"test_acc": acc - 1, "train_acc": 98.0, "test_loss": 0.05, "seconds": 30},
        {"test_acc": acc, "train_acc": 99.0, "test_loss": 0.02, "seconds": 30}]}
    (row,) = utils.summarize({"gn_g5": [rec(99.0, 0), rec(99.4, 1)]})
    assert row["label"] == "GN (5 groups)" and len(row["seeds"]) == 2 and row["minutes_mean"] == 1.0
    assert row["train_mean"] == 99.0 and row["loss_mean"] == pytest.approx(0.02) and row["unfinished"] == []
    assert row["final_mean"] == pytest.approx(99.2) and row["final_std"] == pytest.approx(0.2)
    table = utils.format_summary({"gn_g5": [rec(99.0, 0)], "gn": [rec(99.0, 0), rec(99.4, 1)]})
    one, two = table.splitlines()[1:]
    assert one.split() == ["GN", "(5", "groups)", "7750", "1", "99.00", "99.00", "1.0"]  # one seed: no spread to show
    assert "99.20 ± 0.20" in two


@pytest.mark.parametrize("args,message", [
    (["--norms", "XN"], "invalid choice: 'XN'"),
    (["--groups", "3"], "invalid choice: 3"),
    (["--epochs", "0"], "expected a positive integer, got '0'"),
    (["--lr", "0"], "expected a number > 0, got '0'"),
    (["--l1", "nan"], "expected a finite number >= 0, got 'nan'"),
    (["--dropout", "1"], r"expected a probability in \[0, 1\)"),
    (["--seeds", "a"], "expected a seed >= 0"),
    (["--val", "60000"], "must be smaller than the 60000 training images"),
    (["--device", "tpu"], "argument --device"),
    (["--translate", "1"], r"argument --translate: expected a fraction in \[0, 1\), got '1'"),
    (["--shear", "-1"], r"argument --shear: expected degrees in \[0, 90\)"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_cli_rejects_bad_values_naming_what_is_accepted(args, message, capsys):
    with pytest.raises(SystemExit) as exit:
        train_cli.parse_args(args)
    assert exit.value.code == 2
    import re
    assert re.search(message, capsys.readouterr().err)


def test_cli_runs_seed_by_seed_and_adds_the_ablations_with_the_same_settings():
    main, extra = train_cli.recipes(train_cli.parse_args(["--seeds", "1", "0", "--ablation-seeds", "0", "1",
                                                          "--dropout", "0", "--translate", "0.1"]))
    assert [(r.name, r.seed) for r in main] == [("bn_l1", 0), ("ln", 0), ("gn", 0), ("bn_l1", 1), ("ln", 1), ("gn", 1)]
    assert [(r.name, r.seed) for r in extra] == [("bn", 0), ("gn_g5", 0), ("gn_g10", 0), ("bn", 1), ("gn_g5", 1),
                                                 ("gn_g10", 1)]
    assert all(r.dropout == 0 and r.translate == 0.1 for r in main + extra) and extra[0].l1 == 0
    assert train_cli.recipes(train_cli.parse_args([]))[1] == []


def test_each_set_of_settings_gets_a_folder_named_after_what_differs_from_the_defaults():
    folder = lambda *argv: {utils.settings_folder(r) for r in sum(train_cli.recipes(train_cli.parse_args(list(argv))),
                                                                  [])}
    assert folder() == folder("--seeds", "3", "--ablation-seeds", "1") == {""}  # the experiment's own: results/
    assert folder("--epochs", "1", "--limit", "2000") == {"epochs1_limit2000"}
    assert folder("--val", "10000", "--batch-size", "128", "--dropout", "0.05") == {"dropout0.05_batch_size128_val10000"}
    assert folder("--precision", "bf16", "--lr", "0.05") == {"lr0.05_bf16"}
    # The norm, seed, groups and L1 are in the file's name instead.
    assert folder("--groups", "5", "--norms", "gn", "ln") == folder("--l1", "0.0001") == {""}
    assert [r.name for r in train_cli.recipes(train_cli.parse_args(["--l1", "0.0001"]))[0]] == ["bn_l1_0.0001", "ln",
                                                                                                 "gn"]
    assert utils.experiment(groups=5)[1].groups == utils.Recipe.groups  # LN has no groups to set
    with pytest.raises(ValueError, match="different folders"):
        utils.experiment_folder([utils.Recipe(), utils.Recipe(epochs=1)])


def test_cli_defaults_are_the_experiment():
    args = train_cli.parse_args([])
    assert args.norms == ["BN", "LN", "GN"] and args.epochs == 20 and args.l1 == 1e-5 and args.groups == 2
    assert args.precision == "fp32" and train_cli.parse_args(["--precision", "bf16"]).precision == "bf16"
    assert train_cli.parse_args(["--norms", "bn", "gn"]).norms == ["BN", "GN"]


@pytest.mark.mnist
def test_cli_quick_run_in_a_fresh_clone_trains_into_its_own_folder_and_leaves_the_committed_runs(clone, mnist):
    from conftest import DATA, changed_files
    cmd = [sys.executable, "train.py", "--epochs", "1", "--limit", "2000", "--data", DATA, "--device", "cpu",
           "--no-progress"]  # no --out: as the README's one-minute run
    train = lambda *more: subprocess.run(cmd + list(more), capture_output=True, text=True, timeout=600, cwd=clone)
    done = train()
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("training from scratch") == 3 and "runs/results/epochs1_limit2000/" in done.stdout
    runs = clone / "runs"
    for name in ("graph_losses", "graph_accuracies", "misclassified_bn_l1", "misclassified_ln", "misclassified_gn"):
        assert os.path.getsize(runs / "static" / "epochs1_limit2000" / f"{name}.png") > 5000, name
    for name in ("bn_l1", "ln", "gn"):
        record = json.load(open(runs / "results" / "epochs1_limit2000" / f"{name}_seed0.json"))
        assert record["config"]["train_images"] == 2000 and record["config"]["eval_images"] == 10000
        assert record["config"]["params"] == 7750 and len(record["history"]) == 1
    assert "BN + L1" in done.stdout and "final test acc" in done.stdout and " ± " not in done.stdout  # one seed
    assert changed_files(clone) == ""  # the committed results/, weights/ and static/ as they were
    # The same command again trains nothing; other settings train again, in a folder of their own.
    again = train()
    assert again.returncode == 0 and again.stdout.count("finished, loaded from") == 3, again.stderr
    other = train("--epochs", "2")
    assert other.returncode == 0 and other.stdout.count("training from scratch") == 3, other.stderr
    assert len(json.load(open(runs / "results" / "epochs2_limit2000" / "gn_seed0.json"))["history"]) == 2
    # --rerun trains a results file's run again, with its thread count, and compares the histories.
    rerun = subprocess.run([sys.executable, "train.py", "--rerun", "runs/results/epochs1_limit2000/ln_seed0.json",
                            "--data", DATA, "--no-progress"], capture_output=True, text=True, timeout=600, cwd=clone)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "identical: all 1 epochs" in rerun.stdout
    # --no-figures: results only, static/ untouched.
    done = train("--norms", "gn", "--groups", "5", "--no-figures")
    assert done.returncode == 0, done.stderr
    assert json.load(open(runs / "results" / "epochs1_limit2000" / "gn_g5_seed0.json"))["config"]["groups"] == 5
    assert sorted(os.listdir(runs / "static" / "epochs1_limit2000")) == sorted(
        f"{n}.png" for n in ("graph_losses", "graph_accuracies", "misclassified_bn_l1", "misclassified_ln",
                             "misclassified_gn"))
    assert changed_files(clone) == ""


@pytest.mark.mnist
def test_unreadable_files_and_a_workers_error_end_in_one_message_naming_the_file(clone, mnist):
    from conftest import DATA, changed_files
    cmd = [sys.executable, "train.py", "--data", DATA, "--device", "cpu", "--no-progress"]
    train = lambda *more: subprocess.run(cmd + list(more), capture_output=True, text=True, timeout=600, cwd=clone)
    done = train("--rerun", "/etc/passwd")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "/etc/passwd is not a results file: it is not valid JSON" in done.stderr and "--rerun takes" in done.stderr
    # A committed results file cut in half: restore it with git, never delete it.
    committed = clone / "results" / "bn_l1_seed0.json"
    text = committed.read_text()
    committed.write_text(text[:len(text) // 2])
    done = train("--out", ".")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "results/bn_l1_seed0.json is not a results file" in done.stderr
    assert "restore it with `git checkout -- results/bn_l1_seed0.json`" in done.stderr and "delet" not in done.stderr
    committed.write_text(text)
    # A checkpoint that is not one, read by a worker process (--jobs 2): one line, no pool traceback.
    broken = clone / "runs" / "checkpoints" / "epochs1_limit1000" / "ln_seed0.pt"
    os.makedirs(broken.parent)
    broken.write_bytes(b"not a checkpoint")
    done = train("--epochs", "1", "--limit", "1000", "--jobs", "2", "--no-figures")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"train.py: error: {os.path.join('runs', 'checkpoints', 'epochs1_limit1000', 'ln_seed0.pt')} cannot be read "
        "as a checkpoint (UnpicklingError: it is truncated, or not a file that a run wrote); if it is a run of your "
        "own, --fresh trains the run again from scratch"]
    assert changed_files(clone) == ""


def test_a_bad_setting_in_a_worker_is_raised_as_itself_without_the_pool_traceback(tmp_path):
    import traceback
    recipes = [replace(SMALL, norm=n, l1=0.0, epochs=1, val=1000) for n in ("BN", "GN")]  # 1000 > 256 images
    with pytest.raises(ValueError, match="validation size must be between 1 and 255, got 1000") as error:
        utils.run_experiments(recipes, (TRAIN, TEST), device=torch.device("cpu"), out=str(tmp_path), jobs=2)
    assert error.value.__cause__ is None and "RemoteTraceback" not in "".join(traceback.format_exception(error.value))


@pytest.mark.mnist
def test_ctrl_c_stops_parallel_runs_cleanly_and_the_same_command_resumes_them(tmp_path, mnist):
    import signal
    import time
    from conftest import DATA
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--epochs", "3", "--limit", "1000", "--jobs", "2",
           "--data", DATA, "--out", str(tmp_path), "--device", "cpu", "--no-progress", "--no-figures"]
    # A new session, as a terminal's foreground job: Ctrl-C sends SIGINT to the whole process group. SIGINT is
    # reset to its default first, in case this test itself runs in the background, where it is ignored.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    results = tmp_path / "results" / "epochs3_limit1000" / "bn_l1_seed0.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (results.exists() and json.load(open(results))["history"]):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "stopped: every finished epoch is kept; resume with: python" in err
    assert "Traceback" not in err  # the workers leave Ctrl-C to the parent
    cut = len(json.load(open(results))["history"])
    assert 1 <= cut < 3 and (tmp_path / "checkpoints" / "epochs3_limit1000" / "bn_l1_seed0.pt").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resuming after epoch {cut}" in done.stdout
    assert all(len(json.load(open(tmp_path / "results" / "epochs3_limit1000" / f"{n}_seed0.json"))["history"]) == 3
               for n in ("bn_l1", "ln", "gn"))
