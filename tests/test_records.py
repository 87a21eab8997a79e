"""records.py: the summary of finished runs."""

import pytest

from mnist_norms.records import format_summary, summarize


def test_summary_table_reports_mean_and_spread():
    config = {"norm": "GN", "groups": 5, "params": 7750, "epochs": 2}
    rec = lambda acc, seed: {"config": {**config, "seed": seed}, "history": [
        {"test_acc": acc - 1, "train_acc": 98.0, "test_loss": 0.05, "seconds": 30},
        {"test_acc": acc, "train_acc": 99.0, "test_loss": 0.02, "seconds": 30}]}
    (row,) = summarize({"gn_g5": [rec(99.0, 0), rec(99.4, 1)]})
    assert row["label"] == "GN (5 groups)" and len(row["seeds"]) == 2 and row["minutes_mean"] == 1.0
    assert row["train_mean"] == 99.0 and row["loss_mean"] == pytest.approx(0.02) and row["unfinished"] == []
    assert row["final_mean"] == pytest.approx(99.2) and row["final_std"] == pytest.approx(0.2)
    table = format_summary({"gn_g5": [rec(99.0, 0)], "gn": [rec(99.0, 0), rec(99.4, 1)]})
    one, two = table.splitlines()[1:]
    assert one.split() == ["GN", "(5", "groups)", "7750", "1", "99.00", "99.00", "1.0"]  # one seed: no spread to show
    assert "99.20 ± 0.20" in two
