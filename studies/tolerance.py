"""Learning-rate tolerance under the recipe's own schedule: BN + L1, LN, GN and the two controls at peaks above the
recipe's, on the validation split.

    python -m studies.tolerance --out .    # resumable; writes results/tolerance/ (LN at 0.3: results/tune/stress/)

The learning-rate sweep (studies/lr_sweep) runs a 6-epoch cycle, which rises to its peak in about 700 steps on the
50,000 training images; the recipe's 20-epoch cycle rises in about 2,350 (2,800 on all 60,000). The stress test
(studies/search.py) already measures the recipe's schedule for LN: the first 6 epochs of the 20-epoch cycle. This
study runs that design for every model.

The rule, fixed and committed before the study's first run:

1. BN + L1, LN, GN and the two controls (model.MODELS), at each peak of PEAKS, seeds SEEDS. Each run is the
   stress test's (search.BASE: Recipe's schedule, 20 epochs, rising to its peak over the first 15% of the steps,
   the average warmed up; no clip), L1 on the BN run only, trained on the first 50,000 training images and scored on
   the last VAL; it stops after EPOCHS epochs (the rise, which ends in epoch 3, and the three epochs after it).
   LN at 0.3 is the stress test's arm ln_lr0.3_clip0 (the same settings): its seeds SEEDS are loaded from
   results/tune/stress/, or trained there where they are not.
2. A run failed if stats.failure says so over its EPOCHS epochs: a loss that is not finite, its training or validation
   accuracy falling by stats.COLLAPSE (10) points or more from one epoch to the next, or its validation accuracy
   below stats.NOT_LEARNED (20%) in every epoch. This is the one definition of "failed" the README and docs use.
3. A model trains at a peak (under the recipe's schedule) when none of its SEEDS runs failed there. The table gives,
   for every model and peak, the runs that failed (k of 3, and which seeds) and the mean validation accuracy after
   epoch EPOCHS of the runs that did not; and, for the recipe's own peak (0.1), the failures among each model's ten
   20-epoch runs on the test set (results/*_seed*.json), labelled as such. The counts are reported whatever they are.

Runs resume like train.py's (run the same command again); each invocation that trains logs its wall time to
tolerance.json in the results folder.
"""
import os
import sys

import numpy as np

import utils
from mnist_norms import cli, runner
from mnist_norms.recipe import L1, Recipe
from mnist_norms.records import load_records
from model import MODELS
from studies import stats
from studies.lr_sweep.report import failure_cell
from studies.search import BASE, STRESS_EPOCHS, STRESS_FOLDER, stress_name, stress_records

PEAKS = (0.3, 1.0, 3.0)
SEEDS = (0, 1, 2)
EPOCHS = STRESS_EPOCHS  # 6
VAL = stats.VALIDATION
FOLDER = "tolerance"
STRESS_ARM = ("LN", 0.3)  # the stress test's stage-1 arm that is this study's LN at 0.3


def recipe(norm, peak, seed, **overrides):
    """One run of the study (rule 1)."""
    return Recipe(norm, l1=L1 if norm == "BN" else 0.0, lr=peak, seed=seed, **{**BASE, "val": VAL, **overrides})


def run_name(r):
    """ "bn_l1_lr0.3": the run's file name stem (its files add _seed<S>)."""
    return f"{r.name}_lr{r.lr:g}"


def run_tolerance(data, *, device, out, jobs, fresh=False, progress=True, **overrides):
    """Train (or resume, or load) the study's runs, seed by seed (an interrupted study leaves whole comparisons);
    returns {(norm, peak): {seed: record}} of the runs stopped after EPOCHS epochs."""
    runs = [recipe(norm, peak, seed, **overrides) for seed in SEEDS for peak in PEAKS for norm in MODELS]
    arm = [r for r in runs if (r.norm, r.lr) == STRESS_ARM]
    rest = [r for r in runs if (r.norm, r.lr) != STRESS_ARM]
    if arm:
        print(f"LN at {STRESS_ARM[1]:g}: the stress test's arm {stress_name(STRESS_ARM[1], 0)}, {len(arm)} runs")
        utils.run_experiments(arm, data, device=device, out=out, jobs=jobs, progress=progress, fresh=fresh,
                              study=runner.Study(folder=STRESS_FOLDER, names=tuple(stress_name(r.lr, 0) for r in arm),
                                                stop_after=EPOCHS, invocations="tune.json"))
    print(f"tolerance under the recipe's schedule: {len(rest)} runs, the first {EPOCHS} epochs each")
    utils.run_experiments(rest, data, device=device, out=out, jobs=jobs, progress=progress, fresh=fresh,
                          study=runner.Study(folder=FOLDER, names=tuple(run_name(r) for r in rest), stop_after=EPOCHS,
                                            invocations="tolerance.json"))
    return tolerance_runs(os.path.join(out, "results"))


def tolerance_runs(results):
    """{(norm, peak): {seed: record}} of the study's runs under RESULTS that reached EPOCHS epochs (or their own
    epochs, for a quick look with fewer)."""
    found = {}
    folders = [(os.path.join(results, FOLDER), None), (os.path.join(results, STRESS_FOLDER), STRESS_ARM)]
    for folder, only in folders:
        if not os.path.isdir(folder):
            continue
        for recs in load_records(folder).values():
            for r in recs:
                c = r["config"]
                key = (c["norm"], c["lr"])
                if (only and key != only) or c["seed"] not in SEEDS or c["clip"] != 0 or key[1] not in PEAKS:
                    continue
                if len(r["history"]) >= min(EPOCHS, c["epochs"]):
                    found.setdefault(key, {})[c["seed"]] = r
    return found


def table(runs):
    """{(norm, peak): {"label", "seeds", "histories": {seed: its first EPOCHS epochs}, "failed": {seed: how}, "mean":
    mean validation accuracy after the last epoch of the study of the runs that did not fail (nan if none)}}
    (rule 3)."""
    out = {}
    for (norm, peak), by_seed in sorted(runs.items()):
        histories = {s: r["history"][:EPOCHS] for s, r in sorted(by_seed.items())}
        failed = {s: how for s, h in histories.items() if (how := stats.failure(h))}
        ok = [h[-1]["test_acc"] for s, h in histories.items() if s not in failed]
        out[norm, peak] = {"label": Recipe.from_config(next(iter(by_seed.values()))["config"]).label,
                           "seeds": sorted(by_seed), "histories": histories, "failed": failed,
                           "mean": float(np.mean(ok)) if ok else float("nan")}
    return out


def format_table(cells):
    lines = [f"{'model':<31} {'peak':>5} {'runs':>4} {'failed':>6}  {'val acc':>7}  seeds that failed"]
    for (_, peak), c in sorted(cells.items(), key=lambda kv: (MODELS.index(kv[0][0]), kv[0][1])):
        failed = ", ".join(f"{s} ({how})" for s, how in c["failed"].items()) or "-"
        lines.append(f"{c['label']:<31} {peak:>5g} {len(c['seeds']):>4} {len(c['failed']):>6}  {c['mean']:>7.2f}  "
                     f"{failed}")
    return "\n".join(lines)


def summary(results):
    """The README's sentence: per model and peak, how many of its runs failed (one count per peak once every run is
    in), or None without runs."""
    cells = table(tolerance_runs(results))
    if not cells:
        return None
    done = sum(len(c["seeds"]) for c in cells.values())
    planned = len(MODELS) * len(PEAKS) * len(SEEDS)
    schedule = f"Under the recipe's schedule (the first {EPOCHS} of its {Recipe.epochs} epochs, validation split"
    if done == planned:  # every cell has every seed: one count per peak, "0/0/3" (kept on one line when wrapped)
        counts = "; ".join(f"{cells[norm, PEAKS[0]]['label']} " + "/".join(str(len(cells[norm, p]["failed"]))
                                                                           for p in PEAKS) for norm in MODELS)
        ln = ln_stress(results)
        more = "; ".join(f"{sum(bool(stats.failure(h)) for h in by_seed.values())} of {len(by_seed)} at {p:g}"
                         for p, by_seed in ln.items())
        return (f"{schedule}), failed runs out of {len(SEEDS)} (seeds {SEEDS[0]}-{SEEDS[-1]}) at peaks "
                f"{'/'.join(f'{p:g}' for p in PEAKS)}: {counts}" + (f" (LN over all the stress test's seeds: {more})"
                                                                    if more else "") + ".")
    per_model = []
    for norm in MODELS:
        mine = {peak: c for (n, peak), c in cells.items() if n == norm}
        if not mine:
            continue
        label = next(iter(mine.values()))["label"]
        parts = [f"{peak:g}: {len(c['failed']) or 'none'} of {len(c['seeds'])} failed"
                 for peak, c in sorted(mine.items())]
        per_model.append(f"{label} ({', '.join(parts)})")
    return (f"{schedule}, seeds {SEEDS[0]}-{SEEDS[-1]}; {done} of {planned} runs so far): " + "; ".join(per_model)
            + ".")


def at_recipe_peak(results):
    """Rule 3's labelled column: {norm: {seed: history}} of each model's finished 20-epoch runs at the recipe's peak
    on the test set (results/<name>_seed<S>.json)."""
    records = load_records(results) if os.path.isdir(results) else {}
    done = {norm: stats.finished(records.get(recipe(norm, Recipe.lr, 0).name, [])) for norm in MODELS}
    return {norm: {s: r["history"] for s, r in runs.items()} for norm, runs in done.items() if runs}


def ln_stress(results):
    """{peak: {seed: its first EPOCHS epochs}} of the stress test's LN runs without a clip (this study's design, all
    of its seeds), at the recipe's peak and at STRESS_ARM's."""
    records = stress_records(results)
    out = {}
    for peak in (Recipe.lr, STRESS_ARM[1]):
        done = {r["config"]["seed"]: r["history"][:EPOCHS] for r in records.get(stress_name(peak, 0), [])
                if len(r["history"]) >= EPOCHS}
        if done:
            out[peak] = done
    return out


def cell(c):
    """ "0 of 3 (0% to 71%); 99.30%": the sweep's failure cell (lr_sweep.report.failure_cell) over the study's epochs,
    then the mean of the runs that did not fail."""
    return failure_cell(c["histories"]) + (f"; mean {c['mean']:.2f}%" if c["mean"] == c["mean"] else "")


def markdown(results):
    """docs/experiments.md's table (tools.report's block "tolerance"): every model and peak, with its failures."""
    cells = table(tolerance_runs(results))
    if not cells:
        return "(no runs in results/tolerance/ yet: `python -m studies.tolerance --out .`)"
    recipes = at_recipe_peak(results)
    lines = [f"| model | peak {Recipe.lr:g} (the 20-epoch runs, test set) | "
             + " | ".join(f"peak {p:g}" for p in PEAKS) + " |", "|---" * (2 + len(PEAKS)) + "|"]
    for norm in MODELS:
        mine = {peak: c for (n, peak), c in cells.items() if n == norm}
        if mine:
            label = next(iter(mine.values()))["label"]
            lines.append(f"| {label} | {failure_cell(recipes[norm]) if norm in recipes else '-'} | "
                         + " | ".join(cell(mine[p]) if p in mine else "-" for p in PEAKS) + " |")
    done = sum(len(c["seeds"]) for c in cells.values())
    planned = len(MODELS) * len(PEAKS) * len(SEEDS)
    plan = f"{len(MODELS)} models, peaks {', '.join(f'{p:g}' for p in PEAKS)}, seeds {SEEDS[0]}-{SEEDS[-1]}"
    rest = "" if done == planned else " `python -m studies.tolerance --out .` resumes the rest."
    runs = f"All {planned} runs" if done == planned else f"{done} of the {planned} planned runs"
    lines += ["", f"Each cell: the runs that failed of those run, with the failure rate's exact (Clopper-Pearson) 95% "
              f"interval, and how (`studies.stats.failure`: at {Recipe.lr:g} over the recipe's {Recipe.epochs} "
              f"epochs, at the higher peaks over the first {EPOCHS}); at the higher peaks, then the mean validation "
              f"accuracy after epoch {EPOCHS} of the runs that did not fail. "
              f"{runs} at the higher peaks ({plan}).{rest}"]
    ln = ln_stress(results)
    if ln:
        lines[-1] += (f" LN in this design, all of the stress test's runs without a clip (`results/{STRESS_FOLDER}/`), "
                      "the runs that failed. " + " ".join(f"At {p:g}: {failure_cell(h)}." for p, h in ln.items()))
    return "\n".join(lines)


def parse_args(argv=None):
    p = cli.parser(__doc__)
    cli.add_run_arguments(p, figures=False)
    cli.add_quick_look_arguments(p, Recipe.epochs)
    return cli.finish_run_arguments(p.parse_args(argv))


def main(argv=None):
    args = parse_args(argv)
    runs = cli.run_quick_lookable(args, parse_args([]), "studies.tolerance", run_tolerance, utils.LOG_HEADER)
    print()
    print(format_table(table(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
