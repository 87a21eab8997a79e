"""The recipe searches: settings compared on the validation split, each with the rule that picks one.

Every setting trains BN + L1, LN and GN for 20 epochs on the first 50,000 training images and is scored
on the last 10,000 (never on the test set).

The augmentation search (--search augmentation, decided: Recipe's defaults are its choice) compared the
augmentation, dropout and batch size in GRID. Its rule, fixed before any of its runs was trained:

1. Seed 0 of the three norms for every setting in GRID. A setting's score is its mean final (epoch 20)
   validation accuracy over the three norms and over the seeds it has.
2. Every setting whose seed-0 score is within CLOSE points of the best seed-0 score also trains seed 1.
3. Among those, the settings whose two-seed score is within TIE points of the best are tied, and the tie
   goes to the cheapest (cost()): no dropout before dropout (drawing the masks is about 18% of a CPU step),
   then the larger batch (batch 64 trains about 0.9x the images per second of 128 here: docs/performance.md),
   then rotation before the full affine map (the same cost; the simpler one).

The schedule search (--search schedule) compares today's recipe (the one the search started from, FIRST_SCHEDULE,
whose ten-seed runs are in results/v2/) with changes to its learning-rate schedule and an average of its weights
(SCHEDULES), everything else as Recipe's defaults. Its rule, fixed and committed before
any of its runs was trained, rewards both the final accuracy and a run that gets there early and stays:

1. Seed 0 of the three norms for every setting in SCHEDULES (today's recipe has seeds 0 and 1 already: the
   augmentation search's runs of its choice). A setting's score is its mean final validation accuracy over the
   three norms and over the seeds it has.
2. Every setting whose seed-0 score is within CLOSE points of the best seed-0 score also trains seed 1.
3. Among those, the settings whose two-seed score is within TIE points of the best are tied on accuracy. Of
   them the rule prefers the one that settles earliest: a run settles at the first epoch from which its
   validation accuracy stays within SETTLE points of its final one through the last epoch, and a setting's
   settle epoch is the mean over its runs. Settings within SETTLE_TIE epochs of the earliest are tied again,
   and that tie goes to the cheapest (schedule_cost()): today's recipe, then no average before the average
   (it updates a copy of the weights every step), then fewer changes.
4. If the choice is today's recipe, today's recipe and its runs stay.

It chose peak15_ema, which is Recipe's defaults now (the runs in results/).

The stress test (--search stress) counts how often LN diverges in the first epochs, at today's peak and at a higher
one, without and with the gradient's norm clipped; its rule is with its constants below (STRESS_SEEDS ...).

The guard search (--search guard, the default) compares the warmed-up average alone, with the stress test's clip, and
with the clip and label smoothing or weight decay; its rule is with CANDIDATES below.

Runs resume like train.py's (run the same command again); results go to OUT/results/tune/ (--out: by default
runs/; the committed search is `--out .`), and each invocation that trains logs its wall time to tune.json there.
"""
import itertools
import os
import sys

import numpy as np

import cli
import machine
import stats
import utils
from data import load_mnist
from recipe import BEFORE_GUARD, FIRST_SCHEDULE, Recipe, experiment
from records import load_records

# Each augmentation names all four of its settings, so that a setting means the same whatever Recipe's defaults.
AUGMENTATIONS = {
    "rotate": dict(degrees=7.0, translate=0.0, scale=0.0, shear=0.0),
    "affine": dict(degrees=7.0, translate=0.1, scale=0.1, shear=5.0),
}
GRID = {"augmentation": tuple(AUGMENTATIONS), "dropout": (0.0, 0.05), "batch_size": (64, 128)}
VAL = 10_000     # validation images, held out from the end of the training set
CLOSE = 0.10     # points: a setting this close to the best after seed 0 gets a second seed
TIE = 0.05       # points: settings this close to the best after two seeds are tied
FOLDER = "tune"

# The schedule search: each setting is the changes it makes to the schedule that every run before it used
# (FIRST_SCHEDULE; SCHEDULES spells out all of its fields, so that a setting means the same whatever Recipe's
# defaults). final_div 40 ends a shorter cycle at lr / 1000 (1e-4), low enough to settle, not so low that the epochs
# after the cycle train nothing.
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
INCUMBENT = "affine_dropout0_bs64"  # the augmentation search's choice, whose runs in FOLDER are today's recipe
SCHEDULE_FOLDER = os.path.join(FOLDER, "schedule")
SETTLE = 0.1      # points: a run has settled once its validation accuracy stays this close to its final one
SETTLE_TIE = 1.0  # epochs: settings that settle this close to the earliest are tied


def settings():
    """Every setting of the grid, as {"augmentation": ..., "dropout": ..., "batch_size": ...}."""
    return [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]


def setting_id(setting):
    """ "affine_dropout0.05_bs64": the setting's part of its runs' file names."""
    return f"{setting['augmentation']}_dropout{setting['dropout']:g}_bs{setting['batch_size']}"


def recipes(setting, seed, **overrides):
    """BN + L1, LN and GN for one setting and seed, on the validation split (overrides: for tests)."""
    aug = AUGMENTATIONS[setting["augmentation"]]
    return experiment(seeds=(seed,), dropout=setting["dropout"], batch_size=setting["batch_size"],
                      **{"val": VAL, **aug, **FIRST_SCHEDULE, **BEFORE_GUARD, **overrides})


def run_names(recipes_, setting):
    return [f"{r.name}_{setting_id(setting)}" for r in recipes_]


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
                    "settle": float(np.mean([settle_epoch(r["history"]) for r in runs])), "runs": len(runs), "seconds": float(np.mean([e["seconds"] for r in runs for e in r["history"]]))}
    return out


def second_seeds(table, planned=None):
    """The settings (ids) that the rule gives a second seed: within CLOSE of the best seed-0 score. None until every
    setting (of `planned`, by default the augmentation search's count) has its seed-0 score."""
    if len(table) < (planned or len(settings())):
        return None
    best = max(t["seeds"][0] for t in table.values())
    return [sid for sid, t in table.items() if t["seeds"][0] >= best - CLOSE - 1e-9]


def cost(setting):
    """The rule's order of cheapness, cheapest first (see the module's docstring)."""
    return setting["dropout"] > 0, -setting["batch_size"], list(AUGMENTATIONS).index(setting["augmentation"])


def choose(table):
    """(chosen setting id, the tied ids) by the rule, or None while runs it needs are missing."""
    finalists = second_seeds(table)
    if finalists is None or any(1 not in table[sid]["seeds"] for sid in finalists):
        return None
    best = max(table[sid]["score"] for sid in finalists)
    tied = [sid for sid in finalists if table[sid]["score"] >= best - TIE - 1e-9]
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
    best = max(table[sid]["score"] for sid in finalists)
    tied = [sid for sid in finalists if table[sid]["score"] >= best - TIE - 1e-9]
    earliest = min(table[sid]["settle"] for sid in tied)
    settled = [sid for sid in tied if table[sid]["settle"] <= earliest + SETTLE_TIE + 1e-9]
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


def run_schedule_search(data, *, device, out, jobs, fresh=False, progress=True, **overrides):
    """Train what the schedule rule needs next, until it can choose; returns schedule_records(OUT/results)."""
    for stage, seed in ((1, 0), (2, 1)):
        records = schedule_records(os.path.join(out, "results"))
        todo = list(SCHEDULES) if stage == 1 else second_seeds(scores(records, SCHEDULES), len(SCHEDULES))
        print(f"schedule search, stage {stage}: seed {seed} of {len(todo)} setting{'s' if len(todo) != 1 else ''}")
        for folder, suffix, sids in ((FOLDER, INCUMBENT, [s for s in todo if s == "today"]),
                                     (SCHEDULE_FOLDER, None, [s for s in todo if s != "today"])):
            runs = [r for sid in sids
                    for r in experiment(seeds=(seed,), **{"val": VAL, **SCHEDULES[sid], **BEFORE_GUARD, **overrides})]
            names = [f"{r.name}_{suffix or sid}" for sid in sids for r in experiment(seeds=(seed,))]
            if runs:
                utils.run_experiments(runs, data, device=device, out=out, folder=folder, jobs=jobs, names=names,
                                      progress=progress, fresh=fresh, log="tune.json")
    return schedule_records(os.path.join(out, "results"))


def run_search(data, *, device, out, jobs, fresh=False, progress=True, **overrides):
    """Train what the augmentation search's rule needs next, until it can choose; returns the records under
    results/tune/."""
    folder = os.path.join(out, "results", FOLDER)
    for stage, seed in ((1, 0), (2, 1)):
        records = load_records(folder) if os.path.isdir(folder) else {}
        todo = settings() if stage == 1 else [s for s in settings() if setting_id(s) in second_seeds(scores(records))]
        runs, names = [], []
        for setting in todo:
            rs = recipes(setting, seed, **overrides)
            runs += rs
            names += run_names(rs, setting)
        print(f"stage {stage}: seed {seed} of {len(todo)} setting{'s' if len(todo) != 1 else ''}, {len(runs)} runs")
        utils.run_experiments(runs, data, device=device, out=out, folder=FOLDER, jobs=jobs, names=names,
                              progress=progress, fresh=fresh, log="tune.json")
    return load_records(folder)


# The stress test (--search stress): how often LN diverges as the learning rate rises to its peak, and whether
# clipping the gradient's norm stops it. Its rule, fixed and committed before any of its runs was trained:
#
# 1. LN (one of its ten seeds of the recipe diverged: 98.93% test accuracy after epoch 2, 15.73% after epoch 3),
#    seeds 0 to 19, on the first 50,000 training images, scored on the last 10,000. Each run trains the first
#    STRESS_EPOCHS epochs of the 20-epoch schedule (the rise to the peak, which ends in epoch 3, and the epochs after
#    it) and stops there. The average is warmed up (ema_warmup STRESS_WARMUP), so that the evaluated weights follow
#    the trained ones from epoch 1; everything else is Recipe's defaults.
# 2. A run diverges if its validation accuracy falls by DIVERGED points or more from one epoch to the next.
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
DIVERGED = 10.0   # points of validation accuracy lost in one epoch
CLIP_FACTOR = 2.0
STRESS_FOLDER = os.path.join(FOLDER, "stress")


def stress_name(peak, clip):
    """ "ln_lr0.3_clip0": the name of a stress arm's runs (their files add _seed<S>)."""
    return f"ln_lr{peak:g}_clip{clip:g}"


def diverged(history):
    """Whether a run's validation accuracy fell by DIVERGED points or more from one epoch to the next."""
    return any(a["test_acc"] - b["test_acc"] >= DIVERGED for a, b in zip(history, history[1:]))


def stress_clip(records):
    """The clip that rule 4 sets from stage 1's records ({name: [record]}), or None while stage 1 is unfinished."""
    runs = records.get(stress_name(STRESS_PEAKS[0], 0), [])
    done = {r["config"]["seed"]: r["history"] for r in runs if len(r["history"]) >= STRESS_EPOCHS}
    stage1 = [records.get(stress_name(peak, 0), []) for peak in STRESS_PEAKS]
    if len(done) < len(STRESS_SEEDS) or any(
            sum(len(r["history"]) >= STRESS_EPOCHS for r in recs) < len(STRESS_SEEDS) for recs in stage1):
        return None
    typical = [np.median([e["grad_norm_median"] for e in h[1:STRESS_EPOCHS]]) for h in done.values()
               if not diverged(h[:STRESS_EPOCHS])]
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
                       "diverged": [r["config"]["seed"] for r in recs if diverged(r["history"][:STRESS_EPOCHS])],
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
        runs = [Recipe("LN", seed=seed, lr=peak, **{**BEFORE_GUARD, "clip": clip, "ema_warmup": STRESS_WARMUP, "val": VAL,
                                                    **overrides})
                for seed in STRESS_SEEDS for peak in STRESS_PEAKS]  # seed by seed: a partial stage is paired
        utils.run_experiments(runs, data, device=device, out=out, folder=STRESS_FOLDER, jobs=jobs,
                              names=[stress_name(r.lr, r.clip) for r in runs], progress=progress, fresh=fresh,
                              log="tune.json", stop_after=STRESS_EPOCHS)
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
# 3. A candidate is out if any of its runs diverges (validation accuracy falls by DIVERGED points or more from one
#    epoch to the next).
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
    settings = {**FIRST_SCHEDULE, **SCHEDULES["peak15_ema"], **BEFORE_GUARD, "ema_warmup": STRESS_WARMUP}
    return {**settings, **{"warmup": {}, "guard": {"clip": clip}, "guard_ls": {"clip": clip, "label_smoothing": LABEL_SMOOTHING},
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
                         if diverged(r["history"])]
    return table


def guard_finalists(table):
    """The candidates the guard rule gives seed 1 (rules 3 and 4): those without a diverged run whose seed-0 score is
    within CLOSE of the best such one; None until every candidate has its seed 0."""
    if len(table) < len(CANDIDATES):
        return None
    alive = {cid: t for cid, t in table.items() if not t["diverged"]}
    best0 = max((t["seeds"][0] for t in alive.values()), default=None)
    return [cid for cid, t in alive.items() if t["seeds"][0] >= best0 - CLOSE - 1e-9]


def guard_choose(table, order):
    """(chosen candidate, the ones tied on accuracy, the ones tied on settling too) by the guard rule, with `order`
    its preference (preference()); None while runs it needs are missing."""
    finalists = guard_finalists(table)
    if not finalists or order is None or any(1 not in table[cid]["seeds"] for cid in finalists):
        return None
    alive = [cid for cid in finalists if not table[cid]["diverged"]]  # seed 1 may have diverged
    best = max(table[cid]["score"] for cid in alive)
    tied = [cid for cid in alive if table[cid]["score"] >= best - TIE - 1e-9]
    earliest = min(table[cid]["settle"] for cid in tied)
    settled = [cid for cid in tied if table[cid]["settle"] <= earliest + SETTLE_TIE + 1e-9]
    return min(settled, key=order.index), tied, settled


def run_guard_search(data, *, device, out, jobs, fresh=False, progress=True, **overrides):
    """Train what the guard rule needs next, until it can choose; returns the records under
    OUT/results/tune/guard/. Needs the stress test's stage 1 (its clip)."""
    results = os.path.join(out, "results")
    clip = stress_clip(stress_records(results))
    if clip is None:
        raise ValueError("the guard search needs the stress test's clip: run python tune.py --search stress first "
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
        runs = [r for cid in todo for r in experiment(seeds=(seed,), **{"val": VAL, **candidate(cid, clip), **overrides})]
        names = [f"{r.name}_{cid}" for cid in todo for r in experiment(seeds=(seed,))]
        if runs:
            utils.run_experiments(runs, data, device=device, out=out, folder=GUARD_FOLDER, jobs=jobs, names=names,
                                  progress=progress, fresh=fresh, log="tune.json")
    return load_records(folder) if os.path.isdir(folder) else {}


def format_table(table):
    lines = [f"{'setting':<28} {'seed 0':>7} {'seed 1':>7} {'score':>7} {'settles':>7} {'s/epoch':>8}"]
    for sid, t in sorted(table.items(), key=lambda kv: -kv[1]["score"]):
        s1 = f"{t['seeds'][1]:.3f}" if 1 in t["seeds"] else ""
        lines.append(f"{sid:<28} {t['seeds'][0]:>7.3f} {s1:>7} {t['score']:>7.3f} {t['settle']:>7.1f} "
                     f"{t['seconds']:>8.1f}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--search", choices=("guard", "stress", "schedule", "augmentation"), default="guard",
                   help="which search: the guard search (the warmed-up average, the clip against divergence, label smoothing, "
                        "weight decay), the stress test of LN's divergence with and without clipping the gradient, "
                        "the (decided) learning-rate schedule and weight averaging, or the (decided) augmentation, "
                        "dropout and batch size")
    cli.add_run_arguments(p, jobs_default=min(2, os.cpu_count() or 1),
                          jobs_help="runs trained at once, in that many processes with one CPU thread each", figures=False)
    p.add_argument("--epochs", type=cli.positive_int, default=Recipe.epochs,
                   help="epochs per run (the search uses the default; fewer only for a quick look, which goes to a "
                        "folder of its own under --out)")
    p.add_argument("--limit", type=cli.positive_int, default=None,
                   help="train on only the first N training images, for a quick look (a folder of its own under "
                        "--out; default: all 50,000)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # A quick look (fewer epochs or images) goes to a folder of its own under --out (cli.variant)
    args.out = os.path.join(args.out, cli.variant(args, parse_args([]), ("epochs", "limit")))
    machine.tune_malloc()
    # Before torch's first operation, so that the runs reproduce on other AVX2 CPUs of the same vendor
    machine.pin_isa(not args.native_isa)
    print(utils.LOG_HEADER)
    try:
        data = load_mnist(args.data)
        search = {"guard": run_guard_search, "stress": run_stress, "schedule": run_schedule_search,
                  "augmentation": run_search}[args.search]
        records = search(data, device=args.device, out=args.out, jobs=args.jobs, fresh=args.fresh,
                         progress=not args.no_progress, epochs=args.epochs, limit=args.limit)
    except utils.USER_ERRORS as e:
        sys.exit(f"tune.py: error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"\nstopped: every finished epoch is kept; resume with: python {' '.join(sys.argv)}")
    if args.search == "stress":
        print()
        print(format_stress_table(stress_table(records)))
        clip = stress_clip(records)
        print(f"\nthe clip of stage 2: {clip:g}" if clip is not None else "\nstage 1 is not complete yet")
        return 0
    if args.search == "guard":
        table = guard_table(records)
        print()
        print(format_table(table))
        print("diverged: " + ("; ".join(f"{cid}: {', '.join(t['diverged'])}" for cid, t in table.items() if t["diverged"])
                              or "none"))
        chosen = guard_choose(table, preference(stress_records(os.path.join(args.out, "results"))))
        print(f"\nchosen: {chosen[0]} (tied on accuracy: {', '.join(chosen[1])}; on settling too: "
              f"{', '.join(chosen[2])})" if chosen else "\nnot yet decided")
        return 0
    table = scores(records, SCHEDULES if args.search == "schedule" else None)
    print()
    print(format_table(table))
    chosen = (schedule_choose if args.search == "schedule" else choose)(table)
    print(f"\nchosen: {chosen[0]} (tied: {', '.join(chosen[1])})" if chosen else "\nnot yet decided")
    return 0


if __name__ == "__main__":
    sys.exit(main())
