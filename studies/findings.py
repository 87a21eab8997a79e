"""The README's first-screen findings, written from results/ (tools.report renders them), so that a re-run that
changes a number changes the sentence, and one that changes a finding's direction changes its words."""
import os
import textwrap

import numpy as np

from mnist_norms.recipe import Recipe
from mnist_norms.records import load_records
from model import AFFINE, CONTROL, NORMS
from studies import batch_size, experiment, lr_sweep, shift, stats

NORM_NAMES = ("bn_l1", "ln", "gn")  # the experiment's three runs (Recipe.name)
ALIKE = 0.1  # points: paired mean differences below this make the norms "alike" on clean MNIST
SMALL_BATCH = 2  # the batch-size study's smallest batch


def label(name):
    return {"bn_l1": "BN + L1", "ln": "LN", "gn": "GN"}[name]


def clean(records):
    """How the three norms did on clean MNIST over their seeds: the run counts at and steady at the target, the range
    of their means, the largest paired mean difference."""
    done = {n: stats.finished(records.get(n, [])) for n in NORM_NAMES}
    runs = [r for d in done.values() for r in d.values()]
    if not all(done.values()):
        return None
    steady = [stats.steady_from(r["history"]) for r in runs]
    means = [float(np.mean([stats.final(r) for r in d.values()])) for d in done.values()]
    largest = max(abs(p["mean"]) for _, _, p in stats.comparisons(records, stats.NORM_PAIRS))
    seeds = {len(d) for d in done.values()}
    verdict = "alike" if largest < ALIKE else "not alike"
    return (f"**On clean MNIST the three are {verdict}.** Over {'/'.join(map(str, sorted(seeds)))} seeds each their "
            f"mean final test accuracy is {min(means):.2f}% to {max(means):.2f}%; "
            f"{sum(stats.final(r) >= stats.TARGET for r in runs)} of {len(runs)} runs end at or above the course's "
            f"{stats.TARGET}%, and {sum(e is not None and e <= stats.STEADY for e in steady)} of "
            f"{len(runs)} stay there in every epoch from epoch {stats.STEADY} on. Paired by seed, the "
            f"norms' mean differences are {largest:.2f} points or less.")


def batches(results):
    """BN's test error at the smallest batch against LN's and GN's (the batch-size study), and BN + L1 on the
    intensity sets one image at a time (running averages) and in test batches (their statistics) against LN, GN."""
    folder = os.path.join(results, batch_size.FOLDER)
    rows = batch_size.summary(load_records(folder)) if os.path.isdir(folder) else []
    small = {r["norm"]: 100 - r["final_mean"] for r in rows if r["batch_size"] == SMALL_BATCH}
    records = shift.load(results)
    intensity = shift.groups().get("intensity")
    if not {"bn", "ln", "gn"} <= set(small) or not records or not intensity:
        return None
    means = {(n, m): float(np.mean(list(shift.group_means(records, n, m, intensity).values())))
             for n, m in [("bn_l1", shift.EVAL), ("bn_l1", f"batch{shift.BATCHES[0]}"), ("ln", shift.EVAL),
                          ("gn", shift.EVAL)]}
    one, batch = means["bn_l1", shift.EVAL], means["bn_l1", f"batch{shift.BATCHES[0]}"]
    ln, gn = means["ln", shift.EVAL], means["gn", shift.EVAL]
    heading = ("**BN needs a batch; LN and GN do not.**" if small["bn"] > max(small["ln"], small["gn"])
               else "**The batch size did not separate them.**")
    order = "below" if one < min(ln, gn) else "not below"
    lead = "above" if batch > max(ln, gn) else "not above"
    return (f"{heading} Trained at {SMALL_BATCH} images per batch (2 epochs), BN's test error is {small['bn']:.2f}%, "
            f"LN's {small['ln']:.2f}%, GN's {small['gn']:.2f}%. On test images brighter or lower in contrast than "
            f"the training images (the intensity sets), one image at a time, BN + L1's running averages score "
            f"{one:.1f}%, {order} LN's {ln:.1f}% and GN's {gn:.1f}%, which normalize each image by itself; in batches "
            f"of {shift.BATCHES[0]} normalized by their own statistics, BN + L1 scores {batch:.1f}%, {lead} both.")


def failed(records):
    """"none of 10 failed", "1 of 10 failed": the runs of {seed: record} that failed (stats.failure)."""
    k = sum(bool(stats.failure(r["history"])) for r in records.values())
    return f"{k or 'none'} of {len(records)} failed"


def norm_buys(results):
    """The learning-rate sweep and the controls on the test set: where each model trained, and what the controls
    scored at their peaks against the norms."""
    records, _ = experiment.with_control(results)
    folder = os.path.join(results, lr_sweep.FOLDER)
    cells = lr_sweep.table(load_records(folder)) if os.path.isdir(folder) else {}
    if not cells:
        return None

    def trains_at(norm):
        return [p for (n, p), c in sorted(cells.items()) if n == norm and len(lr_sweep.trained(c)) == len(c["finals"])]

    def peaks(ps):
        return ", ".join(f"{p:g}" for p in ps) or "none"
    every = "; ".join(f"{Recipe(n, l1=1e-5 if n == 'BN' else 0).label}: {peaks(trains_at(n))}"
                      for n in NORMS + (CONTROL, AFFINE) if any(k[0] == n for k in cells))
    words = [f"**What a norm buys.** The peaks of the one-cycle schedule at which every seed trained (6 epochs, "
             f"validation split, 3 seeds; {every})."]
    norms = {n: stats.finished(records.get(n, [])) for n in NORM_NAMES}
    clauses = []
    for norm in (CONTROL, AFFINE):
        name = Recipe(norm).name
        done = stats.finished(records.get(name, []))
        if not done or not all(norms.values()):
            continue
        peak = next(iter(done.values()))["config"]["lr"]
        mean, half = stats.mean_ci([stats.final(r) for r in done.values()])
        diffs = [p["mean"] for _, _, p in stats.comparisons(records, [(n, name) for n in NORM_NAMES])]
        at_recipe = stats.finished(load_records(results).get(name, [])) if peak != Recipe.lr else {}
        also = f"; at {Recipe.lr:g}, {failed(at_recipe)}" if at_recipe else ""
        clauses.append(f"{Recipe(norm).label} at {peak:g} ends at {mean:.2f} ± {half:.2f}% ({len(done)} seeds, "
                       f"{failed(done)}{also}), the norms' mean paired differences from it {min(diffs):+.2f} to "
                       f"{max(diffs):+.2f} points")
    if clauses:
        words.append(f"On the test set (20 epochs, the norms at {Recipe.lr:g}): " + "; ".join(clauses) + ".")
    return " ".join(words)


def first_screen(results):
    """The README's first-screen bullets, from results/."""
    records, _ = experiment.with_control(results)
    bullets = [b for b in (clean(records), batches(results), norm_buys(results)) if b]
    return "\n".join(textwrap.fill(b, 117, initial_indent="- ", subsequent_indent="  ") for b in bullets) \
        if bullets else "(no runs in results/ yet)"
