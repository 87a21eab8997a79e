"""The experiment's own tables and figures: BN + L1, LN and GN over ten seeds (results/*.json), their side runs (BN
without L1, GN with 5 and 10 groups), the two controls (model.CONTROLS, each at the peak learning rate
studies/lr_sweep.py chose for it), how each seed starts, when it settles, and the paired differences."""
import os

import numpy as np

from mnist_norms.recipe import Recipe, experiment, label
from mnist_norms.records import load_records, summarize
from model import CONTROLS
from studies import lr_sweep, stats
from studies.seed_figures import plot_seed_curves, plot_seeds
from studies.tables import load_json, markdown, mean_std, ordered, runs_cell

STEADY_FROM = (10, 12, 15)  # epochs: from which on a seed at >= stats.TARGET in every epoch is counted (steady_table)
SHADED_FROM = stats.STEADY  # seed_curves.png shades the epochs from this one on


def every_run(results):
    """({name: [record, ...]}, {name: label}): the runs in results/*.json and, for each control whose peak by
    studies/lr_sweep.py's rule 3 is not the recipe's, its finished test runs at that peak (they live in a folder of
    their own); the labels tell a control's two peaks apart (label() for every other run)."""
    records, labels = load_records(results), {}
    for norm in CONTROLS:
        found = lr_sweep.control_runs(results, norm)
        if not found or not found[1] or found[0] == Recipe.lr:
            continue
        peak, runs = found
        name = Recipe(norm).name
        records[f"{name}_lr{peak:g}"] = [runs[seed] for seed in sorted(runs)]
        labels |= {f"{name}_lr{peak:g}": control_label(peak, norm), name: f"{Recipe(norm).label} (peak {Recipe.lr:g})"}
    return records, labels


def results_table(results):
    """The finished runs in results/*.json: mean ± std over seeds (population std; a lone seed has none). Runs
    still training are named under the table, not averaged in (the table changes only when a run finishes)."""
    records, labels = every_run(results)
    finished = {n: sorted(stats.finished(recs).values(), key=lambda r: r["config"]["seed"])
                for n, recs in records.items()}
    rows = {row["name"]: {**row, "label": labels.get(row["name"], row["label"])}
            for row in summarize({n: recs for n, recs in finished.items() if recs})}
    lines = ["| run | seeds | final test acc % | best test acc % | final test acc % per seed | final train acc % "
             "| lowest test loss | params | minutes per run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in ordered({n: records[n] for n in rows}):
        r = rows[name]
        lines.append(f"| {r['label']} | {', '.join(map(str, r['seeds']))} | {final_sd(finished[name], r)} "
                     f"| {mean_std(r, 'best')} | {', '.join(f'{acc:.2f}' for acc in r['finals'])} "
                     f"| {mean_std(r, 'train')} | {mean_std(r, 'loss', 4)} | {r['params']:,} "
                     f"| {mean_std(r, 'minutes', 1)} |")
    running = [f"{label(r)} seed {r['config']['seed']}" for name in ordered(records)
               for r in sorted(records[name], key=lambda r: r["config"]["seed"])
               if len(r["history"]) < r["config"]["epochs"]]
    if running:
        lines += ["", f"Not finished, so left out: {', '.join(running)} (the same command resumes them)."]
    return "\n".join(lines)


def final_sd(records, row):
    """The every-run table's final accuracy: mean ± population std over the seeds, a run that failed (stats.failure)
    given apart with the others' mean ± std, so that two clusters are not averaged into one."""
    failed = {r["config"]["seed"]: how for r in records if (how := stats.failure(r["history"]))}
    if not failed:
        return mean_std(row, "final")
    others = [stats.final(r) for r in records if r["config"]["seed"] not in failed]
    apart = "; ".join(f"seed {s} failed ({how})" for s, how in sorted(failed.items()))
    if not others:
        return apart
    sd = f" ± {np.std(others):.2f}" if len(others) > 1 else ""
    return f"{apart}; the other {len(others)}: {np.mean(others):.2f}{sd}"


def reaches(records, target=stats.TARGET):
    """"12.3 (9 of 10 seeds)": the mean first epoch at >= target % test accuracy over the seeds that reach it."""
    epochs = stats.time_to(records, target)
    hit = [e for e in epochs.values() if e is not None]
    if not hit:
        return "never"
    return f"{sum(hit) / len(hit):.1f}" + (f" ({len(hit)} of {len(epochs)} seeds)" if len(hit) < len(epochs) else "")


def steady_count(records, epoch):
    """"3 of 10": the finished seeds at >= stats.TARGET % test accuracy in every epoch from `epoch` on."""
    steady = stats.steady(records)
    return f"{sum(1 for e in steady.values() if e is not None and e <= epoch)} of {len(steady)}"


def control_label(peak, norm):
    """"no norm, default init", or "no norm, default init (peak 0.03)" at another peak than the recipe's."""
    return Recipe(norm).label + ("" if peak == Recipe.lr else f" (peak {peak:g})")


def with_control(results):
    """({name: [record, ...]}, {name: label}) of results/ with both controls (model.CONTROLS) at the recipe's peak,
    where the norms train (their names, from results/*.json), and at the peak studies/lr_sweep.py's rule 3 chose for
    each (<name>_lr<peak>, from their own folder), each labelled with its peak (every_run)."""
    return every_run(results)


def control_rows(records):
    """The controls' names in records: at the recipe's peak first, then at rule 3's (model.CONTROLS' order)."""
    names = [Recipe(norm).name for norm in CONTROLS]
    return [n for n in names if n in records] + [n for c in names for n in sorted(records) if n.startswith(f"{c}_lr")]


def headline_table(results):
    """The README's first table: the three main runs' and the controls' final test accuracy over their finished seeds
    (every model at the recipe's peak, then each control at the peak its rule chose), the runs that failed
    (stats.failure, given apart), when they first reach stats.TARGET, and how many stay there from stats.STEADY on."""
    records, labels = with_control(results)
    rows = []
    for name in [r.name for r in experiment()] + control_rows(records):
        done = stats.finished(records.get(name, []))
        if done:
            first = next(iter(done.values()))
            failed = {s: how for s, r in done.items() if (how := stats.failure(r["history"]))}
            rows.append([labels.get(name, label(first)),
                         runs_cell({s: stats.final(r) for s, r in done.items()}, failed), len(done),
                         reaches(records[name]), steady_count(records[name], stats.STEADY),
                         f"{first['config']['params']:,}"])
    return markdown(["model", "final test accuracy %, mean ± 95% interval; failed runs apart", "seeds",
                     f"first epoch at ≥ {stats.TARGET}% (mean)",
                     f"seeds at ≥ {stats.TARGET}% in every epoch from {stats.STEADY} on", "parameters"], rows)


def fp32_runs(records):
    """[(name, {seed: record} of its finished seeds)] of the fp32 runs with a finished seed, in report order."""
    done = ((name, stats.finished(records[name])) for name in ordered(records))
    return [(name, seeds) for name, seeds in done
            if seeds and Recipe.from_config(records[name][0]["config"]).precision == "fp32"]


def steady_table(results):
    """Every fp32 run with its seeds: the epoch from which each seed stays at >= stats.TARGET % test accuracy
    through its last epoch ("-": its last epoch is below), and how many seeds do so from each of STEADY_FROM."""
    records, labels = every_run(results)
    t = stats.TARGET
    lines = [f"| run | seeds | at ≥ {t}% in every epoch from, per seed | "
             + " | ".join(f"seeds at ≥ {t}% from epoch {k} on" for k in STEADY_FROM) + " |",
             "|---|---|---|" + "---|" * len(STEADY_FROM)]
    for name, done in fp32_runs(records):
        steady = stats.steady(records[name])
        lines.append(f"| {labels.get(name, label(records[name][0]))} | {', '.join(map(str, done))} "
                     f"| {', '.join(str(e) if e else '-' for e in steady.values())} | "
                     + " | ".join(steady_count(records[name], k) for k in STEADY_FROM) + " |")
    return "\n".join(lines)


def seed_curves_figure(results):
    """static/seed_curves.png: every finished seed's test accuracy per epoch for the three main runs, with the
    99.4% line and the epochs from SHADED_FROM shaded; None if none has finished."""
    records = load_records(results)
    start = SHADED_FROM
    panels = {}
    for recipe in experiment():
        done = stats.finished(records.get(recipe.name, []))
        if done:
            title = (f"{recipe.label}: {steady_count(records[recipe.name], start)} seeds at ≥ {stats.TARGET}%\n"
                     f"in every epoch from {start} on")
            panels[title] = {seed: r["history"] for seed, r in done.items()}
    return plot_seed_curves(panels, stats.TARGET, from_epoch=start) if panels else None


def seeds_table(results):
    """Every fp32 run with its seeds: the mean and 95% interval of the final test accuracy, each seed's value, and
    the first epoch at >= TARGET per seed."""
    records, labels = every_run(results)
    lines = [f"| run | seeds | final test acc %, mean ± 95% interval; failed runs apart | final test acc % per "
             f"seed | first epoch at ≥ {stats.TARGET}% per seed | its mean |", "|---|---|---|---|---|---|"]
    for name, done in fp32_runs(records):
        epochs = stats.time_to(records[name])
        failed = {s: how for s, r in done.items() if (how := stats.failure(r["history"]))}
        lines.append(f"| {labels.get(name, label(records[name][0]))} | {', '.join(map(str, done))} "
                     f"| {runs_cell({s: stats.final(r) for s, r in done.items()}, failed)} "
                     f"| {', '.join(f'{stats.final(r):.2f}' for r in done.values())} "
                     f"| {', '.join(str(e) if e else '-' for e in epochs.values())} | {reaches(records[name])} |")
    return "\n".join(lines)


def group_label(records, name):
    recipe = Recipe.from_config(records[name][0]["config"])
    return "GN, 1 group (= LN)" if recipe.norm == "LN" else f"GN, {recipe.groups} groups"


def control_pairs(records):
    """(question, pairs) of the controls: each norm against each control at the recipe's peak, then at rule 3's peak
    (stats.CONTROL_PAIRS with the control's <name>_lr<peak>), and the two controls against each other at each."""
    at_rule = {n.split("_lr")[0]: n for n in control_rows(records) if "_lr" in n}
    rule = lambda pairs: [(at_rule.get(a, a), at_rule.get(b, b)) for a, b in pairs]
    return [(f"a norm at all (peak {Recipe.lr:g})", stats.CONTROL_PAIRS),
            (f"scaled start, γ and β (peak {Recipe.lr:g})", stats.START_PAIRS),
            ("a norm at all (control at its rule's peak)", [(a, at_rule[b]) for a, b in stats.CONTROL_PAIRS
                                                             if b in at_rule]),
            ("scaled start, γ and β (each at its rule's peak)", rule(stats.START_PAIRS) if at_rule else [])]


def family(records, labels):
    """[(question, A's name, B's name, label A, label B, paired(A, B), Holm's p)]: every comparison of the findings
    table, Holm's correction taken over all of them."""
    rows = []
    for question, pairs in [("norm", stats.NORM_PAIRS), *control_pairs(records), ("L1", stats.L1_PAIRS),
                            ("groups", stats.GROUP_PAIRS)]:
        for a, b, p in stats.comparisons(records, pairs):
            la, lb = ((group_label(records, a), group_label(records, b)) if question == "groups"
                      else (labels.get(a, label(records[a][0])), labels.get(b, label(records[b][0]))))
            if question.endswith("(control at its rule's peak)"):  # the norms at theirs: say so beside the control's
                la += f" (peak {Recipe.lr:g})"
            rows.append((question, a, b, la, lb, p))
    return [(*row, holm) for row, holm in zip(rows, stats.holm([row[-1]["p"] for row in rows]))]


def findings_table(results):
    """Paired differences in final test accuracy (A - B over the seeds both have), with 95% intervals and Holm's
    correction over the table's intervals: the norms, each norm against each control (at the recipe's peak, then at
    rule 3's) and the controls against each other, L1 on BN, and GN's number of groups."""
    records, labels = with_control(results)
    words = []
    rows = family(records, labels)
    lines = ["| question | A | B | seeds | A - B, mean (points) | 95% interval | p | Holm's p | measured to differ? |",
             "|---|---|---|---|---|---|---|---|---|"]
    for question, a, b, la, lb, p, holm in rows:
        split = two_clusters(records, (a, b), p["seeds"])
        if p["half"] != p["half"]:
            ci, verdict, ps = "(one seed)", "cannot say: one seed", "| | |"
        elif split:
            ci = f"[{p['low']:+.3f}, {p['high']:+.3f}]"
            verdict = f"cannot say: {split} ended at chance, so the differences form two clusters"
            ps = f"| {p['p']:.2g} | {holm:.2g} |"
        else:
            ci = f"[{p['low']:+.3f}, {p['high']:+.3f}]"
            higher = la if p["mean"] > 0 else lb
            verdict = ((f"yes: {higher} higher" if holm < 1 - stats.LEVEL
                        else f"not after Holm's correction ({higher} higher in the interval alone)")
                       if p["nonzero"] else "no: the interval includes 0")
            ps = f"| {p['p']:.2g} | {holm:.2g} |"
        seeds = p["seeds"]
        span = f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2 \
            else ", ".join(map(str, seeds))
        lines.append(f"| {question} | {la} | {lb} | {span} | {p['mean']:+.3f} | {ci} {ps} {verdict} |")
        words.append((la, lb, p, holm, split))
    n = sum(row[5]["half"] == row[5]["half"] for row in rows)
    many = [f"- **{n} intervals at once.** Each covers its true difference with probability {stats.LEVEL:.0%}, so "
            f"where no difference is real, about one interval in {1 / (1 - stats.LEVEL):.0f} still excludes 0 by "
            f"chance. Holm's correction raises each p-value for the {n} tests together; a difference whose Holm's p "
            f"is below {1 - stats.LEVEL:.2g} is measured to differ with the chance of any false one among the {n} at "
            f"most {1 - stats.LEVEL:.0%}."] if n > 1 else []
    failed = failed_runs(records, labels)
    failed = ([f"- **Failed** (stats.failure: a loss not finite, a training or test accuracy that fell by "
               f"{stats.COLLAPSE:g} points or more in one epoch, or a test accuracy below {stats.NOT_LEARNED:g}% in "
               f"every epoch; such a run counts in this table like any other): " + "; ".join(failed) + "."]
              if failed else [])
    return "\n".join(lines + [""] + in_words(words) + many + failed)


def two_clusters(records, names, seeds):
    """"seed 0 of no norm, default init": the runs of the pair `names`, among `seeds`, that never learned, ended not
    finite (stats.failure) or ended below stats.NOT_LEARNED where the same model's other seeds did not, so that the
    differences form two clusters and a Student-t interval over them says nothing; "" if none."""
    out = []
    for name in names:
        runs = [r for r in records[name] if r["config"]["seed"] in seeds]
        bad = [r for r in runs if stats.failure(r["history"]) in ("never learned", "not finite")
               or stats.final(r) < stats.NOT_LEARNED]  # or collapsed to a guess and stayed there
        if 0 < len(bad) < len(runs):
            out += [f"seed {r['config']['seed']} of {label(r)}" for r in bad]
    return ", ".join(out)


def failed_runs(records, labels):
    """One phrase per finished run that failed (stats.failure), in run order: which run, how, and where it ended."""
    out = []
    for name in ordered(records):
        for seed, r in stats.finished(records[name]).items():
            how = stats.failure(r["history"])
            if how:
                out.append(f"{labels.get(name, label(r))}, seed {seed}: {how} ({stats.final(r):.2f}% after epoch "
                           f"{len(r['history'])})")
    return out


def in_words(comparisons):
    """The findings table in plain words: which differences are measured to differ after Holm's correction, which
    only in their own interval, which not."""
    nonzero, alone, unresolved, single, split = [], [], [], [], []
    for la, lb, p, holm, apart in comparisons:
        if p["half"] != p["half"]:
            single.append(f"{la} against {lb}")
        elif apart:
            split.append(f"{la} against {lb} ({apart} ended at chance)")
        elif p["nonzero"]:
            hi, lo = (la, lb) if p["mean"] > 0 else (lb, la)
            a, b = sorted((abs(p["low"]), abs(p["high"])))
            digits = 2 if a >= 0.005 else 3  # so that the interval's near end does not print as 0.00
            (nonzero if holm < 1 - stats.LEVEL else alone).append(
                f"{hi} is higher than {lo}, by {abs(p['mean']):.{digits}f} points (interval {a:.{digits}f} to "
                f"{b:.{digits}f}, {len(p['seeds'])} seeds)")
        else:
            unresolved.append(f"{la} against {lb} ({p['low']:+.2f} to {p['high']:+.2f} points, "
                              f"{len(p['seeds'])} seeds)")
    return [f"- **Measured to differ** (the 95% interval excludes 0, and Holm's p is below "
            f"{1 - stats.LEVEL:.2g}): {'; '.join(nonzero) or 'none'}.",
            f"- **In its own interval only** (it excludes 0, but not after Holm's correction): "
            f"{'; '.join(alone) or 'none'}.",
            f"- **Not measured to differ** (the interval includes 0: the true difference may be 0, or of either sign "
            f"within the interval): {'; '.join(unresolved) or 'none'}."] + \
        ([f"- **One seed, no interval:** {'; '.join(single)}."] if single else []) + \
        ([f"- **Cannot say** (a run that ended at chance splits the differences in two clusters, so no interval over "
          f"them means anything; its runs are in the headline): {'; '.join(split)}."] if split else [])


def seeds_figure(results):
    """static/seeds.png: each seed's final test accuracy with the mean and 95% interval, for the main runs (BN + L1,
    LN, GN, BN without L1 and the controls) and for GN's number of groups; None if no run has finished."""
    records, labels = with_control(results)
    per_seed = lambda name: {s: stats.final(r) for s, r in stats.finished(records.get(name, [])).items()}
    main = {labels.get(n, label(records[n][0])): per_seed(n)
            for n in ["bn_l1", "ln", "gn", "bn"] + [Recipe(c).name for c in CONTROLS] if per_seed(n)}
    groups = {group_label(records, n).removeprefix("GN, "): per_seed(n) for n in ("ln", "gn", "gn_g5", "gn_g10")
              if per_seed(n)}
    bn = labels.get("bn", label(records["bn"][0])) if per_seed("bn") else None  # BN + L1's recipe without its L1
    norms = "The norms and the controls" + (f" ({bn}: {bn} without L1)" if bn in main else "")
    panels = {title: runs for title, runs in ((norms, main), ("GroupNorm's number of groups", groups)) if runs}
    return plot_seeds(panels) if panels else None


def one_minute_table(results, folder="epochs1_limit2000"):
    """The README's one-minute run (python train.py --epochs 1 --limit 2000), from results/<folder>/: each model's
    test accuracy and loss after its one epoch on 2,000 images."""
    records = load_records(os.path.join(results, folder)) if os.path.isdir(os.path.join(results, folder)) else {}
    if not records:
        return f"(no results/{folder}/ yet: `python train.py --epochs 1 --limit 2000 --out . --no-figures`)"
    lines = ["| model | test accuracy % after 1 epoch on 2,000 images | test loss |", "|---|---|---|"]
    for name in ordered(records):
        for r in records[name]:
            e = r["history"][-1]
            lines.append(f"| {label(r)} | {e['test_acc']:.2f} | {e['test_loss']:.4f} |")
    return "\n".join(lines)


def speed_table(results, target=stats.TARGET):
    """From the runs in results/: when BN + L1 first reaches `target` % test accuracy, and how long
    each experiment (BN + L1, LN and GN, seed 0, in one precision) took."""
    records = load_records(results)
    lines = [f"| run | seed | first epoch at ≥ {target}% | minutes to it | final test acc % | minutes for the run |",
             "|---|---|---|---|---|---|"]
    for name in ordered({n: recs for n, recs in records.items() if n.startswith("bn_l1")}):
        for _, r in sorted(stats.finished(records[name]).items()):  # a run still training has no row yet
            h = r["history"]
            hit = next((e for e in h if e["test_acc"] >= target), None)
            minutes = sum(e["seconds"] for e in h[:hit["epoch"]]) / 60 if hit else None
            lines.append(f"| {label(r)} | {r['config']['seed']} | {hit['epoch'] if hit else 'never'} "
                         f"| {f'{minutes:.1f}' if hit else ''} | {h[-1]['test_acc']:.2f} "
                         f"| {sum(e['seconds'] for e in h) / 60:.1f} |")
    log = load_json(results, "invocations.json")
    if log:
        lines += ["", "| invocation that trained (`results/invocations.json`) | runs trained | jobs x threads "
                      "| wall minutes |", "|---|---|---|---|"]
        for i in log["invocations"]:
            lines.append(f"| {', '.join(i['runs'])} | {i['runs_trained']} | {i['jobs']} x {i['threads']} "
                         f"| {i['wall_seconds'] / 60:.1f} |")
    return "\n".join(lines)
