"""How BN, LN and GN hold up on corrupted test images: every seed's trained weights on every corrupted test set.

    python -m studies.shift --out .    # the committed weights -> results/shift/, static/shift.png (the committed study)
    python -m studies.shift --runs .   # the committed weights -> runs/results/shift/ and runs/static/shift.png
    python -m studies.shift            # the weights you trained into runs/ -> runs/results/shift/, runs/static/

The corrupted sets are the 10,000 test images corrupted as MNIST-C does (corruptions.py), at three severities,
from one seed. Each model is evaluated in eval mode, as every epoch of its training was; BN models also with
each test batch's own statistics instead of the running averages (training.predict(batch_stats=True)), at the
recipe's batch size and at a larger one, since prediction-time BN is known to recover part of the accuracy lost
under corruption (Schneider et al. 2020; Nado et al. 2020). One JSON per model under results/shift/, written after
every corrupted set, so that an interrupted study resumes; a file whose weights have changed is computed again.
Inference only: a few minutes per model on a CPU.
"""
import argparse
import os
import sys
import textwrap

import numpy as np
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from mnist_norms import cli, runner
from mnist_norms.cli import device as parse_device
from mnist_norms.data import load_mnist
from mnist_norms.files import sha256_file, write_json
from mnist_norms.recipe import Recipe
from mnist_norms.records import load_weights, read_json, read_record
from mnist_norms.training import evaluate
from studies import corruptions, stats
from studies.tables import interval

FOLDER = "shift"
MODELS = ("bn_l1", "bn", "ln", "gn")  # the recipe's runs the study evaluates: the three norms, and BN without L1
CLEAN = "clean"
BATCHES = (Recipe.batch_size, 1000)  # batch sizes of BN's evaluation with the test batch's own statistics
EVAL = "eval"  # every model's evaluation: BN with its running averages


def modes(name):
    """The evaluations of a model: eval, and for BN also "batch64" and "batch1000" (the batch's own statistics)."""
    return [EVAL] + ([f"batch{b}" for b in BATCHES] if name.startswith("bn") else [])


CORRUPTION_OF = {corruptions.set_name(c, level): c for c, level in corruptions.sets()}  # set name -> corruption


def set_names():
    """clean, then every corrupted set (corruptions.sets())."""
    return [CLEAN] + [corruptions.set_name(c, level) for c, level in corruptions.sets()]


def weights_files(out):
    """{(name, seed): path} of the recipe's weights under OUT/weights/ (the folder of Recipe's defaults)."""
    folder = os.path.join(out, "weights")
    found = {}
    for file in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        stem, ext = os.path.splitext(file)
        name, _, seed = stem.rpartition("_seed")
        if ext == ".pt" and name in MODELS and seed.isdigit():
            found[(name, int(seed))] = os.path.join(folder, file)
    return dict(sorted(found.items(), key=lambda kv: (MODELS.index(kv[0][0]), kv[0][1])))


def evaluate_mode(model, data, mode):
    """(mean NLL, accuracy %) of the model on data in `mode` (modes())."""
    if mode == EVAL:
        return evaluate(model, data)  # as in training: running averages, training.EVAL_BATCH images at a time
    return evaluate(model, data, int(mode.removeprefix("batch")), batch_stats=True)


def study(data, *, out, device, runs=None, seed=0, progress=True, log=print):
    """Evaluate every weights file of the recipe under RUNS/weights/ (RUNS: by default OUT) on the clean and every
    corrupted test set; writes OUT/results/shift/<name>_seed<S>.json and returns {(name, seed): record}."""
    runs = out if runs is None else runs
    files = weights_files(runs)
    if not files:
        raise ValueError(f"no weights of the recipe's runs under {os.path.join(runs, 'weights')} (files such as "
                         f"ln_seed0.pt, which train.py writes there); the committed ones: --runs .")
    _, test = data
    records, models = {}, {}
    for (name, s), path in files.items():
        target = os.path.join(out, "results", FOLDER, f"{name}_seed{s}.json")
        digest = sha256_file(path)
        record = read_json(target, "shift results") if os.path.exists(target) else None
        if record is not None and (record["sha256"] != digest or record["corruption_seed"] != seed):
            log(f"{os.path.relpath(target)}: made from other weights or another corruption seed; computed again")
            record = None
        run = os.path.join(runs, "results", f"{name}_seed{s}.json")
        run_record = read_record(run) if os.path.exists(run) else {}
        if record is None:
            recorded = run_record["history"][-1]["test_acc"] if run_record else None
            record = {"name": name, "seed": s, "weights": os.path.relpath(path, runs), "sha256": digest,
                      "corruption_seed": seed, "recorded_test_acc": recorded, "sets": {}}
        # A set made with an older definition of its corruption (corruptions.VERSIONS) is computed again
        for set_name in [n for n in record["sets"] if n != CLEAN]:
            made = record.get("versions", {}).get(set_name, 1)
            if made != corruptions.version(CORRUPTION_OF[set_name]):
                log(f"{os.path.relpath(target)}: {set_name} was made with version {made} of its corruption; computed "
                    f"again")
                del record["sets"][set_name]
        records[(name, s)] = (target, record)
        # the SHA-256 the run recorded for its weights (runs from before it was recorded: unchecked)
        models[(name, s)] = load_weights(path, device, sha256=run_record.get("weights_sha256"))[0]
    for set_name in tqdm(set_names(), disable=not progress, desc="corrupted sets"):
        todo = [key for key, (_, record) in records.items()
                if any(mode not in record["sets"].get(set_name, {}) for mode in modes(key[0]))]
        if not todo:
            continue
        images, labels = test
        if set_name != CLEAN:
            corruption, level = next((c, lv) for c, lv in corruptions.sets() if corruptions.set_name(c, lv) == set_name)
            images = corruptions.corrupt(images, corruption, level, seed=seed)
        for key in todo:
            target, record = records[key]
            entry = record["sets"].setdefault(set_name, {})
            if set_name != CLEAN:
                record.setdefault("versions", {})[set_name] = corruptions.version(CORRUPTION_OF[set_name])
            for mode in modes(key[0]):
                if mode not in entry:
                    loss, acc = evaluate_mode(models[key], (images, labels), mode)
                    entry[mode] = {"test_loss": loss, "test_acc": acc}
            write_json(target, record)
        log(f"{set_name}: " + ", ".join(f"{n}_seed{s} {records[(n, s)][1]['sets'][set_name][EVAL]['test_acc']:.2f}"
                                        for n, s in todo))
    return {key: record for key, (_, record) in records.items()}


def load(results):
    """{(name, seed): record} of the study's files under a results/ folder."""
    folder = os.path.join(results, FOLDER)
    out = {}
    for file in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if file.endswith(".json"):
            record = read_json(os.path.join(folder, file), "shift results")
            out[(record["name"], record["seed"])] = record
    return out


def accuracies(records, name, mode, set_name):
    """{seed: test accuracy %} of one model and mode on one set, over the seeds that have it."""
    return {s: r["sets"][set_name][mode]["test_acc"] for (n, s), r in records.items()
            if n == name and mode in r["sets"].get(set_name, {})}


# The comparisons the study reports, each A minus B paired by seed: (name A, mode A), (name B, mode B).
PAIRS = [(("ln", EVAL), ("bn_l1", EVAL)), (("gn", EVAL), ("bn_l1", EVAL)), (("gn", EVAL), ("ln", EVAL)),
         (("bn_l1", f"batch{BATCHES[0]}"), ("bn_l1", EVAL)), (("bn_l1", f"batch{BATCHES[1]}"), ("bn_l1", EVAL)),
         (("bn_l1", f"batch{BATCHES[1]}"), ("bn_l1", f"batch{BATCHES[0]}"))]


def paired(records, a, b, sets):
    """A minus B, paired by seed, of the mean accuracy over `sets` (set names), over the seeds both have: as
    stats.paired's dict ("seeds", "differences", "mean", "half", "low", "high", "nonzero"), or None without a common
    seed. a, b: (name, mode)."""
    return stats.paired_values(group_means(records, *a, sets), group_means(records, *b, sets))


def groups():
    """{group: [its corrupted sets' names]} (corruptions.GROUPS), and "all corrupted sets"."""
    by_group = {g: [corruptions.set_name(c, lv) for c, lv in corruptions.sets() if c in names]
                for g, names in corruptions.GROUPS.items()}
    return {**by_group, "all corrupted sets": set_names()[1:]}


def cell(values):
    """ "97.12 ± 0.31" over seeds, or the lone value; "" without any."""
    return interval(list(values)) if values else ""


def accuracy_table(results, sets=None):
    """Markdown: mean test accuracy (± its 95% interval over seeds) of each of ROWS on each set (by default every set,
    then the mean over each group of corrupted sets)."""
    records = load(results)
    rows = [(n, m) for n, m in ROWS if any(k[0] == n for k in records)]
    if not rows:
        return "(no results/shift/ yet: `python -m studies.shift --out .`)"
    seeds = sorted({s for (n, s) in records})
    lines = ["| test set | " + " | ".join(row_label(n, m) for n, m in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for set_name in sets or set_names():
        lines.append(f"| {set_name} | " + " | ".join(cell(accuracies(records, n, m, set_name).values())
                                                      for n, m in rows) + " |")
    for group, members in groups().items():  # a group named by what it holds: "blur" holds JPEG too
        held = (f"{', '.join(corruptions.GROUPS[group])}: " if group in corruptions.GROUPS
                else f"{len(corruptions.CORRUPTIONS)} corruptions, ")
        lines.append(f"| **mean: {group}** ({held}{len(members)} sets) | " + " | ".join(
            cell(group_means(records, n, m, members).values()) for n, m in rows) + " |")
    lines.append("")
    lines.append(f"Seeds: {', '.join(map(str, seeds))} of each model (`results/shift/`); "
                 f"± the 95% interval of the mean over seeds. Corruption seed "
                 f"{', '.join(sorted({str(r['corruption_seed']) for r in records.values()}))}.")
    return "\n".join(lines)


def group_means(records, name, mode, sets):
    """{seed: mean accuracy over `sets`} of one model and mode, for the seeds that have all of them."""
    return {s: float(np.mean([r["sets"][c][mode]["test_acc"] for c in sets])) for (n, s), r in records.items()
            if n == name and all(mode in r["sets"].get(c, {}) for c in sets)}


def differences_table(results):
    """Markdown: each of PAIRS, A minus B paired by seed, on the mean over each group of corrupted sets and on the
    clean set, with its 95% interval; and the corrupted sets on which the interval excludes 0."""
    records = load(results)
    if not records:
        return "(no results/shift/ yet: `python -m studies.shift --out .`)"
    named = groups()
    lines = ["| A minus B (points) | clean | " + " | ".join(named) + " | sets where A - B excludes 0 |",
             "|---" * (len(named) + 3) + "|"]
    for a, b in PAIRS:
        if not any(k[0] == a[0] for k in records) or not any(k[0] == b[0] for k in records):
            continue
        cells = []
        for members in [[CLEAN]] + list(named.values()):
            d = paired(records, a, b, members)
            cells.append("" if d is None else f"{d['mean']:+.2f}" + (f" [{d['low']:+.2f}, {d['high']:+.2f}]"
                                                                       if d["half"] == d["half"] else ""))
        apart = []
        for set_name in set_names()[1:]:
            d = paired(records, a, b, [set_name])
            if d is not None and d["nonzero"]:
                apart.append(f"{set_name} ({d['mean']:+.{1 if abs(d['mean']) >= 1 else 2}f})")  # no "+0.0"
        lines.append(f"| {row_label(*a)} - {row_label(*b)} | " + " | ".join(cells)
                     + f" | {', '.join(apart) or 'none'} |")
    return "\n".join(lines)


ROWS = [("bn_l1", EVAL), ("bn_l1", f"batch{BATCHES[0]}"), ("bn_l1", f"batch{BATCHES[1]}"), ("ln", EVAL), ("gn", EVAL)]


def row_label(name, mode):
    """ "BN + L1", "BN + L1, batch statistics (64)"."""
    label = {"bn_l1": "BN + L1", "bn": "BN", "ln": "LN", "gn": "GN"}[name]
    return label if mode == EVAL else f"{label}, batch statistics ({mode.removeprefix('batch')})"


def figure_data(records, test_images, seed=0, example=0):
    """(rows, examples) for figures.plot_shift: the mean accuracy over seeds of each of ROWS on each set, and test
    image `example` as each set shows it (the whole set is corrupted again: a corruption's draws depend on how many
    images it corrupts)."""
    rows = {}
    for name, mode in ROWS:
        means = {s: float(np.mean(list(accs.values()))) for s in set_names()
                 if (accs := accuracies(records, name, mode, s))}
        if means:
            rows[row_label(name, mode)] = means
    examples = {CLEAN: test_images[example].cpu()}
    for corruption, level in corruptions.sets():
        images = corruptions.corrupt(test_images, corruption, level, seed=seed)
        examples[corruptions.set_name(corruption, level)] = images[example].cpu()
    return rows, examples


def plot_shift(rows, examples, *, title="Test accuracy (%) on corrupted test images, mean over seeds"):
    """A heatmap of accuracy per model (rows: {label: {set name: accuracy}}) and test set (columns, in the order of
    `examples`), under a row of one test image as each set shows it (examples: {set name: uint8 [28, 28]})."""
    names = list(examples)
    fig = Figure(figsize=(0.42 * len(names) + 2.2, 1.2 + 0.42 * len(rows)), layout="constrained")
    grid = fig.add_gridspec(2, len(names), height_ratios=[1, 0.42 * len(rows)])
    for i, name in enumerate(names):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(examples[name].numpy(), cmap="gray_r", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(grid[1, :])
    values = np.array([[row.get(name, np.nan) for name in names] for row in rows.values()])
    ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for (r, c), v in np.ndenumerate(values):
        if v == v:
            ax.text(c, r, f"{v:.0f}" if v < 99.5 else f"{v:.1f}", ha="center", va="center", fontsize=6.5,
                    color="black" if 25 < v < 90 else "white")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=9)
    fig.suptitle(title, fontsize=11)
    return fig


def groups_figure(results):
    """static/shift_groups.png, for the README's width: each of ROWS' mean accuracy over the clean set and over each
    group of corrupted sets, with its 95% interval over seeds; None without results/shift/."""
    records = load(results)
    rows = [(n, m) for n, m in ROWS if any(k[0] == n for k in records)]
    if not rows:
        return None
    named = {"clean": [CLEAN], **groups()}
    fig = Figure(figsize=(9, 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        cis = [stats.mean_ci(list(group_means(records, *row, members).values())) for members in named.values()]
        xs = np.arange(len(named)) + (i - (len(rows) - 1) / 2) * width
        ax.bar(xs, [m for m, _ in cis], width, yerr=[h if h == h else 0 for _, h in cis], capsize=2,
               color=f"C{i}", label=row_label(*row))
    ax.set_xticks(range(len(named)), [textwrap.fill(g, 12) for g in named], fontsize=9)
    ax.set_ylabel("test accuracy %, mean over seeds")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), fontsize="small", loc="outside lower center", ncols=3)
    ax.set_title("Corrupted test images: the mean over each group of sets (bars: 95% interval over seeds)",
                 fontsize=10)
    return fig


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--out", default=runner.RUNS,
                   help="where results/shift/ and static/shift.png are written (default: %(default)s, a folder of your "
                        "own that git ignores; --out . is the repository's committed study, written only when asked)")
    p.add_argument("--runs", default=None,
                   help="where the runs' weights/ and results/ are read (default: --out; --runs . is the committed "
                        "weights)")
    p.add_argument("--data", default="data", help="dataset root (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the seed of the corruptions' random draws (default: 0)")
    p.add_argument("--device", type=parse_device, default="auto",
                   help="cpu, cuda[:N], mps, or auto: cuda, then mps, then cpu (default: auto)")
    p.add_argument("--no-figures", action="store_true", help="write results/shift/ only, leaving static/ as it is")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    def body():  # after the AVX2 pin (cli.run_command): the same kernels as training, on any x86-64 CPU
        data = load_mnist(args.data)
        return data, study(data, out=args.out, runs=args.runs, device=args.device, seed=args.seed,
                           progress=not args.no_progress)
    data, records = cli.run_command("studies.shift", body,
                                    kept="the results of every weights file evaluated are kept")
    mismatch = [f"{n}_seed{s}: {r['sets'][CLEAN][EVAL]['test_acc']} against {r['recorded_test_acc']}"
                for (n, s), r in records.items()
                if r["recorded_test_acc"] is not None and r["sets"][CLEAN][EVAL]["test_acc"] != r["recorded_test_acc"]]
    if mismatch:
        print("the clean test set does not give the accuracy the runs recorded: " + "; ".join(mismatch))
    if not args.no_figures:
        from mnist_norms.figures import save_figure
        path = save_figure(plot_shift(*figure_data(records, data[1][0], seed=args.seed)),
                           os.path.join(args.out, "static", "shift.png"))
        print(f"wrote {os.path.relpath(path)}")
        path = save_figure(groups_figure(os.path.join(args.out, "results")),
                           os.path.join(args.out, "static", "shift_groups.png"))
        print(f"wrote {os.path.relpath(path)}")
    return 1 if mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
