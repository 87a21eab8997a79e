"""studies/shift.py: every weights file on every corrupted set, resumable; the clean set gives each run's recorded
accuracy."""
import json
import os

import pytest
import torch

import utils
from conftest import ROOT, synthetic
from mnist_norms import runner
from mnist_norms.recipe import Recipe
from mnist_norms.records import load_weights
from studies import shift


def tiny_weights(tmp_path):
    """Train BN + L1 and LN on synthetic data for one epoch into tmp_path (results/ and weights/, as train.py does)."""
    data = (synthetic(128), synthetic(48, seed=1))
    for recipe in (Recipe("BN", l1=1e-5, epochs=1), Recipe("LN", epochs=1)):
        runner.run(utils.fit, recipe, data, device=torch.device("cpu"), out=str(tmp_path), progress=False,
                   log=lambda *a: None)
    return data


def test_a_tiny_study_writes_every_set_and_mode_and_resumes_without_computing_again(tmp_path, monkeypatch):
    data = tiny_weights(tmp_path)
    records = shift.study(data, out=str(tmp_path), device=torch.device("cpu"), progress=False, log=lambda *a: None)
    assert sorted(records) == [("bn_l1", 0), ("ln", 0)]
    bn, ln = records[("bn_l1", 0)], records[("ln", 0)]
    assert list(bn["sets"]) == shift.set_names() and len(shift.set_names()) == 36
    assert all(set(modes) == {"eval", "batch64", "batch1000"} for modes in bn["sets"].values())
    assert all(set(modes) == {"eval"} for modes in ln["sets"].values())
    # The clean set through the study's path gives the accuracy the run recorded, bit for bit
    for record in records.values():
        assert record["sets"]["clean"]["eval"]["test_acc"] == record["recorded_test_acc"]
    on_disk = json.loads((tmp_path / "results" / "shift" / "ln_seed0.json").read_text())
    assert on_disk == ln
    # Resumed: nothing is computed again; a set that is missing is
    calls = []
    monkeypatch.setattr(shift, "evaluate_mode", lambda *a: calls.append(a) or (0.0, 0.0))
    shift.study(data, out=str(tmp_path), device=torch.device("cpu"), progress=False, log=lambda *a: None)
    assert calls == []
    del on_disk["sets"]["rotate_3"]
    (tmp_path / "results" / "shift" / "ln_seed0.json").write_text(json.dumps(on_disk))
    shift.study(data, out=str(tmp_path), device=torch.device("cpu"), progress=False, log=lambda *a: None)
    assert len(calls) == 1
    # A set made with an older definition of its corruption (a file without versions: version 1) is computed again,
    # and only those sets
    calls.clear()
    on_disk = json.loads((tmp_path / "results" / "shift" / "ln_seed0.json").read_text())
    assert on_disk["versions"]["shear_5"] == 2 and on_disk["versions"]["rotate_5"] == 1
    del on_disk["versions"]
    (tmp_path / "results" / "shift" / "ln_seed0.json").write_text(json.dumps(on_disk))
    messages = []
    shift.study(data, out=str(tmp_path), device=torch.device("cpu"), progress=False, log=messages.append)
    assert len(calls) == 6 and sum("was made with version 1 of its corruption" in m for m in messages) == 6
    # Other weights (a run trained again): the file is computed again from scratch
    calls.clear()
    bn_weights = tmp_path / "weights" / "bn_l1_seed0.pt"
    saved = torch.load(bn_weights, weights_only=True)
    saved["state_dict"]["conv0.0.weight"] = saved["state_dict"]["conv0.0.weight"] * 1.01
    torch.save(saved, bn_weights)
    run = json.loads((tmp_path / "results" / "bn_l1_seed0.json").read_text())
    import hashlib
    run["weights_sha256"] = hashlib.sha256(bn_weights.read_bytes()).hexdigest()  # as a run trained again records
    (tmp_path / "results" / "bn_l1_seed0.json").write_text(json.dumps(run))
    messages = []
    shift.study(data, out=str(tmp_path), device=torch.device("cpu"), progress=False, log=messages.append)
    assert len(calls) == 36 * 3 and "made from other weights" in messages[0]


def test_bn_with_batch_statistics_differs_from_eval_mode_and_leaves_the_model_alone(tmp_path):
    data = tiny_weights(tmp_path)
    model = load_weights(str(tmp_path / "weights" / "bn_l1_seed0.pt"))[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eval_loss, _ = shift.evaluate_mode(model, data[1], "eval")
    batch_loss, _ = shift.evaluate_mode(model, data[1], "batch64")
    assert eval_loss != batch_loss
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_no_weights_is_a_clear_error_and_weights_are_read_from_runs_into_out(tmp_path):
    with pytest.raises(ValueError,
                       match=r"no weights of the recipe's runs under .*weights .*the committed ones: --runs \."):
        shift.study((synthetic(8), synthetic(8)), out=str(tmp_path), device=torch.device("cpu"), progress=False)
    data = tiny_weights(tmp_path / "trained")
    shift.study(data, out=str(tmp_path / "mine"), runs=str(tmp_path / "trained"), device=torch.device("cpu"),
                progress=False, log=lambda *a: None)
    assert sorted(os.listdir(tmp_path / "mine" / "results" / "shift")) == ["bn_l1_seed0.json", "ln_seed0.json"]
    assert not os.path.exists(tmp_path / "trained" / "results" / "shift")


@pytest.mark.mnist
def test_the_committed_weights_give_their_recorded_test_accuracy_on_the_clean_set(mnist):
    # The published seed-0 weights through the study's evaluation path, on the real test set
    for name in ("bn_l1", "ln", "gn"):
        model = load_weights(os.path.join(ROOT, "weights", f"{name}_seed0.pt"))[0]
        with open(os.path.join(ROOT, "results", f"{name}_seed0.json")) as f:
            recorded = json.load(f)["history"][-1]["test_acc"]
        assert shift.evaluate_mode(model, mnist[1], "eval")[1] == recorded, name


def test_weights_that_are_not_what_their_run_recorded_are_refused(tmp_path):
    data = tiny_weights(tmp_path)
    with open(tmp_path / "results" / "ln_seed0.json") as f:
        record = json.load(f)
    import hashlib
    assert record["weights_sha256"] == hashlib.sha256((tmp_path / "weights" / "ln_seed0.pt").read_bytes()).hexdigest()
    saved = torch.load(tmp_path / "weights" / "ln_seed0.pt", weights_only=True)
    saved["state_dict"]["conv0.0.weight"] += 1
    torch.save(saved, tmp_path / "weights" / "ln_seed0.pt")
    from mnist_norms.records import RecordError
    with pytest.raises(RecordError, match=r"ln_seed0.pt: its SHA-256 .* is not the .* its run recorded"):
        shift.study(data, out=str(tmp_path), device=torch.device("cpu"), progress=False, log=lambda *a: None)


def test_the_tables_are_the_seeds_means_and_paired_intervals_computed_independently(tmp_path):
    # Made-up study files: three seeds of BN + L1 (eval and batch statistics) and LN, every set
    rng = torch.Generator().manual_seed(0)
    folder = tmp_path / "shift"
    folder.mkdir()
    acc = {}
    for name in ("bn_l1", "ln"):
        for seed in (0, 1, 2):
            sets = {}
            for set_name in shift.set_names():
                sets[set_name] = {m: {"test_loss": 0.1, "test_acc": round(float(torch.rand(1, generator=rng)) * 100, 2)}
                                  for m in shift.modes(name)}
            acc[(name, seed)] = sets
            (folder / f"{name}_seed{seed}.json").write_text(json.dumps(
                {"name": name, "seed": seed, "corruption_seed": 0, "sets": sets}))
    table = shift.accuracy_table(str(tmp_path)).splitlines()
    assert table[0] == "| test set | BN + L1 | BN + L1, batch statistics (64) | BN + L1, batch statistics (1000) | LN |"
    # rotate_3, LN: the mean over the three seeds with its Student-t half-width, from scipy directly
    import numpy as np
    from scipy import stats as st
    values = [acc[("ln", s)]["rotate_3"]["eval"]["test_acc"] for s in (0, 1, 2)]
    half = st.t.ppf(0.975, 2) * np.std(values, ddof=1) / np.sqrt(3)
    row = next(line for line in table if line.startswith("| rotate_3 |"))
    assert row.split(" | ")[-1] == f"{np.mean(values):.2f} ± {half:.2f} |"
    # The geometry group's mean for LN: each seed's mean over the group's sets, then over seeds
    geometry = [s for s in shift.set_names() if s.split("_")[0] in ("rotate", "shear", "scale", "translate")]
    per_seed = [np.mean([acc[("ln", s)][g]["eval"]["test_acc"] for g in geometry]) for s in (0, 1, 2)]
    row = next(line for line in table
               if line.startswith("| **mean: geometry** (rotate, shear, scale, translate: 12 sets) |"))
    assert row.split(" | ")[-1].startswith(f"{np.mean(per_seed):.2f} ± ")
    # LN minus BN + L1 over all corrupted sets, paired by seed: scipy's paired t interval
    corrupted = shift.set_names()[1:]
    diffs = [np.mean([acc[("ln", s)][c]["eval"]["test_acc"] for c in corrupted])
             - np.mean([acc[("bn_l1", s)][c]["eval"]["test_acc"] for c in corrupted]) for s in (0, 1, 2)]
    low, high = st.t.interval(0.95, 2, loc=np.mean(diffs), scale=st.sem(diffs))
    row = next(line for line in shift.differences_table(str(tmp_path)).splitlines()
               if line.startswith("| LN - BN + L1 |"))
    assert f"{np.mean(diffs):+.2f} [{low:+.2f}, {high:+.2f}]" in row.split(" | ")[6]
