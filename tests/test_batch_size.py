"""The batch-size study: learning-rate rule, BN evaluated with batch statistics, resumable runs, figure, CLI."""
import copy
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import utils
from conftest import ROOT, synthetic
from mnist_norms import runner
from mnist_norms.augment import standardize, to_unit
from mnist_norms.files import write_json
from mnist_norms.recipe import Recipe
from mnist_norms.records import SettingsClash, load_records
from mnist_norms.training import evaluate
from model import Net
from studies import batch_size as study


def test_learning_rate_scales_linearly_from_the_recipes_batch():
    assert study.scaled_lr(64) == Recipe.lr == 0.1
    assert study.scaled_lr(2) == pytest.approx(0.1 / 32)
    assert study.scaled_lr(256) == pytest.approx(0.4)
    assert study.scaled_lr(32, lr=0.05) == pytest.approx(0.025)


def test_plan_runs_smallest_batches_first_and_rejects_bad_sizes():
    plan = study.plan(["BN", "GN"], [64, 2], [0, 1], epochs=2)
    assert len(plan) == 8 and [r.batch_size for r in plan] == [2, 2, 2, 2, 64, 64, 64, 64]
    assert plan[0].lr == pytest.approx(0.1 / 32) and plan[0].l1 == 0 and plan[0].epochs == 2
    assert study.run_name(plan[0]) == "bn_bs2"
    with pytest.raises(ValueError, match=r"batch sizes must be integers >= 2, got \[1\]"):
        study.plan(["BN"], [1, 2], [0])
    with pytest.raises(ValueError, match="at least one norm"):
        study.plan(["BN"], [], [0])


def trained_bn(seed=0):
    """A BN Net (no dropout) after a few steps on synthetic data: running averages that lag its weights."""
    torch.manual_seed(seed)
    model = Net("BN", dropout=0.0)
    images, labels = synthetic(256)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    utils.train(model, (images, labels), opt, Recipe(batch_size=32, translate=0.0, scale=0.0, shear=0.0), generator=g,
                progress=False)
    return model


def test_batch_stats_evaluation_matches_a_train_mode_forward_and_leaves_the_model_alone():
    model = trained_bn()
    images, labels = synthetic(100, seed=1)
    before = copy.deepcopy(model.state_dict())
    loss, acc = evaluate(model, (images, labels), batch_size=8, batch_stats=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats untouched

    # Reference: the whole net in train mode (dropout is 0), batch by batch of 8 (the last has 4), by hand:
    # each BatchNorm layer normalizes by the mean and biased variance of its batch.
    reference = copy.deepcopy(model).train()
    total, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, 100, 8):
            x = standardize(to_unit(images[i:i + 8]))
            logp = reference(x)
            total += F.nll_loss(logp, labels[i:i + 8], reduction="sum").item()
            correct += (logp.argmax(1) == labels[i:i + 8]).sum().item()
    assert loss == pytest.approx(total / 100, rel=1e-5) and acc == pytest.approx(correct)
    # ... and it is not what the running averages give, which is the point of measuring it.
    assert loss != pytest.approx(evaluate(model, (images, labels))[0], rel=1e-3)


def test_batch_stats_evaluation_is_for_batchnorm_only(tmp_path):
    with pytest.raises(ValueError, match="GN has none"):
        runner.run(utils.fit, Recipe("GN", epochs=1), (synthetic(64), synthetic(64)), device=torch.device("cpu"),
                  out=str(tmp_path), progress=False, study=runner.Study(batch_stats=True))


def toy_study(tmp_path, epochs=1, **kw):
    data = synthetic(96), synthetic(40, seed=1)
    return study.run_study(study.plan(["BN", "LN", "GN"], [4, 16], [0], epochs=epochs), data,
                           device=torch.device("cpu"), out=str(tmp_path), progress=False, **kw)


def test_toy_study_writes_every_run_and_resumes_where_it_stopped(tmp_path):
    records = toy_study(tmp_path)
    folder = tmp_path / "results" / "batch_size"
    names = ["bn_bs4", "bn_bs16", "ln_bs4", "ln_bs16", "gn_bs4", "gn_bs16"]
    assert sorted(records) == sorted(names)
    for name in names:
        record = json.load(open(folder / f"{name}_seed0.json"))
        assert record == json.loads(json.dumps(records[name][0]))
        bs = record["config"]["batch_size"]
        assert record["config"]["lr"] == pytest.approx(0.1 * bs / 64) and len(record["history"]) == 1
        has_stats = "test_acc_batch_stats" in record["history"][0]
        assert has_stats == name.startswith("bn"), name
    log = json.load(open(folder / "study.json"))["invocations"]
    assert log[-1]["runs_planned"] == 6 and log[-1]["runs_trained"] == 6 and log[-1]["wall_seconds"] > 0

    # A second call trains nothing; an unfinished run (its file cut back to no epochs) is trained again.
    mtimes = {f: os.path.getmtime(folder / f) for f in os.listdir(folder) if f != "study.json"}
    cut = json.load(open(folder / "gn_bs16_seed0.json"))
    cut["history"] = []
    write_json(str(folder / "gn_bs16_seed0.json"), cut)
    mtimes.pop("gn_bs16_seed0.json")
    again = toy_study(tmp_path)
    assert json.load(open(folder / "study.json"))["invocations"][-1]["runs_trained"] == 1
    assert all(os.path.getmtime(folder / f) == t for f, t in mtimes.items())
    assert len(again["gn_bs16"][0]["history"]) == 1
    toy_study(tmp_path)  # nothing left to train: not logged as part of the study's time
    assert len(json.load(open(folder / "study.json"))["invocations"]) == 2

    # Other settings in the same folder are refused, naming the file and what differs.
    with pytest.raises(SettingsClash, match=r"bn_bs4_seed0.json was written with other settings "
                                                  r"\(epochs 1 there, 2 now"):
        toy_study(tmp_path, epochs=2)

    rows = study.summary(again)
    assert [(r["norm"], r["batch_size"]) for r in rows] == [("bn", 4), ("bn", 16), ("ln", 4), ("ln", 16),
                                                             ("gn", 4), ("gn", 16)]
    assert "batch_stats_mean" in rows[0] and "batch_stats_mean" not in rows[2]
    fig = study.plot(again)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]  # below the axes
    assert len(labels) == 4 and labels[1].startswith("BN, evaluated with batch statistics")
    assert "at batch 4" in labels[0] and "peak learning rate 0.1 x batch / 64" in ax.get_xlabel()


@pytest.mark.parametrize("args,message", [
    (["--batch-sizes", "1"], "expected an integer >= 2, got '1'"),
    (["--batch-size", "64"], "unrecognized arguments: --batch-size"),
    (["--jobs", "0"], "expected a positive integer, got '0'"),
])
def test_cli_rejects_bad_values(args, message, capsys):
    with pytest.raises(SystemExit):
        study.parse_args(args)
    assert message in capsys.readouterr().err


def test_cli_study_defaults():
    args = study.parse_args([])
    assert args.batch_sizes == [2, 4, 8, 16, 32, 64, 128, 256] and args.epochs == 2 and args.seeds == [0, 1, 2]
    assert args.l1 == 0.0 and args.norms == ["BN", "LN", "GN"] and args.precision == "fp32"
    # Today's recipe: every other setting is Recipe's default, and the batch-64 runs are its own peak learning rate.
    recipes = study.recipes_of(args)
    assert all(replace(r, batch_size=64, lr=Recipe.lr, epochs=Recipe.epochs, norm="BN", seed=0) == Recipe()
               for r in recipes)
    assert {r.lr for r in recipes if r.batch_size == 64} == {Recipe.lr}


@pytest.mark.mnist
def test_cli_study_at_toy_size_in_two_processes(tmp_path, mnist):
    from conftest import DATA
    # One batch size (test_toy_study covers several), in two processes
    cmd = [sys.executable, "-m", "studies.batch_size", "--batch-sizes", "32",
           "--epochs", "1", "--seeds", "0", "--limit", "512", "--jobs", "2", "--data", DATA, "--out", str(tmp_path),
           "--device", "cpu", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    # Fewer epochs and images than the study's own: a folder of their own under --out
    folder = tmp_path / "epochs1_limit512" / "results" / "batch_size"
    assert sorted(os.listdir(folder)) == sorted(
        [f"{n}_bs32_seed0.json" for n in ("bn", "ln", "gn")] + ["study.json"])
    record = json.load(open(folder / "bn_bs32_seed0.json"))
    assert record["config"]["train_images"] == 512 and record["config"]["eval_images"] == 10000
    assert 0 <= record["history"][0]["test_acc_batch_stats"] <= 100
    assert os.path.getsize(tmp_path / "epochs1_limit512" / "static" / "batch_size_study.png") > 5000
    assert "BN, batch 32" in done.stdout and "with batch stats" in done.stdout
    # Run again: everything is there already.
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0 and "3 already finished" in done.stdout and "0 to train" in done.stdout


def test_every_committed_study_run_is_a_run_of_the_current_command():
    # Each committed file reads back as one of the runs `python -m studies.batch_size` plans, with today's recipe and
    # arithmetic: the command resumes or loads it rather than clashing with it.
    folder = os.path.join(ROOT, "results", "batch_size")
    records = load_records(folder)
    planned = {(study.run_name(r), r.seed): r for r in study.recipes_of(study.parse_args([]))}
    assert len(planned) == 3 * len(study.BATCH_SIZES) * len(study.SEEDS) == 72
    files = [r for recs in records.values() for r in recs]
    assert files
    for record in files:
        recipe = planned[(record["name"], record["config"]["seed"])]
        assert Recipe.from_config(record["config"]) == recipe and record["config"]["isa"] == "avx2"
        assert record["config"]["threads"] == 1


def test_the_table_gives_a_failed_run_apart_and_each_seed_where_an_interval_would_pass_100(tmp_path):
    folder = tmp_path / "batch_size"
    os.makedirs(folder)
    # LN at batch 16: seed 0's training accuracy falls by 14 points (stats.failure: collapsed); GN at 16: three seeds
    # whose interval would reach past 100%
    for norm, seed, accs, train in (("ln", 0, (8.05, 90.59), (88.1, 74.3)), ("ln", 1, (98.85, 99.18), (90.2, 98.3)),
                                    ("ln", 2, (98.95, 99.25), (90.7, 98.3)), ("gn", 0, (97.0, 98.35), (90.0, 96.5)),
                                    ("gn", 1, (96.0, 96.52), (90.0, 93.9)), ("gn", 2, (90.0, 91.17), (80.0, 81.4))):
        history = [{"epoch": e + 1, "test_acc": a, "train_acc": t, "test_loss": 0.1, "train_loss": 0.1, "seconds": 6.0}
                   for e, (a, t) in enumerate(zip(accs, train))]
        record = {"name": f"{norm}_bs16", "history": history,
                  "config": {"norm": norm.upper(), "seed": seed, "epochs": 2, "params": 7750, "batch_size": 16,
                             "lr": 0.025, "train_images": 60000}}
        write_json(str(folder / f"{norm}_bs16_seed{seed}.json"), record)
    lines = study.batch_size_table(str(tmp_path)).splitlines()
    assert lines[0] == "| batch | peak lr | LN final test acc % | GN final test acc % |"
    # the other two: 99.215 ± t(0.975, 1) * 0.0495 / sqrt(2) = 0.44
    assert lines[2] == ("| 16 | 0.025 | seed 0 failed (collapsed): 90.59; the other 2: 99.22 ± 0.44 "
                        "| seeds 0, 1, 2: 98.35, 96.52, 91.17 |")
    assert "a run that failed" in lines[-1] and "`studies.stats.failure`" in lines[-1]
