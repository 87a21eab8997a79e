"""The recipe searches that chose today's augmentation and schedule, kept as the record of that choice: every setting
compared on the validation split, and the rule that picked one, each fixed before its first run.

Every setting trained BN + L1, LN and GN for 20 epochs on the first 50,000 training images and was scored on the last
10,000 (never on the test set). Their runs (results/tune/, results/tune/schedule/) predate today's arithmetic: their
augmentation's affine maps were computed in Intel MKL, whose last digits follow the CPU, so today's code does not
re-run them bit for bit. Commit fd9fe12 does: `git checkout fd9fe12`, then `python train.py --rerun FILE` (on a CPU
where MKL runs the branch that made them; docs/experiments.md). This module renders their tables from the files.

The augmentation search compared the augmentation, dropout and batch size in GRID. Its rule:

1. Seed 0 of the three norms for every setting in GRID. A setting's score is its mean final (epoch 20)
   validation accuracy over the three norms and over the seeds it has.
2. Every setting whose seed-0 score is within CLOSE points of the best seed-0 score also trains seed 1.
3. Among those, the settings whose two-seed score is within TIE points of the best are tied, and the tie
   goes to the cheapest (cost()): no dropout before dropout, then the larger batch, then rotation before the full
   affine map.

The schedule search compared the recipe it started from ("today": a one-cycle peaking after 30% of the steps, no
average) with changes to its learning-rate schedule and an average of its weights (SCHEDULES). Its rule rewards both
the final accuracy and a run that gets there early and stays:

1. Seed 0 of the three norms for every setting in SCHEDULES. A setting's score is its mean final validation accuracy
   over the three norms and over the seeds it has.
2. Every setting whose seed-0 score is within CLOSE points of the best seed-0 score also trains seed 1.
3. Among those, the settings whose two-seed score is within TIE points of the best are tied on accuracy. Of
   them the rule prefers the one that settles earliest (settle_epoch, mean over its runs). Settings within
   SETTLE_TIE epochs of the earliest are tied again, and that tie goes to the cheapest (schedule_cost()): today's
   recipe, then no average before the average, then fewer changes.

It chose peak15_ema, which is Recipe's defaults now.
"""
import itertools
import os

import numpy as np

from mnist_norms.config import describe_augmentation
from mnist_norms.recipe import Recipe, experiment
from mnist_norms.records import load_records
from studies import stats
from studies.tables import NORM_NAMES, diverged_runs, ordered

# Each augmentation names all four of its settings, so that a setting means the same whatever Recipe's defaults.
AUGMENTATIONS = {
    "rotate": dict(degrees=7.0, translate=0.0, scale=0.0, shear=0.0),
    "affine": dict(degrees=7.0, translate=0.1, scale=0.1, shear=5.0),
}
GRID = {"augmentation": tuple(AUGMENTATIONS), "dropout": (0.0, 0.05), "batch_size": (64, 128)}
VAL = stats.VALIDATION  # validation images, held out from the end of the training set
CLOSE = 0.10     # points: a setting this close to the best after seed 0 gets a second seed
TIE = stats.TIE  # points: settings this close to the best after two seeds are tied
FOLDER = "tune"

# The schedule every run before the schedule search used: one cycle over all epochs, peaking after 30% of it, and no
# average of the weights. Each setting of the search is the changes it makes to it; final_div 40 ends a shorter cycle
# at lr / 1000 (1e-4), low enough to settle, not so low that the epochs after the cycle train nothing.
FIRST_SCHEDULE = {"pct_start": 0.3, "cycle_epochs": None, "final_div": 1e4, "ema": 0.0}
CHANGES = {
    "today": {},
    "ema": {"ema": 0.999},
    "peak15": {"pct_start": 0.15},
    "peak15_ema": {"pct_start": 0.15, "ema": 0.999},
    "cycle14": {"cycle_epochs": 14, "final_div": 40.0},
    "cycle14_ema": {"cycle_epochs": 14, "final_div": 40.0, "ema": 0.999},
    "cycle12": {"cycle_epochs": 12, "final_div": 40.0},
    "cycle12_ema": {"cycle_epochs": 12, "final_div": 40.0, "ema": 0.999},
}
SCHEDULES = {sid: {**FIRST_SCHEDULE, **changes} for sid, changes in CHANGES.items()}
INCUMBENT = "affine_dropout0_bs64"  # the augmentation search's choice, whose runs in FOLDER are "today"
SCHEDULE_FOLDER = os.path.join(FOLDER, "schedule")
SETTLE = 0.1      # points: a run has settled once its validation accuracy stays this close to its final one
SETTLE_TIE = 1.0  # epochs: settings that settle this close to the earliest are tied


def settings():
    """Every setting of the grid, as {"augmentation": ..., "dropout": ..., "batch_size": ...}."""
    return [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]


def setting_id(setting):
    """ "affine_dropout0.05_bs64": the setting's part of its runs' file names."""
    return f"{setting['augmentation']}_dropout{setting['dropout']:g}_bs{setting['batch_size']}"


def settle_epoch(history, points=SETTLE, key="test_acc"):
    """The first epoch from which `key` stays within `points` of its final value through the last epoch."""
    final, epoch = history[-1][key], len(history)
    while epoch > 1 and abs(history[epoch - 2][key] - final) <= points + 1e-9:
        epoch -= 1
    return epoch


def scores(records, by_id=None):
    """{setting id: {"seeds": {seed: score}, "score": mean, "settle": mean settle epoch, "runs": n, "seconds": mean
    s/epoch}} over the settings (by_id: {id: setting}; by default the augmentation search's) whose three norms have
    finished for at least seed 0. A seed counts once all three norms have finished it."""
    out = {}
    norms = [r.name for r in experiment()]
    for sid, setting in (by_id or {setting_id(s): s for s in settings()}).items():
        by_seed = {}
        for name, recs in records.items():
            if name not in {f"{norm}_{sid}" for norm in norms}:
                continue
            for seed, r in stats.finished(recs).items():
                by_seed.setdefault(seed, []).append(r)
        done = {seed: recs for seed, recs in by_seed.items() if len(recs) == 3}
        if 0 not in done:
            continue
        finals = {seed: float(np.mean([r["history"][-1]["test_acc"] for r in recs])) for seed, recs in done.items()}
        runs = [r for recs in done.values() for r in recs]
        out[sid] = {"setting": setting, "seeds": finals, "score": float(np.mean(list(finals.values()))),
                    "settle": float(np.mean([settle_epoch(r["history"]) for r in runs])), "runs": len(runs),
                    "seconds": float(np.mean([e["seconds"] for r in runs for e in r["history"]]))}
    return out


def second_seeds(table, planned=None):
    """The settings (ids) that the rule gives a second seed: within CLOSE of the best seed-0 score. None until every
    setting (of `planned`, by default the augmentation search's count) has its seed-0 score."""
    if len(table) < (planned or len(settings())):
        return None
    return stats.within({sid: t["seeds"][0] for sid, t in table.items()}, CLOSE)


def cost(setting):
    """The rule's order of cheapness, cheapest first (see the module's docstring)."""
    return setting["dropout"] > 0, -setting["batch_size"], list(AUGMENTATIONS).index(setting["augmentation"])


def choose(table):
    """(chosen setting id, the tied ids) by the rule, or None while runs it needs are missing."""
    finalists = second_seeds(table)
    if finalists is None or any(1 not in table[sid]["seeds"] for sid in finalists):
        return None
    tied = stats.within({sid: table[sid]["score"] for sid in finalists}, TIE)
    return min(tied, key=lambda sid: cost(table[sid]["setting"])), tied


def schedule_cost(sid):
    """The schedule rule's order of cheapness, cheapest first: today's recipe, no average, fewer changes."""
    changes = {k for k, v in SCHEDULES[sid].items() if FIRST_SCHEDULE.get(k) != v}
    return sid != "today", SCHEDULES[sid].get("ema", 0) > 0, len(changes)


def schedule_choose(table):
    """(chosen setting id, the ids tied on accuracy, the ids tied on settling too) by the schedule search's rule, or
    None while runs it needs are missing."""
    finalists = second_seeds(table, len(SCHEDULES))
    if finalists is None or any(1 not in table[sid]["seeds"] for sid in finalists):
        return None
    tied = stats.within({sid: table[sid]["score"] for sid in finalists}, TIE)
    settled = stats.within({sid: table[sid]["settle"] for sid in tied}, SETTLE_TIE, lower=True)
    return min(settled, key=schedule_cost), tied, settled


def schedule_records(results):
    """The schedule search's records under a results/ folder: today's recipe from FOLDER (the augmentation search's
    runs of its choice, renamed to "today"), every other setting from SCHEDULE_FOLDER."""
    records = {}
    for folder in (FOLDER, SCHEDULE_FOLDER):
        path = os.path.join(results, folder)
        for name, recs in (load_records(path) if os.path.isdir(path) else {}).items():
            if folder == FOLDER:
                if not name.endswith("_" + INCUMBENT):
                    continue
                name = name.removesuffix(INCUMBENT) + "today"
            records[name] = recs
    return records


def search_markdown(results):
    """The recipe search in results/tune/ (py): every setting's validation score, and the choice."""
    folder = os.path.join(results, FOLDER)
    records = load_records(folder) if os.path.isdir(folder) else {}
    table = scores(records)
    chosen = choose(table)
    finalists = second_seeds(table) or []
    lines = ["| augmentation | dropout | batch | BN + L1 / LN / GN val acc %, seed 0 | seed 1 | score (mean) "
             "| second seed? | chosen |", "|---|---|---|---|---|---|---|---|"]
    for sid, t in sorted(table.items(), key=lambda kv: -kv[1]["score"]):
        per = lambda seed: " / ".join(f"{r['history'][-1]['test_acc']:.2f}" for name in ordered(records)
                                      if name.endswith("_" + sid)
                                      for r in records[name] if r["config"]["seed"] == seed)
        st = t["setting"]
        mark = "**chosen**" if chosen and sid == chosen[0] else ("tied" if chosen and sid in chosen[1] else "")
        lines.append(f"| {st['augmentation']} | {st['dropout']:g} | {st['batch_size']} | {per(0)} "
                     f"| {per(1) if 1 in t['seeds'] else ''} | {t['score']:.3f} | {'yes' if sid in finalists else ''} "
                     f"| {mark} |")
    status = f"Chosen by the rule: `{chosen[0]}`" if chosen else "Not decided by these files"
    aug = "; ".join(f"{k}: " + describe_augmentation(Recipe(**v)).split(";")[0]
                    for k, v in AUGMENTATIONS.items())
    lines += ["", f"Validation accuracy: the last {VAL:,} training images, after epoch 20, training on the other "
                  f"50,000. Score: the mean over the three norms (and seeds). Augmentations: {aug}. {status}."]
    ids = [setting_id(st) for st in settings()]
    diverged = diverged_runs(records, lambda name: next((f"`{sid}`" for sid in ids if name.endswith("_" + sid)), ""))
    if diverged:
        lines += ["", f"Diverged (validation accuracy fell by {stats.COLLAPSE:g} points or more in one epoch): "
                      + "; ".join(diverged) + "."]
    return "\n".join(lines)


def schedule_markdown(results):
    """The schedule search (py --search schedule): every setting's validation score and settle epoch, and the
    choice by its rule, or what the rule still needs."""
    records = schedule_records(results)
    table = scores(records, SCHEDULES)
    chosen = schedule_choose(table)
    finalists = second_seeds(table, len(SCHEDULES)) or []
    lines = ["| setting | BN + L1 / LN / GN val acc %, seed 0 | seed 1 | score (mean) | settles at epoch (mean) "
             "| second seed? | chosen |", "|---|---|---|---|---|---|---|"]
    for sid, t in sorted(table.items(), key=lambda kv: -kv[1]["score"]):
        per = lambda seed: " / ".join(f"{r['history'][-1]['test_acc']:.2f}" for name in ordered(records)
                                      if name.endswith("_" + sid) and name.removesuffix("_" + sid) in NORM_NAMES
                                      for r in records[name] if r["config"]["seed"] == seed)
        mark = "**chosen**" if chosen and sid == chosen[0] else ("tied" if chosen and sid in chosen[2] else "")
        lines.append(f"| {sid} | {per(0)} | {per(1) if 1 in t['seeds'] else ''} | {t['score']:.3f} | {t['settle']:.1f} "
                     f"| {'yes' if sid in finalists else ''} | {mark} |")
    status = (f"Chosen by the rule: `{chosen[0]}`" + (": today's recipe stays" if chosen[0] == "today" else "")
              if chosen else "Not decided by these files")
    lines += ["", f"Validation accuracy: the last {VAL:,} training images, after epoch 20, training on the other "
                  f"50,000. Score: the mean over the three norms (and seeds). Settles: the first epoch from which a "
                  f"run's validation accuracy stays within {SETTLE:g} points of its final one. {status}."]
    diverged = diverged_runs(records, lambda name: next((f"`{sid}`" for sid in SCHEDULES
                                                         if name.endswith("_" + sid)), ""))
    if diverged:
        lines += ["", f"Diverged (validation accuracy fell by {stats.COLLAPSE:g} points or more in one epoch): "
                      + "; ".join(diverged) + "."]
    return "\n".join(lines)
