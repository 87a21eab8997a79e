"""The README's first screen against results/: its rendered findings follow the numbers (tools.report --check keeps
them current), and the advice it writes by hand holds on the committed runs, condition by condition."""
import os

import numpy as np
import pytest

from conftest import ROOT
from mnist_norms.records import load_records
from studies import batch_size, findings, shift, stats

RESULTS = os.path.join(ROOT, "results")


def batch_errors():
    """{(norm, batch size): mean final test error %} of the committed batch-size study."""
    rows = batch_size.summary(load_records(os.path.join(RESULTS, batch_size.FOLDER)))
    return {(r["norm"], r["batch_size"]): 100 - r["final_mean"] for r in rows}


def intensity(name, mode):
    records = shift.load(RESULTS)
    return float(np.mean(list(shift.group_means(records, name, mode, shift.groups()["intensity"]).values())))


def test_bn_when_batches_are_large_ln_or_gn_when_they_are_small():
    errors = batch_errors()
    sizes = sorted({b for _, b in errors})
    assert errors["bn", sizes[0]] > max(errors["ln", sizes[0]], errors["gn", sizes[0]])
    for b in sizes:  # from the recipe's batch of 64 up, BN's error is the lowest
        if b >= 64:
            assert errors["bn", b] <= min(errors["ln", b], errors["gn", b]), b


def test_ln_or_gn_one_image_at_a_time_bn_with_batch_statistics_in_batches_on_intensity_shifts():
    one_at_a_time = intensity("bn_l1", shift.EVAL)
    per_image = [intensity(n, shift.EVAL) for n in ("ln", "gn")]
    in_batches = intensity("bn_l1", f"batch{shift.BATCHES[0]}")
    assert one_at_a_time < min(per_image) and in_batches > max(per_image)
    # and on test images like the training images (the clean set) BN's running averages do as well as LN and GN
    records = load_records(RESULTS)
    assert abs(stats.paired(records["bn_l1"], records["ln"])["mean"]) < findings.ALIKE


def test_gn_with_two_groups_is_close_to_ln():
    records = load_records(RESULTS)
    assert abs(stats.paired(records["gn"], records["ln"])["mean"]) < findings.ALIKE


def test_the_clean_finding_says_alike_only_while_the_norms_are():
    def run(name, finals):
        return [{"name": name, "config": {"seed": s, "epochs": 1},
                 "history": [{"epoch": 1, "test_acc": a}]} for s, a in enumerate(finals)]
    records = {"bn_l1": run("bn_l1", [99.5, 99.4]), "ln": run("ln", [99.5, 99.41]), "gn": run("gn", [99.45, 99.4])}
    text = findings.clean(records)
    assert "the three are alike" in text and "6 of 6 runs end at or above" in text
    assert "0.030 points or less (3 test images)" in text  # GN - LN: -0.03
    assert "none survives Holm's correction" in text and "about 0.07 points" in text
    records["gn"] = run("gn", [99.0, 99.1])
    assert "the three are not alike" in findings.clean(records)


@pytest.mark.parametrize("missing", ["batch_size", "shift"])
def test_a_finding_without_its_study_is_left_out(tmp_path, missing):
    import shutil
    for name in ("batch_size", "shift"):
        if name != missing:
            shutil.copytree(os.path.join(RESULTS, name), tmp_path / name)
    assert findings.batches(str(tmp_path)) is None


def test_a_failure_under_one_schedule_need_not_repeat_under_the_other_either_way():
    """The README's sentence on the two schedules, run by run: the sweep's (6-epoch cycle) against the recipe's (the
    tolerance study at peak 1, the 20-epoch test runs at 0.1)."""
    sweep = load_records(os.path.join(RESULTS, "lr_sweep"))
    tolerance = load_records(os.path.join(RESULTS, "tolerance"))
    recipe = load_records(RESULTS)

    def failed(records, name, seed):
        (record,) = [r for r in records[name] if r["config"]["seed"] == seed]
        return bool(stats.failure(record["history"]))

    assert failed(sweep, "gn_lr1", 0) and not failed(tolerance, "gn_lr1", 0)
    for control in ("none", "affine"):
        for seed in (1, 2):
            assert failed(sweep, f"{control}_lr0.1", seed) and not failed(recipe, control, seed)
    for name, seed in (("none", 0), ("gn", 1)):
        assert not failed(sweep, f"{name}_lr0.1", seed) and failed(recipe, name, seed)
