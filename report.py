"""Regenerate the README's tables from the JSON files in results/; --check fails when they are stale."""
import argparse
import json
import os
import re
import sys

import normalizations
import utils

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = ["bn_l1", "bn", "ln", "gn"]  # table order; other names (gn_g5, ...) follow alphabetically


def ordered(names):
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def tuning_table(results):
    """Validation accuracy of every setting tried under results/val/, one row per setting."""
    val = os.path.join(results, "val")
    settings = sorted(os.listdir(val)) if os.path.isdir(val) else []
    found = {s: {name: recs for name, recs in utils.load_records(os.path.join(val, s)).items() if recs[0]["history"]}
             for s in settings}
    names = ordered({n for recs in found.values() for n in recs})
    head = "| setting (`results/val/...`) | " + " | ".join(
        f"{utils.run_label(n)} final (best) val acc %" for n in names) + " | mean final |"
    lines = [head, "|" + "---|" * (len(names) + 2)]
    for setting, recs in found.items():
        cells = []
        for n in names:
            if n not in recs:
                cells.append("")
                continue
            h = recs[n][0]["history"]
            epochs = recs[n][0]["config"]["epochs"]
            done = "" if len(h) == epochs else f" ({len(h)} of {epochs} epochs)"
            cells.append(f"{h[-1]['test_acc']:.2f} ({max(r['test_acc'] for r in h):.2f}){done}")
        finals = [recs[n][0]["history"][-1]["test_acc"] for n in names if n in recs]
        mean = f"{sum(finals) / len(finals):.2f}" if len(finals) == len(names) else ""
        lines.append(f"| `{setting}` | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


def mean_std(row, key, digits=2):
    """A summarize() row's <key> as "mean ± std", or the lone value for one seed."""
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(row["seeds"]) > 1 else f"{mean:.{digits}f}"


def results_table(results):
    """The main runs in results/*.json: mean ± std over seeds (population std; a lone seed has none)."""
    rows = {row["name"]: row for row in utils.summarize(utils.load_records(results))}
    lines = ["| run | seeds | final test acc % | best test acc % | final test acc % per seed | final train acc % "
             "| lowest test loss | params | minutes per run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in ordered(rows):
        r = rows[name]
        per_seed = ", ".join(f"{acc:.2f}" for acc in r["finals"])
        if r["unfinished"]:
            per_seed += " (unfinished: " + "; ".join(f"seed {s}: {done} of {planned} epochs"
                                                    for s, done, planned in r["unfinished"]) + ")"
        lines.append(f"| {r['label']} | {', '.join(map(str, r['seeds']))} | {mean_std(r, 'final')} "
                     f"| {mean_std(r, 'best')} | {per_seed} | {mean_std(r, 'train')} | {mean_std(r, 'loss', 4)} "
                     f"| {r['params']:,} | {mean_std(r, 'minutes', 1)} |")
    return "\n".join(lines)


def batch_size_table(results):
    """The batch-size study in results/batch_size/: final test accuracy per norm and batch size, and
    its wall time from study.json."""
    folder = os.path.join(results, "batch_size")
    records = utils.load_records(folder) if os.path.isdir(folder) else {}
    rows = utils.study_summary(records)
    if not rows:
        return "(no runs in results/batch_size/ yet: `python train.py --study batch-size --jobs 2`)"
    norms = list(dict.fromkeys(r["norm"] for r in rows))
    cell = {(r["norm"], r["batch_size"]): r for r in rows}
    columns = []  # (heading, norm, key)
    for norm in norms:
        label = utils.run_label(norm)
        columns.append((f"{label} final test acc %" + (" (running averages)" if norm.startswith("bn") else ""),
                        norm, "final"))
        if any("batch_stats_mean" in r for r in rows if r["norm"] == norm):
            columns.append((f"{label} with batch statistics", norm, "batch_stats"))
    sizes = sorted({r["batch_size"] for r in rows})
    lines = ["| batch | peak lr | " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * (len(columns) + 2)]
    for b in sizes:
        lr = next(r["lr"] for r in rows if r["batch_size"] == b)
        cells = [mean_std(cell[n, b], key) if (n, b) in cell and f"{key}_mean" in cell[n, b] else ""
                 for _, n, key in columns]
        lines.append(f"| {b} | {lr:g} | " + " | ".join(cells) + " |")
    seeds = sorted({s for r in rows for s in r["seeds"]})
    epochs = sorted({r["epochs"] for r in rows})
    unfinished = sum(len(r["unfinished"]) for r in rows)
    train_images = sorted({rec["config"]["train_images"] for recs in records.values() for rec in recs})
    lines += ["", f"Mean ± std over seeds {', '.join(map(str, seeds))}; {'/'.join(map(str, epochs))} epoch(s) on "
                  f"{'/'.join(f'{n:,}' for n in train_images)} training images per run; "
                  f"{sum(len(r['seeds']) for r in rows)} runs"
                  + (f", {unfinished} of them unfinished" if unfinished else "") + "."]
    log_path = os.path.join(folder, "study.json")
    if os.path.exists(log_path):
        with open(log_path) as f:
            log = json.load(f)["invocations"]
        trained = sum(i["runs_trained"] for i in log)
        how = "; ".join(sorted({f"{i['jobs']} parallel job{'s' if i['jobs'] > 1 else ''} on {i['cpus']} CPUs, "
                                f"device {i['device']}" for i in log}))
        lines[-1] += (f" Wall time: {sum(i['wall_seconds'] for i in log) / 60:.1f} minutes for the {trained} runs "
                      f"trained, in {len(log)} invocation{'s' if len(log) > 1 else ''} ({how}).")
    return "\n".join(lines)


def worked_example(results):
    return "```text\n" + normalizations.worked_example() + "\n```"


TABLES = {"tuning": tuning_table, "results": results_table, "batch-size": batch_size_table,
          "worked-example": worked_example}


def render(text, results):
    """Replace the body between each <!-- NAME:start --> and <!-- NAME:end --> pair in text."""
    for name, make in TABLES.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n)(?:.*?\n)?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"README has no <!-- {name}:start --> ... <!-- {name}:end --> block")
        text = pattern.sub(lambda m: m.group(1) + make(results) + "\n" + m.group(2), text)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--readme", default=os.path.join(HERE, "README.md"), help="the file whose tables are rewritten")
    p.add_argument("--results", default=os.path.join(HERE, "results"), help="where the run JSON files are")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if the README is out of date")
    args = p.parse_args(argv)
    with open(args.readme) as f:
        text = f.read()
    new = render(text, args.results)
    if args.check:
        if new != text:
            print(f"{args.readme} does not match {args.results}: run `python report.py`", file=sys.stderr)
            return 1
        print(f"{args.readme} matches {args.results}")
        return 0
    if new != text:
        with open(args.readme, "w") as f:
            f.write(new)
    print(f"{'updated' if new != text else 'unchanged'}: {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
