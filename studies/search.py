"""The searches that guard the recipe against divergence, on the validation split, each with its rule (below, fixed
and committed before its first run):

    python -m studies.search --search stress --out .   # LN's divergence with and without a clip: results/tune/stress/
    python -m studies.search --search guard --out .    # the warmed-up average, the clip, label smoothing, weight decay

The stress test counts how often LN diverges in the first epochs, at today's peak and at a higher one, without and
with the gradient's norm clipped. The guard search compares the warmed-up average alone, with the stress test's clip,
and with the clip and label smoothing or weight decay; it chose the warm-up alone, Recipe's ema_warmup now.

Runs resume like train.py's (run the same command again); results go to OUT/results/tune/ (--out: by default
runs/), and each invocation that trains logs its wall time to tune.json there.
"""
import os
import statistics
import sys

import numpy as np

import utils
from mnist_norms import cli, runner
from mnist_norms.recipe import Recipe, experiment
from mnist_norms.records import load_records
from studies import stats
from studies.recipe_search import CLOSE, FOLDER, SETTLE_TIE, TIE, VAL, scores
from studies.tables import NORM_NAMES, runs_cell

# The stress test (--search stress): how often LN diverges as the learning rate rises to its peak, and whether
# clipping the gradient's norm stops it. Its rule, fixed and committed before any of its runs was trained:
#
# 1. LN (one of its ten seeds of the recipe diverged: 98.93% test accuracy after epoch 2, 15.73% after epoch 3),
#    seeds 0 to 19, on the first 50,000 training images, scored on the last 10,000. Each run trains the first
#    STRESS_EPOCHS epochs of the 20-epoch schedule (the rise to the peak, which ends in epoch 3, and the epochs after
#    it) and stops there. The average is warmed up (ema_warmup STRESS_WARMUP), so that the evaluated weights follow
#    the trained ones from epoch 1; everything else is Recipe's defaults.
# 2. A run diverges if its validation accuracy falls by stats.COLLAPSE (10) points or more from one epoch to the next
#    (stats.diverged).
# 3. Stage 1: at today's peak and at STRESS_PEAKS[1], without clipping, every seed.
# 4. The clip is set from stage 1 alone: CLIP_FACTOR times the median, over the stage-1 runs at today's peak that did
#    not diverge, of each run's median gradient norm over epochs 2 to STRESS_EPOCHS (grad_norm_median), rounded to
#    two significant figures: steps with a gradient well above a healthy run's typical one are scaled down to it.
# 5. Stage 2: both peaks with that clip, every seed.
# 6. The clip stops divergence if, at the higher peak, fewer runs diverge with it than without, and at today's peak
#    none does with it. The counts are reported whatever they are.
STRESS_SEEDS = tuple(range(20))
STRESS_EPOCHS = 6
STRESS_PEAKS = (Recipe.lr, 0.3)
STRESS_WARMUP = 10.0
CLIP_FACTOR = 2.0
STRESS_FOLDER = os.path.join(FOLDER, "stress")
# What every run of both searches spells out, so that a run means the same whatever Recipe's defaults: the schedule
# search's choice (peak15_ema), the average warmed up, nothing else.
BASE = {"pct_start": 0.15, "cycle_epochs": None, "final_div": 1e4, "ema": 0.999, "ema_warmup": STRESS_WARMUP,
        "clip": 0.0, "label_smoothing": 0.0, "weight_decay": 0.0}


def stress_name(peak, clip):
    """ "ln_lr0.3_clip0": the name of a stress arm's runs (their files add _seed<S>)."""
    return f"ln_lr{peak:g}_clip{clip:g}"


def stress_clip(records):
    """The clip that rule 4 sets from stage 1's records ({name: [record]}), or None while stage 1 is unfinished."""
    runs = records.get(stress_name(STRESS_PEAKS[0], 0), [])
    done = {r["config"]["seed"]: r["history"] for r in runs if len(r["history"]) >= STRESS_EPOCHS}
    stage1 = [records.get(stress_name(peak, 0), []) for peak in STRESS_PEAKS]
    if len(done) < len(STRESS_SEEDS) or any(
            sum(len(r["history"]) >= STRESS_EPOCHS for r in recs) < len(STRESS_SEEDS) for recs in stage1):
        return None
    typical = [np.median([e["grad_norm_median"] for e in h[1:STRESS_EPOCHS]]) for h in done.values()
               if not stats.diverged(h[:STRESS_EPOCHS])]
    return float(f"{CLIP_FACTOR * np.median(typical):.2g}")


def stress_table(records):
    """{arm name: {"peak", "clip", "runs", "diverged": [seeds], "grad_norm_max": largest over the runs}}."""
    table = {}
    for name, recs in sorted(records.items()):
        recs = [r for r in recs if len(r["history"]) >= STRESS_EPOCHS]
        if not recs:
            continue
        config = recs[0]["config"]
        table[name] = {"peak": config["lr"], "clip": config["clip"], "runs": len(recs),
                       "diverged": [r["config"]["seed"] for r in recs if stats.diverged(r["history"][:STRESS_EPOCHS])],
                       "grad_norm_max": max(e.get("grad_norm_max", float("nan")) for r in recs for e in r["history"])}
    return table


def format_stress_table(table):
    lines = [f"{'arm':<22} {'peak':>5} {'clip':>5} {'runs':>5} {'diverged':>9}  seeds that diverged"]
    for name, t in table.items():
        lines.append(f"{name:<22} {t['peak']:>5g} {t['clip']:>5g} {t['runs']:>5} {len(t['diverged']):>9}  "
                     f"{', '.join(map(str, t['diverged'])) or '-'}")
    return "\n".join(lines)


def run_stress(data, *, device, out, jobs, fresh=False, progress=True, **overrides):
    """Train what the stress test's rule needs next: stage 1, then (once it is complete) stage 2; returns the records
    under OUT/results/tune/stress/. Runs stop after STRESS_EPOCHS epochs and resume like any other."""
    folder = os.path.join(out, "results", STRESS_FOLDER)
    for stage in (1, 2):
        clip = 0.0
        if stage == 2:
            clip = stress_clip(load_records(folder) if os.path.isdir(folder) else {})
            if clip is None:
                print("stress test: stage 2 waits for every run of stage 1")
                break
        print(f"stress test, stage {stage}: LN, seeds {STRESS_SEEDS[0]}-{STRESS_SEEDS[-1]}, peaks "
              f"{', '.join(f'{p:g}' for p in STRESS_PEAKS)}, clip {clip:g}, the first {STRESS_EPOCHS} epochs")
        runs = [Recipe("LN", seed=seed, lr=peak, **{**BASE, "clip": clip, "val": VAL, **overrides})
                for seed in STRESS_SEEDS for peak in STRESS_PEAKS]  # seed by seed: a partial stage is paired
        utils.run_experiments(runs, data, device=device, out=out, jobs=jobs, progress=progress, fresh=fresh,
                              study=runner.Study(folder=STRESS_FOLDER,
                                                names=tuple(stress_name(r.lr, r.clip) for r in runs),
                                                stop_after=STRESS_EPOCHS, invocations="tune.json"))
    return load_records(folder)


# The guard search (--search guard): the stress test's clip and the warmed-up average together, against the warm-up
# alone and against two more changes to the loss, chosen on the validation split. Its rule, fixed and committed before
# any of its runs was trained:
#
# 1. Every candidate is Recipe's defaults of the schedule search's choice (peak15_ema) with the average warmed up
#    (ema_warmup STRESS_WARMUP: it changes only the evaluated average in the first epochs, not the training, so it is
#    in every candidate rather than searched) and the changes in CANDIDATES: "warmup" nothing more; "guard" the
#    stress test's clip (rule 4 of the stress test, set from its stage 1); "guard_ls" the clip and label smoothing
#    LABEL_SMOOTHING; "guard_wd" the clip and weight decay WEIGHT_DECAY. Every field is spelt out, so that a candidate
#    means the same whatever Recipe's defaults.
# 2. Seed 0 of BN + L1, LN and GN for every candidate, 20 epochs, on the first 50,000 training images, scored on the
#    last 10,000. A candidate's score is its mean final validation accuracy over the three norms and its seeds.
# 3. A candidate is out if any of its runs diverges (validation accuracy falls by stats.COLLAPSE points or more from one
#    epoch to the next: stats.diverged).
# 4. Every candidate still in whose seed-0 score is within CLOSE points of the best seed-0 score trains seed 1 too.
# 5. Among those, the candidates still in whose two-seed score is within TIE points of the best are tied on accuracy;
#    of them the rule prefers the one that settles earliest (settle_epoch, mean over its runs); candidates within
#    SETTLE_TIE epochs of the earliest are tied again, and that tie goes by PREFERENCE: "guard" first if, in the stress
#    test at today's peak, fewer runs diverged with the clip than without it, else "warmup" first; then the others in
#    CANDIDATES' order (fewer changes first).
# 6. Recipe's defaults become the choice, and the ten paired seeds are trained with it.
LABEL_SMOOTHING = 0.1
WEIGHT_DECAY = 5e-4  # the usual SGD weight decay of CIFAR-10 CNN recipes
CANDIDATES = ("warmup", "guard", "guard_ls", "guard_wd")
GUARD_FOLDER = os.path.join(FOLDER, "guard")


def candidate(cid, clip):
    """The Recipe fields of one candidate of the guard search, every field the search varies spelt out."""
    return {**BASE, **{"warmup": {}, "guard": {"clip": clip},
                       "guard_ls": {"clip": clip, "label_smoothing": LABEL_SMOOTHING},
                           "guard_wd": {"clip": clip, "weight_decay": WEIGHT_DECAY}}[cid]}


def stress_records(results):
    """The stress test's records under a results/ folder ({} if there are none)."""
    path = os.path.join(results, STRESS_FOLDER)
    return load_records(path) if os.path.isdir(path) else {}


def preference(stress):
    """The guard rule's order for its last tie (rule 5), from the stress test's records; None until its stage 2 at
    today's peak is complete."""
    table, clip = stress_table(stress), stress_clip(stress)
    if clip is None or table.get(stress_name(STRESS_PEAKS[0], clip), {}).get("runs", 0) < len(STRESS_SEEDS):
        return None
    guard_first = len(table[stress_name(STRESS_PEAKS[0], clip)]["diverged"]) < \
        len(table[stress_name(STRESS_PEAKS[0], 0)]["diverged"])
    first = ["guard", "warmup"] if guard_first else ["warmup", "guard"]
    return first + [c for c in CANDIDATES if c not in first]


def guard_table(records):
    """scores() of the guard search's candidates, each with "diverged": its runs' names that diverged."""
    table = scores(records, {cid: cid for cid in CANDIDATES})
    for cid, t in table.items():
        names = [f"{recipe.name}_{cid}" for recipe in experiment()]
        t["diverged"] = [f"{name}_seed{r['config']['seed']}" for name in names for r in records.get(name, [])
                         if stats.diverged(r["history"])]
    return table


def guard_finalists(table):
    """The candidates the guard rule gives seed 1 (rules 3 and 4): those without a diverged run whose seed-0 score is
    within CLOSE of the best such one; None until every candidate has its seed 0."""
    if len(table) < len(CANDIDATES):
        return None
    return stats.within({cid: t["seeds"][0] for cid, t in table.items() if not t["diverged"]}, CLOSE)


def guard_choose(table, order):
    """(chosen candidate, the ones tied on accuracy, the ones tied on settling too) by the guard rule, with `order`
    its preference (preference()); None while runs it needs are missing."""
    finalists = guard_finalists(table)
    if not finalists or order is None or any(1 not in table[cid]["seeds"] for cid in finalists):
        return None
    alive = [cid for cid in finalists if not table[cid]["diverged"]]  # seed 1 may have diverged
    tied = stats.within({cid: table[cid]["score"] for cid in alive}, TIE)
    settled = stats.within({cid: table[cid]["settle"] for cid in tied}, SETTLE_TIE, lower=True)
    return min(settled, key=order.index), tied, settled


def run_guard_search(data, *, device, out, jobs, fresh=False, progress=True, **overrides):
    """Train what the guard rule needs next, until it can choose; returns the records under
    OUT/results/tune/guard/. Needs the stress test's stage 1 (its clip)."""
    results = os.path.join(out, "results")
    clip = stress_clip(stress_records(results))
    if clip is None:
        raise ValueError("the guard search needs the stress test's clip: run python -m studies.search --search stress "
                         "first "
                         f"(its stage 1 is not complete under {os.path.join(results, STRESS_FOLDER)})")
    folder = os.path.join(results, GUARD_FOLDER)
    for stage, seed in ((1, 0), (2, 1)):
        records = load_records(folder) if os.path.isdir(folder) else {}
        if stage == 1:
            todo = list(CANDIDATES)
        else:
            todo = guard_finalists(guard_table(records)) or []
        print(f"guard search, stage {stage}: seed {seed} of {len(todo)} candidate{'s' if len(todo) != 1 else ''}"
              f" (clip {clip:g})")
        runs = [r for cid in todo
                for r in experiment(seeds=(seed,), **{"val": VAL, **candidate(cid, clip), **overrides})]
        names = [f"{r.name}_{cid}" for cid in todo for r in experiment(seeds=(seed,))]
        if runs:
            utils.run_experiments(runs, data, device=device, out=out, jobs=jobs, progress=progress, fresh=fresh,
                                  study=runner.Study(folder=GUARD_FOLDER, names=tuple(names), invocations="tune.json"))
    return load_records(folder) if os.path.isdir(folder) else {}


def format_table(table):
    lines = [f"{'setting':<28} {'seed 0':>7} {'seed 1':>7} {'score':>7} {'settles':>7} {'s/epoch':>8}"]
    for sid, t in sorted(table.items(), key=lambda kv: -kv[1]["score"]):
        s1 = f"{t['seeds'][1]:.3f}" if 1 in t["seeds"] else ""
        lines.append(f"{sid:<28} {t['seeds'][0]:>7.3f} {s1:>7} {t['score']:>7.3f} {t['settle']:>7.1f} "
                     f"{t['seconds']:>8.1f}")
    return "\n".join(lines)


def stress_markdown(results):
    """The stress test (py --search stress): each arm's runs, the runs that diverged, validation accuracy after
    epochs 1 and 6 and the largest gradient norm; the clip its rule set, once stage 1 is complete."""
    records = stress_records(results)
    if not records:
        return "(no stress runs yet: `python -m studies.search --search stress --out .`)"
    table, clip = stress_table(records), stress_clip(records)
    lines = [f"| peak lr | clip | runs (of {len(STRESS_SEEDS)}) | diverged | val acc % after epoch 1 "
             f"| after epoch {STRESS_EPOCHS} | median gradient norm, epochs 2-{STRESS_EPOCHS} (median "
             "over runs) | largest gradient norm |", "|---|---|---|---|---|---|---|---|"]
    for name, t in sorted(table.items(), key=lambda kv: (kv[1]["clip"], kv[1]["peak"])):
        runs = [r for r in records[name] if len(r["history"]) >= STRESS_EPOCHS]
        at = lambda epoch: runs_cell({r["config"]["seed"]: r["history"][epoch - 1]["test_acc"] for r in runs},
                                     {r["config"]["seed"]: how for r in runs
                                      if (how := stats.failure(r["history"][:epoch]))})
        typical = statistics.median(statistics.median(e["grad_norm_median"] for e in r["history"][1:STRESS_EPOCHS])
                                    for r in runs)
        seeds = ", ".join(f"seed {s}" for s in t["diverged"])
        lines.append(f"| {t['peak']:g} | {t['clip']:g} | {t['runs']} | {len(t['diverged'])}"
                     f"{f' ({seeds})' if seeds else ''} | {at(1)} | {at(STRESS_EPOCHS)} "
                     f"| {typical:.2f} | {t['grad_norm_max']:.1f} |")
    lines += ["", "Validation accuracy: the last 10,000 training images, mean ± the 95% interval over the runs; a run "
                  "that failed by then (`studies.stats.failure`) is given apart, the interval taken over the others. "
                  + (f"The clip set by rule 4 from stage 1: {clip:g}." if clip is not None else
                     "Stage 1 is not complete: the clip is not set yet.")]
    low, high = STRESS_PEAKS
    arms = [table.get(stress_name(peak, c)) for peak in (low, high) for c in (0, clip if clip is not None else -1)]
    if all(a is not None and a["runs"] == len(STRESS_SEEDS) for a in arms):
        (low0, low_clip, high0, high_clip) = (len(a["diverged"]) for a in arms)
        stops = high_clip < high0 and low_clip == 0
        lines += ["", f"Rule 6: at {high:g}, {high_clip} of the runs diverged with the clip and {high0} without; at "
                      f"{low:g}, {low_clip} with it and {low0} without. By the rule, the clip "
                      + ("stops divergence." if stops else "is not shown to stop divergence"
                         + (f" (no run diverged at {high:g} without it)." if high0 == 0 else "."))]
    return "\n".join(lines)


def guard_markdown(results):
    """The guard search (py --search guard): every candidate's validation score, settle epoch and divergences, and
    the choice by its rule, or what the rule still needs."""
    folder = os.path.join(results, GUARD_FOLDER)
    records = load_records(folder) if os.path.isdir(folder) else {}
    table = guard_table(records)
    if not table:
        return "(no finished runs yet: `python -m studies.search --search guard --out .`)"
    order = preference(stress_records(results))
    chosen = guard_choose(table, order)
    lines = ["| candidate | BN + L1 / LN / GN val acc %, seed 0 | seed 1 | score (mean) | settles at epoch (mean) "
             "| diverged | chosen |", "|---|---|---|---|---|---|---|"]
    for cid, t in sorted(table.items(), key=lambda kv: -kv[1]["score"]):
        per = lambda seed: " / ".join(f"{r['history'][-1]['test_acc']:.2f}" for name in NORM_NAMES
                                      for r in records.get(f"{name}_{cid}", []) if r["config"]["seed"] == seed)
        mark = "**chosen**" if chosen and cid == chosen[0] else ("tied" if chosen and cid in chosen[2] else "")
        lines.append(f"| {cid} | {per(0)} | {per(1) if 1 in t['seeds'] else ''} | {t['score']:.3f} | {t['settle']:.1f} "
                     f"| {', '.join(t['diverged']) or 'none'} | {mark} |")
    if chosen:
        status = f"Chosen by the rule: `{chosen[0]}`"
    else:
        close = guard_finalists(table)
        if not close:
            status = (f"Not decided yet: seed 0 has finished for {len(table)} of the {len(CANDIDATES)} "
                      "candidates, then seed 1 of the close ones")
        else:
            status = (f"Not decided yet: seed 1 of the candidates within {CLOSE:.2f} points of the best seed-0 "
                      f"score ({', '.join(close)}) has finished for "
                      f"{sum(1 in table[c]['seeds'] for c in close)} of them")
        if order is None:
            status += "; the stress test's stage 2 sets the last tie's order"
        status += " (`python -m studies.search --search guard --out .` resumes)"
    lines += ["", f"Validation accuracy: the last {VAL:,} training images, after epoch 20, training on the other "
                  f"50,000. Score: the mean over the three norms (and seeds). {status}."]
    return "\n".join(lines)


def parse_args(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--search", choices=("guard", "stress"), default="guard",
                   help="which search: the guard search (the warmed-up average, the clip against divergence, label "
                        "smoothing, weight decay), or the stress test of LN's divergence with and without clipping")
    cli.add_run_arguments(p, figures=False)
    cli.add_quick_look_arguments(p, Recipe.epochs)
    return cli.finish_run_arguments(p.parse_args(argv))


def main(argv=None):
    args = parse_args(argv)
    search = {"guard": run_guard_search, "stress": run_stress}[args.search]
    records = cli.run_quick_lookable(args, parse_args([]), "studies.search", search, utils.LOG_HEADER)
    print()
    if args.search == "stress":
        print(format_stress_table(stress_table(records)))
        clip = stress_clip(records)
        print(f"\nthe clip of stage 2: {clip:g}" if clip is not None else "\nstage 1 is not complete yet")
        return 0
    table = guard_table(records)
    print(format_table(table))
    print("diverged: " + ("; ".join(f"{cid}: {', '.join(t['diverged'])}" for cid, t in table.items() if t["diverged"])
                          or "none"))
    chosen = guard_choose(table, preference(stress_records(os.path.join(args.out, "results"))))
    print(f"\nchosen: {chosen[0]} (tied on accuracy: {', '.join(chosen[1])}; on settling too: "
          f"{', '.join(chosen[2])})" if chosen else "\nnot yet decided")
    return 0


if __name__ == "__main__":
    sys.exit(main())
