"""studies/assignment.py: the notebook's findings, on small hand-made records against a folder of committed ones."""
import json

import pytest

from studies.assignment import findings

AUG = "rotation uniform in ±7 degrees; bilinear, fill 0"


def record(name, norm, seed, accs, **config):
    """A run's record whose test accuracy per epoch is `accs` (training figures a little below it)."""
    history = [{"epoch": i + 1, "test_acc": a, "train_acc": a - 0.5, "test_loss": 0.02, "train_loss": 0.03,
                "seconds": 10.0 + i} for i, a in enumerate(accs)]
    return {"name": name, "config": {"norm": norm, "l1": 1e-5 if norm == "BN" else 0.0, "seed": seed,
                                     "epochs": len(accs), "ema": 0.999, "augmentation": AUG, **config},
            "history": history}


@pytest.fixture
def committed(tmp_path):
    """Ten finished 20-epoch LN seeds: final 99.40 to 99.49; seeds 0-4 steady from epoch 5, 5-9 dip in epoch 15."""
    for seed in range(10):
        accs = [98.0] * 4 + [99.45] * 16
        if seed >= 5:
            accs[14] = 99.3
        accs[-1] = 99.40 + seed / 100
        (tmp_path / f"ln_seed{seed}.json").write_text(json.dumps(record("ln", "LN", seed, accs)))
    return str(tmp_path)


def test_a_run_equal_to_a_committed_seed_is_named_so(committed):
    with open(f"{committed}/ln_seed3.json") as f:
        same = json.load(f)
    for e in same["history"]:
        e["seconds"] = 99.0  # the timings differ from run to run; every other number is the same
    text = findings({"ln": [same]}, committed)
    assert "LN, seed 3 (20 epochs): final test accuracy 99.43%, best 99.45% (epoch 5)" in text
    assert "first reached 99.4% in epoch 5 and stayed at or above it in every epoch from epoch 5 on" in text
    assert "The committed 10 seeds of LN: final 99.45 ± 0.02%" in text and "from 99.40% to 99.49%" in text
    assert "5 of 10 at or above 99.4% in every epoch from 12 on" in text
    assert "This run equals their seed 3 in every number of every epoch" in text
    # the training figures are 0.5 below the test figures, and said to be measured differently
    assert "training accuracy 98.93% against test 99.43% (+0.50 points)" in text
    assert "by the weights' moving average" in text


def test_a_run_of_its_own_is_placed_against_the_range_and_a_dip_after_epoch_12_is_named(committed):
    dipped = record("ln", "LN", 0, [98.0] * 4 + [99.45] * 8 + [99.2, 99.45, 99.3] + [99.5] * 5)
    text = findings({"ln": [dipped]}, committed)
    assert "but was below it from epoch 12 on in epochs 13, 15" in text
    assert "This run's final accuracy lies above their range" in text
    low = record("ln", "LN", 0, [98.0] * 20)
    assert "It never reached 99.4%" in findings({"ln": [low]}, committed)
    assert "lies below their range" in findings({"ln": [low]}, committed)


def test_other_settings_are_context_not_a_comparison_and_models_are_ranked_with_a_caveat(committed):
    quick = {"ln": [record("ln", "LN", 0, [99.5], limit=2000)], "gn": [record("gn", "GN", 0, [99.1], limit=2000)]}
    text = findings(quick, committed)
    assert "LN, seed 0 (1 epoch): final test accuracy 99.50%" in text and "it trained fewer than 12 epochs" in text
    assert "They trained with the default settings, this run with epochs1_limit2000" in text
    assert "No committed runs of GN to compare with." in text
    assert "Here, by final test accuracy: LN 99.50%, GN 99.10%. One run per model is one draw" in text


def test_no_finished_epoch_yet():
    assert findings({"ln": [record("ln", "LN", 0, [])]}) == "No finished epoch yet."
