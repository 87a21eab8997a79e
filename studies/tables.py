"""What every study's tables share: a Markdown table from rows, means with their intervals, the order of runs, and
the runs that diverged or never learned."""
import json
import os

from mnist_norms.recipe import experiment, label, run_order
from studies import stats

NORM_NAMES = [r.name for r in experiment()]  # bn_l1, ln, gn: the runs of each setting of a search


def markdown(header, rows):
    """A Markdown table: the header's cells, then one line per row of cells (str() of each)."""
    return "\n".join(["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def load_json(results, name):
    """The JSON in results/`name`, or None if there is no such file."""
    path = os.path.join(results, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def ordered(records):
    """The names of {name: [record, ...]} in run_order."""
    return sorted(records, key=lambda n: run_order(records[n][0]["config"]))


def mean_std(row, key, digits=2):
    """A summarize() row's <key> as "mean ± std", or the lone value for one seed."""
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(row["seeds"]) > 1 else f"{mean:.{digits}f}"


def interval(values):
    """"99.52 ± 0.03" (mean ± half-width of its 95% interval), or the lone value."""
    mean, half = stats.mean_ci(values)
    return f"{mean:.2f} ± {half:.2f}" if half == half else f"{mean:.2f}"


def runs_cell(values, failed=None):
    """A table cell for the accuracies (%) of a group of runs, {seed: value}: interval() over the seeds; a run that
    failed ({seed: how}, stats.failure) given apart with its value, and the interval over the others; and instead of
    an interval that would reach past 100%, each seed's value ("seeds 0, 1, 2: 98.35, 96.52, 91.17")."""
    failed = {s: how for s, how in (failed or {}).items() if s in values}
    kept = {s: v for s, v in sorted(values.items()) if s not in failed}
    cell = ""
    if kept:
        mean, half = stats.mean_ci(list(kept.values()))
        if half == half and mean + half > 100:
            seeds = ", ".join(map(str, kept))
            cell = f"seed{'s' if len(kept) > 1 else ''} {seeds}: {', '.join(f'{v:.2f}' for v in kept.values())}"
        else:
            cell = interval(list(kept.values()))
    if not failed:
        return cell
    apart = "; ".join(f"seed {s} failed ({how}): {values[s]:.2f}" for s, how in sorted(failed.items()))
    if not kept:
        return apart
    return f"{apart}; {cell}" if cell.startswith("seed") else f"{apart}; the other {len(kept)}: {cell}"


def diverged_runs(records, setting=lambda name: ""):
    """One phrase per run whose accuracy collapsed in some epoch (stats.collapses), in run order: which run, where,
    how far, and where it ended. `setting(name)` names the rest of the run (the search's setting id)."""
    out = []
    for name in ordered(records):
        for r in sorted(records[name], key=lambda r: r["config"]["seed"]):
            for epoch, before, after in stats.collapses(r["history"]):
                where = ", ".join(x for x in (label(r), setting(name), f"seed {r['config']['seed']}") if x)
                out.append(f"{where}: {before:.2f}% after epoch {epoch - 1}, {after:.2f}% after epoch {epoch} "
                           f"({stats.final(r):.2f}% after epoch {len(r['history'])}"
                           f"{'' if len(r['history']) >= r['config']['epochs'] else ', unfinished'})")
    return out


def unlearned_runs(records):
    """One phrase per run with finished seeds that never learned (stats.never_learned): which seeds, and where
    they ended."""
    out = []
    for name in ordered(records):
        done = stats.finished(records[name])
        stuck = sorted(s for s, r in done.items() if stats.never_learned(r["history"]))
        if stuck:
            finals = sorted(stats.final(done[s]) for s in stuck)
            ended = f"{finals[0]:.2f}%" if finals[0] == finals[-1] else f"{finals[0]:.2f}% to {finals[-1]:.2f}%"
            out.append(f"{label(records[name][0])}, seed{'s' if len(stuck) > 1 else ''} "
                       f"{', '.join(map(str, stuck))} of the {len(done)} finished ({ended} at the end)")
    return out
