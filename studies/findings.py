"""The README's first-screen findings, written from results/ (tools.report renders them), so that a re-run that
changes a number changes the sentence, and one that changes a finding's direction changes its words."""
import os
import textwrap

import numpy as np

from mnist_norms.recipe import Recipe
from mnist_norms.records import load_records
from studies import batch_size, corruptions, experiment, shift, stats, tolerance

NORM_NAMES = ("bn_l1", "ln", "gn")  # the experiment's three runs (Recipe.name)
ALIKE = 0.1  # points: paired mean differences below this make the norms "alike" on clean MNIST
SMALL_BATCH = 2  # the batch-size study's smallest batch


def label(name):
    return {"bn_l1": "BN + L1", "ln": "LN", "gn": "GN"}[name]


def clean(records, labels=None):
    """How the three norms did on clean MNIST over their seeds: the run counts at and steady at the target, the range
    of their means, the largest paired mean difference and the largest its interval allows, Holm's correction, and
    the test set's own sampling error beside them."""
    done = {n: stats.finished(records.get(n, [])) for n in NORM_NAMES}
    runs = [r for d in done.values() for r in d.values()]
    if not all(done.values()):
        return None
    steady = [stats.steady_from(r["history"]) for r in runs]
    means = [float(np.mean([stats.final(r) for r in d.values()])) for d in done.values()]
    rows = [row for row in experiment.family(records, labels or {}) if row[0] == "norm"]
    largest = max(abs(row[5]["mean"]) for row in rows)
    allowed = max(max(abs(row[5]["low"]), abs(row[5]["high"])) for row in rows)
    survive = [f"{row[3]} against {row[4]}" for row in rows if row[6] < 1 - stats.LEVEL]
    alone = [f"{row[3]} − {row[4]}" for row in rows if row[5]["nonzero"] and not row[6] < 1 - stats.LEVEL]
    family = len(experiment.family(records, labels or {}))
    images = runs[0]["config"].get("eval_images", 10_000)  # the test set, unless a record says otherwise
    error = stats.test_set_error(float(np.mean(means)), images)
    seeds = {len(d) for d in done.values()}
    verdict = "alike" if largest < ALIKE else "not alike"
    return (f"**On clean MNIST the three are {verdict}.** Over {'/'.join(map(str, sorted(seeds)))} seeds each their "
            f"mean final test accuracy is {min(means):.2f}% to {max(means):.2f}%; "
            f"{sum(stats.final(r) >= stats.TARGET for r in runs)} of {len(runs)} runs end at or above the course's "
            f"{stats.TARGET}%, and {sum(e is not None and e <= stats.STEADY for e in steady)} of "
            f"{len(runs)} stay there in every epoch from epoch {stats.STEADY} on. Paired by seed, the norms' mean "
            f"differences are {largest:.3f} points or less ({largest * images / 100:.0f} test images), and their 95% "
            f"intervals allow differences up to {allowed:.2f} points; "
            + (f"{' and '.join(alone)} exclude{'s' if len(alone) == 1 else ''} 0 in its own interval, but " if alone
               else "")
            + (f"{', '.join(survive)} survive{'s' if len(survive) == 1 else ''}" if survive else "none survives")
            + f" Holm's correction over the findings' {family} comparisons. All of it is one test set of {images:,} "
            f"images: another set of that size would move each model's accuracy by about {error:.2f} points (the "
            f"binomial standard deviation), which the intervals over seeds do not include.")


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
    held = ", ".join(corruptions.GROUPS["intensity"])
    return (f"{heading} Trained at {SMALL_BATCH} images per batch (2 epochs, 3 seeds), BN's (without L1) test error is "
            f"{small['bn']:.2f}%, LN's {small['ln']:.2f}%, GN's {small['gn']:.2f}%. On the intensity sets ({held}: "
            f"{len(intensity)} sets), one image at a time, BN + L1's running averages score {one:.1f}%, {order} LN's "
            f"{ln:.1f}% and GN's {gn:.1f}%, which normalize each image by itself; with each test batch of "
            f"{shift.BATCHES[0]} normalized by its own statistics, BN + L1 scores {batch:.1f}%, {lead} both (each "
            f"batch cut from one set, BN's best case; LN and GN adapt to nothing at test time).")


def failed(records):
    """"none of 10 failed", "1 of 10 failed": the runs of {seed: record} that failed (stats.failure)."""
    k = sum(bool(stats.failure(r["history"])) for r in records.values())
    return f"{k or 'none'} of {len(records)} failed"


def norm_buys(results):
    """What the controls scored against the norms at the recipe's peak, then at the peak the sweep's rule chose for
    each; the tolerance under the recipe's schedule; the sweep's, under its own 6-epoch schedule."""
    records, labels = experiment.with_control(results)
    norms = {n: stats.finished(records.get(n, [])) for n in NORM_NAMES}
    if not all(norms.values()):
        return None
    words = [f"At the recipe's peak ({Recipe.lr:g}; 20 epochs, test set):"]
    rows = experiment.family(records, labels)
    clauses = []
    for name in experiment.control_rows(records):
        done = stats.finished(records[name])
        fails = {s: how for s, r in done.items() if (how := stats.failure(r["history"]))}
        ok = [stats.final(r) for s, r in done.items() if s not in fails]
        pairs = [row for row in rows if row[2] == name and row[1] in NORM_NAMES]
        if not pairs or len(ok) < 2:
            continue
        mean, half = stats.mean_ci(ok)
        diffs = [row[5]["mean"] for row in pairs]
        survive = sum(row[6] < 1 - stats.LEVEL for row in pairs)
        if fails:  # a paired difference would mix the failed runs in: the findings table gives it
            low = sum(stats.final(done[s]) < stats.NOT_LEARNED for s in fails)  # failed runs need not end broken
            clauses.append(f"{labels.get(name, name)}: {len(fails)} of {len(done)} runs failed ({low} ending below "
                           f"{stats.NOT_LEARNED:g}%), the other {len(ok)} end at {mean:.2f} ± {half:.2f}%")
            continue
        clauses.append(f"{labels.get(name, name)}: none of {len(done)} runs failed, they end at {mean:.2f} ± "
                       f"{half:.2f}%, the norms' mean paired differences from it {min(diffs):+.2f} to "
                       f"{max(diffs):+.2f} points ({survive or 'none'} of {len(pairs)} surviving Holm's correction)")
    if not clauses:
        return None
    at_recipe = [c for c in clauses if f"(peak {Recipe.lr:g})" in c]
    words.append("; ".join(at_recipe) + ".")
    others = [c for c in clauses if c not in at_recipe]
    if others:
        words.append("Each control at the peak its rule chose on the validation split, against the norms at "
                     f"{Recipe.lr:g}: " + "; ".join(others) + ".")
    tolerated = tolerance.summary(results)
    if tolerated:
        words.append(tolerated)
    return " ".join(words)


def norm_buys_text(results):
    """The README's paragraph on what a norm buys (tools.report's block "norm-buys"), from results/."""
    text = norm_buys(results)
    return textwrap.fill(text, 120) if text else "(no control runs in results/ yet)"


def first_screen(results):
    """The README's first-screen bullets on the three norms, from results/."""
    records, labels = experiment.with_control(results)
    bullets = [b for b in (clean(records, labels), batches(results)) if b]
    return "\n".join(textwrap.fill(b, 117, initial_indent="- ", subsequent_indent="  ") for b in bullets) \
        if bullets else "(no runs in results/ yet)"
