"""mnist_norms/records.py: reading a run's files back (or saying what is wrong and how to restore one), where they go,
when a run counts as finished, and the summaries of finished runs."""
import json
import os

import pytest

from mnist_norms.records import (
    RecordError,
    format_histories,
    format_summary,
    is_finished,
    load_records,
    read_record,
    run_paths,
    settings_clash,
    summarize,
)


def rec(acc, seed, epochs=2, norm="GN", groups=5):
    config = {"norm": norm, "groups": groups, "params": 7750, "epochs": epochs, "seed": seed}
    return {"name": "gn_g5", "config": config, "history": [
        {"epoch": 1, "test_acc": acc - 1, "train_acc": 98.0, "train_loss": 0.1, "test_loss": 0.05, "seconds": 30},
        {"epoch": 2, "test_acc": acc, "train_acc": 99.0, "train_loss": 0.04, "test_loss": 0.02, "seconds": 30}]}


def test_summary_table_reports_mean_and_spread():
    (row,) = summarize({"gn_g5": [rec(99.0, 0), rec(99.4, 1)]})
    assert row["label"] == "GN (5 groups)" and len(row["seeds"]) == 2 and row["minutes_mean"] == 1.0
    assert row["train_mean"] == 99.0 and row["loss_mean"] == pytest.approx(0.02) and row["unfinished"] == []
    assert row["final_mean"] == pytest.approx(99.2) and row["final_std"] == pytest.approx(0.2)
    table = format_summary({"gn_g5": [rec(99.0, 0)], "gn": [rec(99.0, 0), rec(99.4, 1)]})
    one, two = table.splitlines()[1:]
    assert one.split() == ["GN", "(5", "groups)", "7750", "1", "99.00", "99.00", "1.0"]  # one seed: no spread to show
    assert "99.20 ± 0.20" in two


def test_histories_list_each_runs_epochs_together():
    lines = format_histories({"gn_g5": [rec(99.0, 0), rec(99.4, 1)]}).splitlines()
    assert lines[0] == "GN (5 groups), seed 0:" and lines[4] == "GN (5 groups), seed 1:"
    assert lines[3].split() == ["2", "0.0400", "99.00", "0.0200", "99.00"]


def test_a_run_is_finished_when_it_holds_every_planned_epoch_or_those_asked_for(tmp_path):
    path = run_paths(str(tmp_path), "epochs3", "gn_g5", 0)["results"]
    assert path == os.path.join(str(tmp_path), "results", "epochs3", "gn_g5_seed0.json")
    assert not is_finished(path)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump(rec(99.0, 0, epochs=3), f)
    assert not is_finished(path) and is_finished(path, stop_after=2)
    assert list(load_records(os.path.dirname(path))) == ["gn_g5"]


def test_a_damaged_results_file_is_named_with_what_is_wrong_and_how_to_restore_it(tmp_path):
    path = tmp_path / "gn_seed0.json"
    path.write_text('{"name": "gn", "config": {"epochs": 2}, "hist')  # cut short while it was written
    with pytest.raises(RecordError, match="gn_seed0.json is not a results file: it is not valid JSON .*--fresh"):
        read_record(str(path))
    path.write_text(json.dumps({"name": "gn", "config": {"epochs": 2}}))
    with pytest.raises(RecordError, match="lacks 'history'"):
        read_record(str(path))
    path.write_text(json.dumps({"name": "gn", "config": {"epochs": 2}, "history": [{"epoch": 1}]}))
    with pytest.raises(RecordError, match="epoch 1 of its history has no test_acc"):
        read_record(str(path))


def test_a_clash_of_settings_never_advises_deleting_a_committed_run(tmp_path):
    from conftest import ROOT
    committed = settings_clash(os.path.join(ROOT, "results", "ln_seed0.json"), "lr 0.1 there, 0.2 now")
    assert "it is a committed run, so leave it" in str(committed) and "--fresh" not in str(committed)
    own = settings_clash(str(tmp_path / "ln_seed0.json"), "lr 0.1 there, 0.2 now")
    assert "lr 0.1 there, 0.2 now" in str(own) and "--fresh" in str(own)
