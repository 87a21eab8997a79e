"""report.py: the README's tables are generated from results/, and a stale README is caught."""
import json
import os

import pytest

import report
from conftest import ROOT


def test_readme_tables_match_results():
    assert report.main(["--check"]) == 0, "run `python report.py` after changing results/"


def write_run(folder, name, accs, epochs=None):
    os.makedirs(folder, exist_ok=True)
    record = {"name": name, "config": {"seed": 0, "epochs": epochs or len(accs), "params": 7750},
              "history": [{"epoch": i + 1, "test_acc": a, "seconds": 1.0} for i, a in enumerate(accs)]}
    with open(os.path.join(folder, f"{name}_seed0.json"), "w") as f:
        json.dump(record, f)


def test_tuning_table_is_rendered_between_markers_and_staleness_is_detected(tmp_path, capsys):
    results = tmp_path / "results"
    write_run(results / "val" / "lr0.1_bs128", "gn", [98.0, 99.25])
    write_run(results / "val" / "lr0.1_bs128", "bn_l1", [98.5, 99.40, 99.35])
    write_run(results / "val" / "lr0.2_bs128", "gn", [98.1, 99.1], epochs=20)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- tuning:start -->\nold\n<!-- tuning:end -->\nafter\n")
    args = ["--readme", str(readme), "--results", str(results)]
    assert report.main(args + ["--check"]) == 1
    assert report.main(args) == 0
    text = readme.read_text()
    assert "| `lr0.1_bs128` | 99.35 (99.40) | 99.25 (99.25) | 99.30 |" in text  # BN + L1 before GN
    assert "| `lr0.2_bs128` |  | 99.10 (99.10) (2 of 20 epochs) |  |" in text
    assert text.startswith("intro\n") and text.endswith("after\n") and "old" not in text
    assert report.main(args + ["--check"]) == 0
    write_run(results / "val" / "lr0.1_bs128", "gn", [98.0, 99.30])
    assert report.main(args + ["--check"]) == 1
    assert "python report.py" in capsys.readouterr().err


def test_missing_markers_are_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="tuning:start"):
        report.main(["--readme", str(readme), "--results", str(tmp_path)])
