"""Statistics over seeds: means with Student-t confidence intervals, paired differences, time to an accuracy."""
import math

import numpy as np
from scipy import stats

LEVEL = 0.95     # the confidence level of every interval
TARGET = 99.4    # test accuracy (%) for the time-to-accuracy figures
# epoch: "steady in the last epochs" counts a run at >= TARGET in every epoch from this one on, the last 9 of 20 (the
# course does not say how many; docs/glossary.md, and docs/experiments.md also counts from epochs 10 and 15)
STEADY = 12
COLLAPSE = 10.0  # points: test accuracy falling this much from one epoch to the next is a divergence, not noise
TIE = 0.05  # points: mean accuracies this close to the best are tied, in every study's rule
VALIDATION = 10_000  # the validation split of every study: the last this many training images (Recipe.val)
NOT_LEARNED = 20.0  # test accuracy (%): a run below this in every epoch never learned (guessing one class: ~11%)


def mean_ci(values, level=LEVEL):
    """(mean, half-width) of the Student-t interval for the mean of `values` (n - 1 degrees of freedom):
    mean ± half-width covers the true mean with probability `level` if the values are independent draws of a
    normal variable. The half-width is nan for fewer than two values (no spread to estimate)."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"expected a non-empty list of numbers, got {values!r}")
    if len(x) < 2:
        return float(x[0]), math.nan
    sem = x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(stats.t.ppf((1 + level) / 2, len(x) - 1) * sem)


def final(record, key="test_acc"):
    """A run's last epoch's `key`."""
    return record["history"][-1][key]


def finished(records):
    """{seed: record} of the finished runs among `records`."""
    return {r["config"]["seed"]: r for r in records if len(r["history"]) >= r["config"]["epochs"]}


def paired(records_a, records_b, key="test_acc", level=LEVEL):
    """A minus B, paired by seed, over the seeds both have finished: {"seeds", "differences", "mean", "half",
    "low", "high", "nonzero"} (nonzero: the interval excludes 0). With one seed the run shares its initial
    weights, batches, augmentation and dropout masks with the other (tests/test_utils.py), so the difference
    of a pair cancels what the seed does to both."""
    a, b = finished(records_a), finished(records_b)
    if not set(a) & set(b):
        raise ValueError("the two runs have no finished seed in common")
    return paired_values({s: final(r, key) for s, r in a.items()}, {s: final(r, key) for s, r in b.items()}, level)


def paired_values(a, b, level=LEVEL):
    """A minus B over the seeds both have, from {seed: value} each: as paired(), or None without a common seed."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean, half = mean_ci(diffs, level)
    return {"seeds": seeds, "differences": diffs, "mean": mean, "half": half, "low": mean - half,
            "high": mean + half, "nonzero": bool(half == half and (mean - half > 0 or mean + half < 0)),
            "p": p_value(diffs)}


def p_value(diffs):
    """The two-sided p-value of the paired t-test that the mean difference is 0 (the test whose 95% interval is
    mean_ci's: p < 0.05 exactly when that interval excludes 0); nan for fewer than two values."""
    x = np.asarray(diffs, dtype=float)
    if len(x) < 2:
        return math.nan
    sd = x.std(ddof=1)
    if sd == 0:
        return 0.0 if x.mean() != 0 else 1.0
    t = x.mean() / (sd / math.sqrt(len(x)))
    return float(2 * stats.t.sf(abs(t), len(x) - 1))


def holm(pvalues):
    """Holm's step-down adjustment of a family of p-values (nan left out and kept as nan): sorted ascending, the i-th
    (from 0) is multiplied by (m - i), then each is raised to the largest before it and capped at 1. An adjusted p
    below 1 - LEVEL keeps the family's chance of any false "differs" at most 1 - LEVEL."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if p == p)
    adjusted, running = [math.nan] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def test_set_error(accuracy, images):
    """The sampling error, in points, of an accuracy (%) measured on `images` independent test images: the binomial
    standard deviation 100 · sqrt(p (1 - p) / n). It is what a second test set of the same size would move it by."""
    p = accuracy / 100
    return 100 * math.sqrt(p * (1 - p) / images)


def first_epoch(history, target=TARGET, key="test_acc"):
    """The first epoch whose `key` is at least `target`, or None if none is."""
    return next((e["epoch"] for e in history if e[key] >= target), None)


def steady_from(history, target=TARGET, key="test_acc"):
    """The first epoch from which `key` stays at least `target` through the last epoch, or None if the last epoch
    is below it: a run steady from epoch 12 is at >= target in every epoch from 12 on."""
    epoch = None
    for e in history:
        epoch = (epoch or e["epoch"]) if e[key] >= target else None
    return epoch


def collapses(history, points=COLLAPSE, key="test_acc"):
    """[(epoch, accuracy before, accuracy after)] for every epoch whose `key` fell by at least `points` from the
    epoch before: training diverged there (seen with LN at the one-cycle schedule's peak learning rate)."""
    return [(e.get("epoch", i + 2), prev[key], e[key]) for i, (prev, e) in enumerate(zip(history, history[1:]))
            if prev[key] - e[key] >= points]


def diverged(history, points=COLLAPSE, key="test_acc"):
    """Whether a run diverged: its `key` fell by `points` or more from one epoch to the next (collapses)."""
    return bool(collapses(history, points, key))


def never_learned(history, below=NOT_LEARNED, key="test_acc"):
    """True if `key` stayed below `below` in every epoch: the run never got far past guessing one class."""
    return bool(history) and all(e[key] < below for e in history)


def within(scores, points, *, lower=False):
    """The keys of {key: score} whose score is within `points` of the best one (the highest, or with lower the
    lowest), in the dict's order: every rule's tie. The 1e-9 keeps a difference of exactly `points` in despite
    floating-point rounding."""
    if not scores:
        return []
    if lower:
        best = min(scores.values())
        return [k for k, v in scores.items() if v <= best + points + 1e-9]
    best = max(scores.values())
    return [k for k, v in scores.items() if v >= best - points - 1e-9]


# The ways a run fails, in the order failure() checks them
FAILURES = ("not finite", "collapsed", "never learned")


def failure(history, key="test_acc"):
    """How a run failed, or None if it did not: "not finite" (a training or evaluated loss that is not finite, in any
    epoch), "collapsed" (its training accuracy or its evaluated `key` fell by COLLAPSE points or more from one epoch
    to the next: collapses), or "never learned" (its evaluated `key` below NOT_LEARNED in every epoch). A run that
    learned and then fell counts from its training accuracy too: the evaluated average of the weights can lag it."""
    if any(not math.isfinite(e[k]) for e in history for k in ("train_loss", "test_loss") if k in e):
        return "not finite"
    if collapses(history, key=key) or (all("train_acc" in e for e in history) and collapses(history, key="train_acc")):
        return "collapsed"
    return "never learned" if never_learned(history, key=key) else None


def rate_ci(k, n, level=LEVEL):
    """(k / n, low, high): a failure rate of k in n runs and its exact (Clopper-Pearson) interval at `level`."""
    ci = stats.binomtest(k, n).proportion_ci(level, method="exact")
    return k / n, float(ci.low), float(ci.high)


# The paired comparisons the report makes, by run name (Recipe.name): A minus B for the same seeds.
NORM_PAIRS = [("bn_l1", "ln"), ("bn_l1", "gn"), ("gn", "ln")]
# each norm against each control (model.CONTROLS), at the recipe's peak (their names) and at the peak the sweep's rule
# chose for each control (<name>_lr<peak>, studies.experiment.every_run); then the control that lacks only the
# statistics against the first, which lacks the scaled start and γ, β too
CONTROL_PAIRS = [("bn_l1", "none"), ("ln", "none"), ("gn", "none"), ("bn_l1", "affine"), ("ln", "affine"),
                 ("gn", "affine")]
START_PAIRS = [("affine", "none")]
L1_PAIRS = [("bn_l1", "bn")]
# GroupNorm's number of groups, each against the default 2 (gn). One group is LN (model.make_norm): that comparison
# is NORM_PAIRS' GN against LN, not stated twice.
GROUP_PAIRS = [("gn_g5", "gn"), ("gn_g10", "gn")]


def comparisons(records, pairs):
    """[(name A, name B, paired(A, B))] for the pairs in `pairs` whose two runs share a finished seed."""
    out = []
    for a, b in pairs:
        if a in records and b in records and set(finished(records[a])) & set(finished(records[b])):
            out.append((a, b, paired(records[a], records[b])))
    return out


def time_to(records, target=TARGET):
    """{seed: first epoch at >= target % test accuracy, or None} over a run's finished seeds."""
    return {seed: first_epoch(r["history"], target) for seed, r in sorted(finished(records).items())}


def steady(records, target=TARGET):
    """{seed: steady_from(its history), or None} over a run's finished seeds."""
    return {seed: steady_from(r["history"], target) for seed, r in sorted(finished(records).items())}
