"""Confidence intervals and paired differences, checked against hand values and by simulation."""
import math

import numpy as np
import pytest

from studies import stats


def test_interval_matches_the_textbook_formula():
    # mean 3, sample std sqrt(2.5), n 5: half-width t(0.975, 4) * sqrt(2.5 / 5), t(0.975, 4) = 2.776445 (tables)
    mean, half = stats.mean_ci([1, 2, 3, 4, 5])
    assert mean == 3 and half == pytest.approx(2.776445 * math.sqrt(0.5), rel=1e-6)
    assert stats.mean_ci([1, 2, 3, 4, 5], level=0.99)[1] == pytest.approx(4.604095 * math.sqrt(0.5), rel=1e-6)
    assert math.isnan(stats.mean_ci([99.5])[1]) and stats.mean_ci([99.5])[0] == 99.5
    with pytest.raises(ValueError, match="non-empty"):
        stats.mean_ci([])


def test_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    samples = rng.normal(1.0, 2.0, size=(4000, 10))
    hits = 0
    for s in samples:
        mean, half = stats.mean_ci(s)
        hits += abs(mean - 1.0) <= half
    assert abs(hits / len(samples) - 0.95) < 0.01  # binomial sd 0.0034


def run(seed, accs, epochs=None):
    history = [{"epoch": i + 1, "test_acc": a} for i, a in enumerate(accs)]
    return {"config": {"seed": seed, "epochs": epochs or len(accs)}, "history": history}


def test_paired_differences_use_only_seeds_both_runs_finished():
    a = [run(0, [99.0, 99.5]), run(1, [99.0, 99.52]), run(2, [99.0, 99.54]), run(3, [99.0], epochs=2)]
    b = [run(0, [99.0, 99.4]), run(1, [99.0, 99.4]), run(2, [99.0, 99.4]), run(3, [99.0, 99.0])]
    p = stats.paired(a, b)
    assert p["seeds"] == [0, 1, 2] and p["differences"] == pytest.approx([0.1, 0.12, 0.14])
    assert p["mean"] == pytest.approx(0.12) and p["half"] == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    assert p["nonzero"] and p["low"] > 0
    # The same differences with more spread: the interval includes 0.
    wide = stats.paired([run(0, [99.0, 99.5]), run(1, [99.0, 99.6]), run(2, [99.0, 99.7])], b[:3])
    assert wide["mean"] == pytest.approx(0.2) and wide["low"] < 0 and not wide["nonzero"]
    same = stats.paired(b, b)
    assert same["mean"] == 0 and not same["nonzero"]
    with pytest.raises(ValueError, match="no finished seed in common"):
        stats.paired(a[:1], b[1:2])


def test_first_epoch_at_the_target_and_comparisons_by_name():
    records = {"bn_l1": [run(0, [98.0, 99.4, 99.3]), run(1, [98.0, 99.0, 99.1])],
               "ln": [run(0, [99.41, 99.0, 99.2]), run(1, [98.0, 99.0, 99.0])]}
    assert stats.time_to(records["bn_l1"]) == {0: 2, 1: None}
    assert stats.time_to(records["ln"]) == {0: 1, 1: None}
    (a, b, p), = stats.comparisons(records, stats.NORM_PAIRS)  # only bn_l1 - ln has both runs
    assert (a, b) == ("bn_l1", "ln") and p["differences"] == pytest.approx([0.1, 0.1])


def test_a_fall_of_ten_points_in_one_epoch_is_a_collapse_and_noise_is_not():
    history = [{"epoch": i + 1, "test_acc": a} for i, a in enumerate([97.0, 98.27, 45.38, 60.0, 98.0, 87.99, 97.9])]
    assert stats.collapses(history) == [(3, 98.27, 45.38), (6, 98.0, 87.99)]
    assert stats.collapses(history[:2]) == [] and stats.collapses([]) == []
    assert stats.collapses(history, points=60) == []


def test_a_run_never_above_twenty_percent_never_learned():
    history = lambda accs: [{"epoch": i + 1, "test_acc": a} for i, a in enumerate(accs)]
    assert stats.never_learned(history([11.2, 11.35, 11.35]))
    assert not stats.never_learned(history([11.35, 19.99, 20.0]))  # one epoch at 20% is learning
    assert not stats.never_learned(history([98.0, 11.35]))  # learned, then diverged: a collapse instead
    assert not stats.never_learned([])


def test_steady_from_is_the_first_epoch_after_which_every_epoch_is_at_the_target():
    history = lambda accs: [{"epoch": i + 1, "test_acc": a} for i, a in enumerate(accs)]
    assert stats.steady_from(history([99.0, 99.4, 99.3, 99.41, 99.5])) == 4  # epoch 2 reached it, epoch 3 fell
    assert stats.steady_from(history([99.4, 99.4])) == 1  # exactly the target counts, as in first_epoch
    assert stats.steady_from(history([99.5, 99.6, 99.39])) is None  # below it at the end: never steady
    assert stats.steady_from([]) is None
    # Against the definition, by brute force, on random runs near the target
    rng = np.random.default_rng(0)
    for _ in range(200):
        h = history(rng.choice([99.3, 99.4, 99.5], size=rng.integers(1, 8)).tolist())
        from_each = [k for k in range(1, len(h) + 1) if all(e["test_acc"] >= 99.4 for e in h[k - 1:])]
        assert stats.steady_from(h) == (from_each[0] if from_each else None)


def test_paired_values_pairs_by_seed_over_the_common_seeds():
    # differences 1, 1, 3 (seed 3 has no partner): mean 5/3, sd sqrt(4/3), t(0.975, 2 df) = 4.302653
    d = stats.paired_values({0: 1.0, 1: 2.0, 2: 4.0, 3: 9.0}, {0: 0.0, 1: 1.0, 2: 1.0})
    assert d["seeds"] == [0, 1, 2] and d["differences"] == [1.0, 1.0, 3.0]
    assert d["mean"] == pytest.approx(5 / 3)
    assert d["half"] == pytest.approx(4.302653 * (4 / 3) ** 0.5 / 3 ** 0.5, rel=1e-6)
    assert d["nonzero"] is False  # 5/3 - 2.87 < 0
    assert stats.paired_values({0: 1.0}, {1: 1.0}) is None


def test_a_run_fails_by_a_loss_that_is_not_finite_a_collapse_in_either_accuracy_or_never_learning():
    def h(test, train, loss=0.1):
        return [{"epoch": i + 1, "test_acc": a, "train_acc": t, "train_loss": loss, "test_loss": 0.1}
                for i, (a, t) in enumerate(zip(test, train))]
    assert stats.failure(h([98.0, 99.0], [90.0, 97.0])) is None
    assert stats.failure(h([98.0, 99.0], [90.0, 97.0], loss=math.nan)) == "not finite"
    assert stats.failure(h([98.0, 87.9], [90.0, 97.0])) == "collapsed"
    # the control's test seed 3 at 0.1: training accuracy 60.2% -> 24.2% while its evaluated average stayed up
    assert stats.failure(h([97.0, 97.5, 96.0], [40.0, 60.2, 24.2])) == "collapsed"
    assert stats.failure(h([98.0, 97.9], [90.0, 80.1])) is None  # 9.9 points: noise, not a collapse
    assert stats.failure(h([11.0, 12.0], [10.0, 60.0])) == "never learned"
    assert set(stats.FAILURES) == {"not finite", "collapsed", "never learned"}


def test_failure_rates_have_clopper_pearson_intervals():
    # Against the closed form: with 0 failures in n the upper end is 1 - (alpha / 2) ** (1 / n), with n in n the lower
    # end (alpha / 2) ** (1 / n); otherwise the beta quantiles
    from scipy.stats import beta
    assert stats.rate_ci(0, 3) == pytest.approx((0.0, 0.0, 1 - 0.025 ** (1 / 3)))
    assert stats.rate_ci(0, 3)[2] == pytest.approx(0.708, abs=1e-3)  # 0 of 3 is compatible with 71%
    assert stats.rate_ci(3, 3) == pytest.approx((1.0, 0.025 ** (1 / 3), 1.0))
    rate, low, high = stats.rate_ci(1, 5)
    assert (rate, low, high) == pytest.approx((0.2, beta.ppf(0.025, 1, 5), beta.ppf(0.975, 2, 4)))


def test_within_gives_every_key_tied_with_the_best_in_order_and_keeps_an_exact_tie():
    scores = {"a": 99.10, "b": 99.15, "c": 99.05, "d": 98.0}
    assert stats.within(scores, 0.05) == ["a", "b"]  # 99.15 - 99.10 is 0.05 up to rounding: still tied
    assert stats.within(scores, 0.1) == ["a", "b", "c"]
    assert stats.within({"x": 3.0, "y": 4.0, "z": 3.5}, 0.5, lower=True) == ["x", "z"]  # the earliest, for settling
    assert stats.within({}, 0.05) == []


def test_paired_p_values_are_scipys_paired_t_test_and_holm_adjusts_them_step_down():
    from scipy import stats as scipy_stats
    a, b = [99.5, 99.6, 99.7, 99.4], [99.6, 99.4, 99.5, 99.45]
    p = stats.paired_values(dict(enumerate(a)), dict(enumerate(b)))
    assert p["p"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, rel=1e-9)
    assert (p["p"] < 0.05) == p["nonzero"]  # the test and its 95% interval agree
    # Holm by hand: sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1, each raised to the largest before it
    assert stats.holm([0.01, 0.04, 0.03, float("nan"), 0.5])[:3] == pytest.approx([0.04, 0.09, 0.09])
    assert stats.holm([0.01, 0.04, 0.03, float("nan"), 0.5])[4] == 0.5


def test_the_test_sets_sampling_error_is_the_binomial_standard_deviation():
    # 99.5% on 10,000 images: sqrt(0.995 * 0.005 / 10000) = 0.000705, 0.07 points
    assert stats.test_set_error(99.5, 10_000) == pytest.approx(0.0705, abs=1e-4)
