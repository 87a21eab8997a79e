"""Regenerate the tables in README.md and docs/*.md from the JSON files in results/; --check fails when they are stale."""
import argparse
import json
import os
import re
import statistics
import sys

import normalizations
import shift
import stats
import study
import tune
import utils
from benchmarks import end_to_end
from figures import plot_seed_curves, plot_seeds, save_figure
from recipe import Recipe, experiment, label, run_order
from records import load_records, summarize

HERE = os.path.dirname(os.path.abspath(__file__))
STEADY_FROM = (10, 12, 15)  # epochs: from which on a seed at >= stats.TARGET in every epoch is counted (steady_table)
SHADED_FROM = 12  # seed_curves.png shades the epochs from this one on: "steady in the last epochs"
ISA_NAMES = {"avx2": "AVX2", "avx512": "AVX-512"}  # ATen's capability names, as the docs write them
V1 = "v1"  # results/v1/: the runs of the first recipe (rotation only, dropout 0.05, batch 128), kept apart
V2 = "v2"  # results/v2/: the runs of the second recipe (before the schedule search: peak after 30%, no average)
V3 = "v3"  # results/v3/: the runs of the third recipe (before the guard search: the average not warmed up, no clip)


def ordered(records):
    """The names of {name: [record, ...]} in run_order."""
    return sorted(records, key=lambda n: run_order(records[n][0]["config"]))


def tuning_table(results, folder=V1):
    """Validation accuracy of every setting tried under results/<folder>/val/ (the first recipe's learning-rate
    and dropout search), one row per setting."""
    val = os.path.join(results, folder, "val")
    settings = sorted(os.listdir(val)) if os.path.isdir(val) else []
    found = {s: {name: recs for name, recs in load_records(os.path.join(val, s)).items() if recs[0]["history"]}
             for s in settings}
    names = ordered({n: recs[n] for recs in found.values() for n in recs})
    labels = {n: label(recs[n][0]) for recs in found.values() for n in recs}
    head = f"| setting (`results/{folder}/val/...`) | " + " | ".join(
        f"{labels[n]} final (best) val acc %" for n in names) + " | mean final |"
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
    """The finished runs in results/*.json: mean ± std over seeds (population std; a lone seed has none). Runs
    still training are named under the table, not averaged in (the table changes only when a run finishes)."""
    records = load_records(results)
    finished = {n: sorted(stats.finished(recs).values(), key=lambda r: r["config"]["seed"]) for n, recs in records.items()}
    rows = {row["name"]: row for row in summarize({n: recs for n, recs in finished.items() if recs})}
    lines = ["| run | seeds | final test acc % | best test acc % | final test acc % per seed | final train acc % "
             "| lowest test loss | params | minutes per run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in ordered({n: records[n] for n in rows}):
        r = rows[name]
        lines.append(f"| {r['label']} | {', '.join(map(str, r['seeds']))} | {mean_std(r, 'final')} "
                     f"| {mean_std(r, 'best')} | {', '.join(f'{acc:.2f}' for acc in r['finals'])} "
                     f"| {mean_std(r, 'train')} | {mean_std(r, 'loss', 4)} | {r['params']:,} "
                     f"| {mean_std(r, 'minutes', 1)} |")
    running = [f"{label(r)} seed {r['config']['seed']}" for name in ordered(records)
               for r in sorted(records[name], key=lambda r: r["config"]["seed"])
               if len(r["history"]) < r["config"]["epochs"]]
    if running:
        lines += ["", f"Not finished, so left out: {', '.join(running)} (the same command resumes them)."]
    return "\n".join(lines)


def batch_size_table(results):
    """The batch-size study in results/batch_size/: final test accuracy per norm and batch size, and
    its wall time from study.json."""
    folder = os.path.join(results, "batch_size")
    records = load_records(folder) if os.path.isdir(folder) else {}
    rows = study.summary(records)
    if not rows:
        return "(no runs in results/batch_size/ yet: `python study.py`)"
    norms = list(dict.fromkeys(r["norm"] for r in rows))
    labels = {r["norm"]: r["norm_label"] for r in rows}
    cell = {(r["norm"], r["batch_size"]): r for r in rows}
    columns = []  # (heading, norm, key)
    for norm in norms:
        label = labels[norm]
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
    ends = [sizes[0]] + ([128] if 128 in sizes[1:] else sizes[-1:] if len(sizes) > 1 else [])
    train = "; ".join(f"{labels[n]} " + " / ".join(f"{cell[n, b]['train_mean']:.2f}" if (n, b) in cell else "-"
                                                          for b in ends) for n in norms)
    lines += ["", f"Final training accuracy % at batch {' / '.join(map(str, ends))} (measured during training, "
                  f"so with batch statistics for BN, dropout and rotated images): {train}."]
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


def _load(results, name):
    path = os.path.join(results, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def benchmark_table(results):
    """results/benchmark*.json (benchmarks/pipeline.py): the three pipelines side by side, per precision."""
    files = [f for f in ("benchmark.json", "benchmark_bf16.json")
             if _load(results, f) is not None]
    if not files:
        return "(no results/benchmark.json yet: `python benchmarks/pipeline.py`)"
    lines = ["| training step | pipeline | images/s (median) | min | max | relative to ours |",
             "|---|---|---|---|---|---|"]
    notes = []
    for file in files:
        b = _load(results, file)
        st = b["settings"]
        precision = st.get("precision", "fp32")
        for name, what in (("conventional", f"conventional: `DataLoader`, num_workers={st['num_workers']}"),
                           ("ours", "ours: on-device batches"), ("ceiling", "ceiling: one fixed batch, no data work")):
            samples = b["samples_img_s"][name]
            lines.append(f"| {precision} | {what} | {b[f'{name}_img_s']:,.0f} | {min(samples):,.0f} "
                         f"| {max(samples):,.0f} | {b[f'{name}_img_s'] / b['ours_img_s']:.2f} |")
        workers = ", ".join(f"{w}: {v:,.0f}" for w, v in st["num_workers_img_s"].items())
        v = b["versions"]
        notes.append(f"- `results/{file}` ({precision}): **speedup** (ours / conventional) **{b['speedup']:.2f}**, "
                     f"**efficiency** (ours / ceiling) **{b['efficiency']:.2f}**. {st['repeats']} repeats of "
                     f"{st['steps_per_measurement']} steps of batch {st['batch_size']}, alternating order, median; "
                     f"DataLoader images/s by num_workers (the fastest is used): {workers}. {b['device']}; "
                     f"Python {v['python']}, PyTorch {v['torch']}, torchvision {v['torchvision']}."
                     + (f" The step needs {b['flops_per_image'] / 1e6:.2f} MFLOP per image (forward and backward, "
                        f"`torch.utils.flop_counter`), so ours computes {b['ours_flop_s'] / 1e9:.1f} GFLOP/s: "
                        f"{100 * b['fraction_of_matmul_peak']:.0f}% of the {b['matmul_flop_s'] / 1e9:.0f} GFLOP/s of "
                        f"a 2048 x 2048 fp32 matrix product on the same threads." if "flops_per_image" in b else ""))
    return "\n".join(lines + [""] + notes)


def options_table(results, file="options.json"):
    """results/<file> (benchmarks/options.py): every option against the baseline (the default settings
    unless --baseline said otherwise)."""
    o = _load(results, file)
    if o is None:
        return f"(no results/{file} yet: `python benchmarks/options.py`)"
    baseline = o["settings"]["baseline"]
    lines = ["| option | images/s | baseline's images/s | ratio (median) | one 20-epoch run, estimated | end to end |",
             "|---|---|---|---|---|---|"]
    for group, what in (("train", "training"), ("eval", "evaluation")):
        for name, v in o[group].items():
            if "error" in v:
                lines.append(f"| {what}: {name} | failed: {v['error'][:120]} | | | | |")
                continue
            extra = f" (+{v['one_off_seconds']:.0f} s compiling)" if v.get("one_off_seconds", 0) >= 1 else ""
            lines.append(f"| {what}: {name} | {v['img_s']:,.0f} | {v['baseline_img_s']:,.0f} | {v['ratio']:.2f} "
                         f"| {v['run_seconds'] / 60:.1f} min{extra} | {v['end_to_end_speedup']:.2f} |")
    st = o["settings"]
    lines += ["", f"Training options are compared with: {baseline}; evaluation options with the default evaluation "
                  f"(batch 2000, inference_mode). One 20-epoch run with the baseline estimated at "
                  f"{o['baseline_run_seconds'] / 60:.1f} min. {st['repeats']} alternating repeats of "
                  f"{st['training_images_per_measurement']:,} training images (evaluation: the 10,000 test images); "
                  f"median of the per-repeat ratios. {o['device']}; PyTorch {o['versions']['torch']}."]
    return "\n".join(lines)


def cpu_of(entry):
    """The CPU a benchmark entry was measured on, from its device description ("cpu: NAME, 2 logical CPUs, ...")."""
    return entry["device"].split(",")[0].removeprefix("cpu: ")


def end_to_end_table(results):
    """results/end_to_end.json (benchmarks/end_to_end.py): each comparison's two settings in fresh processes."""
    e = _load(results, "end_to_end.json")
    if e is None:
        return "(no results/end_to_end.json yet: `python -m benchmarks.end_to_end`)"
    lines = ["| what is timed (fresh processes, alternating) | CPU | A | A seconds | B | B seconds | A / B |",
             "|---|---|---|---|---|---|---|"]
    row = lambda what, a, sa, b, sb: lines.append(f"| {what} | {cpu_of(entry)} | {a} | {sa:.1f} | {b} | {sb:.1f} | "
                                                  f"**{sa / sb:.2f}** |")
    if "malloc" in e:
        m = entry = e["malloc"]
        for key in sorted(k for k in m if k.endswith("_threads")):
            row(f"a BN + L1 epoch on {m['settings']['limit']:,} images + test, {key.split('_')[0]} thread(s)",
                "glibc default", m[key]["default_seconds"], "`machine.tune_malloc()`", m[key]["tuned_seconds"])
    if "pipeline" in e:
        p = entry = e["pipeline"]
        row(f"a BN + L1 epoch on 60,000 images + test, {p['settings']['threads']} threads",
            f"conventional (`DataLoader`, {p['specs']['conventional']['workers']} workers, PIL transforms, glibc "
            f"default)", p["conventional_seconds"], "ours (train.py's defaults)", p["ours_seconds"])
    if "precision" in e:
        p = entry = e["precision"]
        row(f"a BN + L1 epoch on {p['specs']['fp32']['limit'] or 60000:,} images + test, "
            f"{p['settings']['threads']} threads", "fp32", p["fp32_seconds"], "bf16 autocast", p["bf16_seconds"])
    for kind, p in sorted(end_to_end.isa_entries(e.get("isa")).items()):  # one row per kind of CPU measured
        used, entry = p["isa_in_use"], p
        row(f"a BN + L1 epoch on 60,000 images + test, {p['settings']['threads']} threads, on a CPU whose own is "
            f"{ISA_NAMES.get(kind, kind)}", f"the CPU's own (`--native-isa`: {used['native']})", p["native_seconds"],
            f"pinned to AVX2 (the default: {used['avx2']})", p["avx2_seconds"])
    if "affine" in e:
        p = entry = e["affine"]
        row(f"a BN + L1 epoch on 60,000 images + test, {p['settings']['threads']} threads",
            "the affine maps in MKL (`torch.tan`, `F.affine_grid`)", p["mkl_seconds"],
            "in ATen's own operations (the default)", p["aten_seconds"])
    if "cbwr" in e:
        p = entry = e["cbwr"]
        row(f"a BN + L1 epoch on 60,000 images + test, {p['settings']['threads']} threads, the affine maps in MKL",
            f"MKL's own choice ({p['mkl_branch']['mkl']})", p["mkl_seconds"],
            f"`MKL_CBWR=COMPATIBLE` ({p['mkl_branch']['mkl_compatible']})", p["mkl_compatible_seconds"])
    if "experiment" in e:
        x = entry = e["experiment"]
        row(f"`{x['settings']['command']}`, whole process", "--jobs 1", x["jobs1_seconds"], "--jobs 2",
            x["jobs2_seconds"])
    if "before" in e:
        x = entry = e["before"]
        row(f"`{x['settings']['command']}`, whole process, defaults", f"commit {x['before_commit']}",
            x["before_seconds"], "this code", x["after_seconds"])
    some = next((v for v in e.values() if isinstance(v, dict) and "device" in v), None)
    if some is None:
        return "(no comparison in results/end_to_end.json yet: `python -m benchmarks.end_to_end`)"
    repeats = sorted({v["settings"]["repeats"] for v in e.values() if isinstance(v, dict) and "settings" in v})
    lines += ["", f"`results/end_to_end.json`: {'/'.join(map(str, repeats))} processes per setting, alternating which "
                  f"goes first; epoch times are medians with each process's first epoch left out, whole runs medians "
                  f"of wall time; 2 logical CPUs; PyTorch {some['versions']['torch']}."]
    return "\n".join(lines)


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


def speed_table(results, target=99.4):
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
    log = _load(results, "invocations.json")
    if log:
        lines += ["", "| invocation that trained (`results/invocations.json`) | runs trained | jobs x threads "
                      "| wall minutes |", "|---|---|---|---|"]
        for i in log["invocations"]:
            lines.append(f"| {', '.join(i['runs'])} | {i['runs_trained']} | {i['jobs']} x {i['threads']} "
                         f"| {i['wall_seconds'] / 60:.1f} |")
    return "\n".join(lines)


def interval(values):
    """"99.52 ± 0.03" (mean ± half-width of its 95% interval), or the lone value."""
    mean, half = stats.mean_ci(values)
    return f"{mean:.2f} ± {half:.2f}" if half == half else f"{mean:.2f}"


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


def headline_table(results):
    """The README's first table: the three main runs' final test accuracy over their finished seeds."""
    records = load_records(results)
    lines = [f"| model | final test accuracy %, mean ± 95% interval | seeds | first epoch at ≥ {stats.TARGET}% "
             f"(mean) | " + " | ".join(f"seeds at ≥ {stats.TARGET}% in every epoch from {k} on" for k in STEADY_FROM)
             + " | parameters |", "|---|---|---|---|" + "---|" * len(STEADY_FROM) + "---|"]
    for recipe in experiment():
        done = stats.finished(records.get(recipe.name, []))
        if done:
            first = next(iter(done.values()))
            lines.append(f"| {recipe.label} | {interval([stats.final(r) for r in done.values()])} | {len(done)} "
                         f"| {reaches(records[recipe.name])} | "
                         + " | ".join(steady_count(records[recipe.name], k) for k in STEADY_FROM)
                         + f" | {first['config']['params']:,} |")
    return "\n".join(lines)


def fp32_runs(records):
    """[(name, {seed: record} of its finished seeds)] of the fp32 runs with a finished seed, in report order."""
    done = ((name, stats.finished(records[name])) for name in ordered(records))
    return [(name, seeds) for name, seeds in done
            if seeds and Recipe.from_config(records[name][0]["config"]).precision == "fp32"]


def steady_table(results):
    """Every fp32 run with its seeds: the epoch from which each seed stays at >= stats.TARGET % test accuracy
    through its last epoch ("-": its last epoch is below), and how many seeds do so from each of STEADY_FROM."""
    records = load_records(results)
    t = stats.TARGET
    lines = [f"| run | seeds | at ≥ {t}% in every epoch from, per seed | "
             + " | ".join(f"seeds at ≥ {t}% from epoch {k} on" for k in STEADY_FROM) + " |",
             "|---|---|---|" + "---|" * len(STEADY_FROM)]
    for name, done in fp32_runs(records):
        steady = stats.steady(records[name])
        lines.append(f"| {label(records[name][0])} | {', '.join(map(str, done))} "
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


def start_table(results):
    """Every fp32 run with its finished seeds: the evaluated model's test accuracy after epochs 1 and 2 (lowest to
    highest over the seeds), and the seeds whose test accuracy collapsed in some epoch (stats.collapses)."""
    records = load_records(results)
    lines = ["| run | seeds | test acc % after epoch 1, lowest to highest | after epoch 2 | seeds that diverged |",
             "|---|---|---|---|---|"]
    for name, done in fp32_runs(records):
        def spread(epoch):
            accs = [r["history"][epoch - 1]["test_acc"] for r in done.values()]
            return f"{min(accs):.2f} to {max(accs):.2f}" if len(accs) > 1 else f"{accs[0]:.2f}"
        diverged = [str(s) for s, r in done.items() if stats.collapses(r["history"])]
        lines.append(f"| {label(records[name][0])} | {', '.join(map(str, done))} | {spread(1)} | {spread(2)} "
                     f"| {', '.join(diverged) if diverged else 'none'} |")
    return "\n".join(lines)


def seeds_table(results):
    """Every fp32 run with its seeds: the mean and 95% interval of the final test accuracy, each seed's value, and
    the first epoch at >= TARGET per seed."""
    records = load_records(results)
    lines = [f"| run | seeds | final test acc %, mean ± 95% interval | final test acc % per seed | first epoch at "
             f"≥ {stats.TARGET}% per seed | its mean |", "|---|---|---|---|---|---|"]
    for name, done in fp32_runs(records):
        epochs = stats.time_to(records[name])
        lines.append(f"| {label(records[name][0])} | {', '.join(map(str, done))} "
                     f"| {interval([stats.final(r) for r in done.values()])} "
                     f"| {', '.join(f'{stats.final(r):.2f}' for r in done.values())} "
                     f"| {', '.join(str(e) if e else '-' for e in epochs.values())} | {reaches(records[name])} |")
    return "\n".join(lines)


def group_label(records, name):
    recipe = Recipe.from_config(records[name][0]["config"])
    return "GN, 1 group (= LN)" if recipe.norm == "LN" else f"GN, {recipe.groups} groups"


def findings_table(results):
    """Paired differences in final test accuracy (A - B over the seeds both have), with 95% intervals: the norms,
    L1 on BN, and GN's number of groups."""
    records = load_records(results)
    lines = ["| question | A | B | seeds | A - B, mean (points) | 95% interval | measured to differ? |",
             "|---|---|---|---|---|---|---|"]
    words, distinct = [], set()
    for question, pairs in (("norm", stats.NORM_PAIRS), ("L1", stats.L1_PAIRS), ("groups", stats.GROUP_PAIRS)):
        for a, b, p in stats.comparisons(records, pairs):
            la, lb = ((group_label(records, a), group_label(records, b)) if question == "groups"
                      else (label(records[a][0]), label(records[b][0])))
            if p["half"] != p["half"]:
                ci, verdict = "(one seed)", "cannot say: one seed"
            else:
                ci = f"[{p['low']:+.3f}, {p['high']:+.3f}]"
                verdict = (f"**yes: {la if p['mean'] > 0 else lb} higher**" if p["nonzero"]
                           else "no: the interval includes 0")
            seeds = p["seeds"]
            span = f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2 \
                else ", ".join(map(str, seeds))
            lines.append(f"| {question} | {la} | {lb} | {span} | {p['mean']:+.3f} | {ci} | {verdict} |")
            words.append((la, lb, p))
            if p["half"] == p["half"]:
                distinct.add(frozenset((a, b)))  # GN against LN is also 1 group against 2: one comparison, not two
    many = ([f"- **{len(distinct)} intervals at once.** Each covers its true difference with probability "
             f"{stats.LEVEL:.0%}, so where no difference is real, about one interval in {1 / (1 - stats.LEVEL):.0f} "
             "still excludes 0 by chance: one that only just excludes 0 is weak evidence on its own."] if len(distinct) > 1 else [])
    diverged = diverged_runs(records)
    collapsed = ([f"- **Diverged** (test accuracy fell by {stats.COLLAPSE:g} points or more in one epoch; such a "
                  f"run counts in the table like any other): " + "; ".join(diverged) + "."] if diverged else [])
    stuck = unlearned_runs(records)
    stuck = ([f"- **Did not learn** (test accuracy below {stats.NOT_LEARNED:g}% in every epoch; such runs count in the "
              f"table like any other): " + "; ".join(stuck) + "."] if stuck else [])
    return "\n".join(lines + [""] + in_words(words) + many + collapsed + stuck)


def in_words(comparisons):
    """The findings table in plain words: which differences the intervals show to be nonzero, which not."""
    nonzero, unresolved, single = [], [], []
    for la, lb, p in comparisons:
        if p["half"] != p["half"]:
            single.append(f"{la} against {lb}")
        elif p["nonzero"]:
            hi, lo = (la, lb) if p["mean"] > 0 else (lb, la)
            a, b = sorted((abs(p["low"]), abs(p["high"])))
            nonzero.append(f"{hi} is higher than {lo}, by {abs(p['mean']):.2f} points (interval {a:.2f} to {b:.2f}, "
                           f"{len(p['seeds'])} seeds)")
        else:
            unresolved.append(f"{la} against {lb} ({p['low']:+.2f} to {p['high']:+.2f} points, {len(p['seeds'])} seeds)")
    return [f"- **Measured to differ** (the 95% interval excludes 0): {'; '.join(nonzero) or 'none'}.",
            f"- **Not measured to differ** (the interval includes 0: the true difference may be 0, or of either sign "
            f"within the interval): {'; '.join(unresolved) or 'none'}."] + \
        ([f"- **One seed, no interval:** {'; '.join(single)}."] if single else [])


def seeds_figure(results):
    """static/seeds.png: each seed's final test accuracy with the mean and 95% interval, for the main runs (and BN
    without L1) and for GN's number of groups; None if no run has finished."""
    records = load_records(results)
    per_seed = lambda name: {s: stats.final(r) for s, r in stats.finished(records.get(name, [])).items()}
    main = {label(records[n][0]): per_seed(n) for n in ("bn_l1", "ln", "gn", "bn") if per_seed(n)}
    groups = {group_label(records, n).removeprefix("GN, "): per_seed(n) for n in ("ln", "gn", "gn_g5", "gn_g10")
              if per_seed(n)}
    panels = {title: runs for title, runs in (("The norms (and BN without L1)", main),
                                              ("GroupNorm's number of groups", groups)) if runs}
    return plot_seeds(panels) if panels else None


def search_table(results):
    """The recipe search in results/tune/ (tune.py): every setting's validation score, and the choice."""
    folder = os.path.join(results, tune.FOLDER)
    records = load_records(folder) if os.path.isdir(folder) else {}
    table = tune.scores(records)
    chosen = tune.choose(table)
    finalists = tune.second_seeds(table) or []
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
    done = sum(len(stats.finished(recs)) for recs in records.values())
    planned = 3 * len(tune.settings())
    if chosen:
        status = f"Chosen by the rule: `{chosen[0]}`"
    elif finalists:
        second = sum(1 in table[sid]["seeds"] for sid in finalists)
        status = (f"Not decided yet: seed 1 has finished for {second} of the {len(finalists)} close settings "
                  f"(`python tune.py --search augmentation --out .` resumes)")
    else:
        status = (f"Not decided yet: {done} of the {planned} seed-0 runs finished; then seed 1 of the close settings "
                  f"(`python tune.py --search augmentation --out .` resumes)")
    aug = "; ".join(f"{k}: " + utils.describe_augmentation(Recipe(**v)).split(";")[0]
                    for k, v in tune.AUGMENTATIONS.items())
    lines += ["", f"Validation accuracy: the last {tune.VAL:,} training images, after epoch 20, training on the other "
                  f"50,000. Score: the mean over the three norms (and seeds). Augmentations: {aug}. {status}."]
    ids = [tune.setting_id(st) for st in tune.settings()]
    diverged = diverged_runs(records, lambda name: next((f"`{sid}`" for sid in ids if name.endswith("_" + sid)), ""))
    if diverged:
        lines += ["", f"Diverged (validation accuracy fell by {stats.COLLAPSE:g} points or more in one epoch): "
                      + "; ".join(diverged) + "."]
    return "\n".join(lines)


def schedule_search_table(results):
    """The schedule search (tune.py --search schedule): every setting's validation score and settle epoch, and the
    choice by its rule, or what the rule still needs."""
    records = tune.schedule_records(results)
    table = tune.scores(records, tune.SCHEDULES)
    chosen = tune.schedule_choose(table)
    finalists = tune.second_seeds(table, len(tune.SCHEDULES)) or []
    lines = ["| setting | BN + L1 / LN / GN val acc %, seed 0 | seed 1 | score (mean) | settles at epoch (mean) "
             "| second seed? | chosen |", "|---|---|---|---|---|---|---|"]
    for sid, t in sorted(table.items(), key=lambda kv: -kv[1]["score"]):
        per = lambda seed: " / ".join(f"{r['history'][-1]['test_acc']:.2f}" for name in ordered(records)
                                      if name.endswith("_" + sid) and name.removesuffix("_" + sid) in NORM_NAMES
                                      for r in records[name] if r["config"]["seed"] == seed)
        mark = "**chosen**" if chosen and sid == chosen[0] else ("tied" if chosen and sid in chosen[2] else "")
        lines.append(f"| {sid} | {per(0)} | {per(1) if 1 in t['seeds'] else ''} | {t['score']:.3f} | {t['settle']:.1f} "
                     f"| {'yes' if sid in finalists else ''} | {mark} |")
    if chosen:
        status = f"Chosen by the rule: `{chosen[0]}`" + (": today's recipe stays" if chosen[0] == "today" else "")
    else:
        done = sum(sid in table for sid in tune.SCHEDULES)
        status = (f"Not decided yet: seed 0 has finished for {done} of the {len(tune.SCHEDULES)} settings, then seed 1 "
                  f"of the close ones (`python tune.py --search schedule --out .` resumes)")
    lines += ["", f"Validation accuracy: the last {tune.VAL:,} training images, after epoch 20, training on the other "
                  f"50,000. Score: the mean over the three norms (and seeds). Settles: the first epoch from which a "
                  f"run's validation accuracy stays within {tune.SETTLE:g} points of its final one. {status}."]
    diverged = diverged_runs(records, lambda name: next((f"`{sid}`" for sid in tune.SCHEDULES
                                                         if name.endswith("_" + sid)), ""))
    if diverged:
        lines += ["", f"Diverged (validation accuracy fell by {stats.COLLAPSE:g} points or more in one epoch): "
                      + "; ".join(diverged) + "."]
    return "\n".join(lines)


def stress_table(results):
    """The stress test (tune.py --search stress): each arm's runs, the runs that diverged, validation accuracy after
    epochs 1 and 6 and the largest gradient norm; the clip its rule set, once stage 1 is complete."""
    records = tune.stress_records(results)
    if not records:
        return "(no stress runs yet: `python tune.py --search stress --out .`)"
    table, clip = tune.stress_table(records), tune.stress_clip(records)
    lines = [f"| peak lr | clip | runs (of {len(tune.STRESS_SEEDS)}) | diverged | val acc % after epoch 1 "
             f"| after epoch {tune.STRESS_EPOCHS} | median gradient norm, epochs 2-{tune.STRESS_EPOCHS} (median "
             "over runs) | largest gradient norm |", "|---|---|---|---|---|---|---|---|"]
    for name, t in sorted(table.items(), key=lambda kv: (kv[1]["clip"], kv[1]["peak"])):
        runs = [r for r in records[name] if len(r["history"]) >= tune.STRESS_EPOCHS]
        at = lambda epoch: interval([r["history"][epoch - 1]["test_acc"] for r in runs])
        typical = statistics.median(statistics.median(e["grad_norm_median"] for e in r["history"][1:tune.STRESS_EPOCHS])
                                    for r in runs)
        seeds = ", ".join(f"seed {s}" for s in t["diverged"])
        lines.append(f"| {t['peak']:g} | {t['clip']:g} | {t['runs']} | {len(t['diverged'])}"
                     f"{f' ({seeds})' if seeds else ''} | {at(1)} | {at(tune.STRESS_EPOCHS)} "
                     f"| {typical:.2f} | {t['grad_norm_max']:.1f} |")
    lines += ["", "Validation accuracy: the last 10,000 training images, mean ± the 95% interval over the runs. "
                  + (f"The clip set by rule 4 from stage 1: {clip:g}." if clip is not None else
                     "Stage 1 is not complete: the clip is not set yet.")]
    low, high = tune.STRESS_PEAKS
    arms = [table.get(tune.stress_name(peak, c)) for peak in (low, high) for c in (0, clip if clip is not None else -1)]
    if all(a is not None and a["runs"] == len(tune.STRESS_SEEDS) for a in arms):
        (low0, low_clip, high0, high_clip) = (len(a["diverged"]) for a in arms)
        stops = high_clip < high0 and low_clip == 0
        lines += ["", f"Rule 6: at {high:g}, {high_clip} of the runs diverged with the clip and {high0} without; at "
                      f"{low:g}, {low_clip} with it and {low0} without. By the rule, the clip "
                      + ("stops divergence." if stops else "is not shown to stop divergence"
                         + (f" (no run diverged at {high:g} without it)." if high0 == 0 else "."))]
    return "\n".join(lines)


def guard_search_table(results):
    """The guard search (tune.py --search guard): every candidate's validation score, settle epoch and divergences, and
    the choice by its rule, or what the rule still needs."""
    folder = os.path.join(results, tune.GUARD_FOLDER)
    records = load_records(folder) if os.path.isdir(folder) else {}
    table = tune.guard_table(records)
    if not table:
        return "(no finished runs yet: `python tune.py --search guard --out .`)"
    order = tune.preference(tune.stress_records(results))
    chosen = tune.guard_choose(table, order)
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
        close = tune.guard_finalists(table)
        if not close:
            status = (f"Not decided yet: seed 0 has finished for {len(table)} of the {len(tune.CANDIDATES)} "
                      "candidates, then seed 1 of the close ones")
        else:
            status = (f"Not decided yet: seed 1 of the candidates within {tune.CLOSE:.2f} points of the best seed-0 "
                      f"score ({', '.join(close)}) has finished for "
                      f"{sum(1 in table[c]['seeds'] for c in close)} of them")
        if order is None:
            status += "; the stress test's stage 2 sets the last tie's order"
        status += " (`python tune.py --search guard --out .` resumes)"
    lines += ["", f"Validation accuracy: the last {tune.VAL:,} training images, after epoch 20, training on the other "
                  f"50,000. Score: the mean over the three norms (and seeds). {status}."]
    return "\n".join(lines)


NORM_NAMES = [r.name for r in experiment()]  # bn_l1, ln, gn: the runs of each setting of a search


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


def worked_example(results):
    return "```text\n" + normalizations.worked_example() + "\n```"


def worked_example_short(results):
    return "```text\n" + normalizations.worked_example(brief=True) + "\n```"


TABLES = {"headline": headline_table, "start": start_table, "seeds": seeds_table, "steady": steady_table, "findings": findings_table,
          "search": search_table, "schedule-search": schedule_search_table, "tuning": tuning_table, "results": results_table,
          "v1-results": lambda results: results_table(os.path.join(results, V1)),
          "v1-seeds": lambda results: seeds_table(os.path.join(results, V1)),
          "v1-findings": lambda results: findings_table(os.path.join(results, V1)),
          "v2-results": lambda results: results_table(os.path.join(results, V2)),
          "v2-seeds": lambda results: seeds_table(os.path.join(results, V2)),
          "v2-steady": lambda results: steady_table(os.path.join(results, V2)),
          "v2-findings": lambda results: findings_table(os.path.join(results, V2)),
          "v3-results": lambda results: results_table(os.path.join(results, V3)),
          "v3-seeds": lambda results: seeds_table(os.path.join(results, V3)),
          "v3-steady": lambda results: steady_table(os.path.join(results, V3)),
          "v3-start": lambda results: start_table(os.path.join(results, V3)),
          "v3-findings": lambda results: findings_table(os.path.join(results, V3)),
          "batch-size": batch_size_table, "benchmark": benchmark_table, "options": options_table,
          "end-to-end": end_to_end_table, "one-minute": one_minute_table, "speed": speed_table, "worked-example": worked_example,
          "worked-example-short": worked_example_short,
          "stress": stress_table, "guard-search": guard_search_table, "shift-sets": shift.accuracy_table, "shift-differences": shift.differences_table,
          "shift-summary": lambda results: shift.accuracy_table(results, sets=[shift.CLEAN])}
FILES = [os.path.join(HERE, f) for f in ("README.md", "docs/experiments.md", "docs/performance.md")]


def render(text, results):
    """Replace the body between each <!-- NAME:start --> and <!-- NAME:end --> pair in text; an unknown
    NAME is an error."""
    for name in re.findall(r"<!-- ([\w-]+):start -->", text):
        if name not in TABLES:
            raise ValueError(f"unknown block <!-- {name}:start -->; known: {', '.join(TABLES)}")
        pattern = re.compile(rf"(<!-- {name}:start -->\n)(?:.*?\n)?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"<!-- {name}:start --> has no <!-- {name}:end -->")
        text = pattern.sub(lambda m: m.group(1) + TABLES[name](results) + "\n" + m.group(2), text)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--files", nargs="+", default=FILES, help="the files whose generated blocks are rewritten")
    p.add_argument("--results", default=os.path.join(HERE, "results"), help="where the run JSON files are")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of date")
    args = p.parse_args(argv)
    texts = {}
    for path in args.files:
        with open(path) as f:
            texts[path] = f.read()
    found = {name for text in texts.values() for name in re.findall(r"<!-- ([\w-]+):start -->", text)}
    if args.files == FILES and set(TABLES) - found:
        raise ValueError(f"no file has the blocks {sorted(set(TABLES) - found)}")
    stale = 0
    for path, text in texts.items():
        new = render(text, args.results)
        if args.check:
            if new != text:
                print(f"{path} does not match {args.results}: run `python report.py`", file=sys.stderr)
                stale = 1
            continue
        if new != text:
            with open(path, "w") as f:
                f.write(new)
        print(f"{'updated' if new != text else 'unchanged'}: {os.path.relpath(path)}")
    if not args.check:
        static = os.path.join(os.path.dirname(os.path.abspath(args.results)), "static")
        for name, draw in (("seeds", seeds_figure), ("seed_curves", seed_curves_figure)):
            fig = draw(args.results)
            if fig is not None:
                print(f"wrote {os.path.relpath(save_figure(fig, os.path.join(static, name + '.png')))}")
    if args.check and not stale:
        print(f"{', '.join(os.path.relpath(p) for p in texts)} match {args.results}")
    return stale


if __name__ == "__main__":
    sys.exit(main())
