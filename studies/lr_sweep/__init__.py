"""What normalization buys: the peak learning rates BN + L1, LN, GN and the two controls (model.CONTROLS: no norm,
default init; no norm, scaled init + affine) tolerate, on the validation split, with each block's output scale at the
end.

    python -m studies.lr_sweep --out .    # results/lr_sweep/, static/lr_sweep.png, static/block_scales.png

Every model at every peak of the one-cycle schedule in PEAKS, seeds SEEDS, EPOCHS epochs (the cycle spans them all and
peaks after 15% of its steps, as the recipe's does), trained on the first 50,000 training images and scored on the
last VAL (never the test set); everything else is today's recipe (recipe.Recipe), L1 on the BN run only. Each run
records what every run records (the gradient's norm included), and, once finished, the standard deviation of each
block's output (`block_std`) of the evaluated model on the first SCALE_IMAGES validation images, in eval mode.

The rule, fixed and committed before the sweep's first run:

1. Every model at every peak of PEAKS, seeds SEEDS. If any model's mean final validation accuracy at the largest peak
   of PEAKS is at least TRAINS, every model also trains at EXTRA_PEAK.
2. A run diverged if its validation accuracy fell by stats.COLLAPSE (10) points or more from one epoch to the next
   (stats.diverged), or its last epoch's validation loss is not finite.
3. A control's peak (for its ten seeds on the test set): among the peaks at which none of the control's seeds
   diverged, the one with the highest mean final validation accuracy over its seeds. Peaks within TIE points of that
   mean are tied, and the tie goes to the peak nearest the recipe's (0.1) on a log scale, then to the larger.

Then each control on the test set, as train.py trains it: seeds CONTROL_SEEDS, Recipe.epochs epochs, at the peak rule
3 chose for it, and, if that is not the recipe's, at the recipe's peak for seeds RECIPE_SEEDS (--sweep-only leaves
them out). Their files go where train.py puts a run of those settings: OUT/results/none_seed<S>.json at the recipe's
peak, OUT/results/lr<peak>/ at another (affine_seed<S>.json for the second control). The second control (AFFINE) joined
the sweep after its first 72 runs, under the same rule, with its hypotheses committed before its first run
(docs/experiments.md).

Runs resume like train.py's (run the same command again); the sweep's results go to OUT/results/lr_sweep/ (--out: by
default runs/), and each invocation that trains logs its wall time to sweep.json there (the control's to control.json
in its own folder).
"""
import math
import os

import numpy as np
import torch

import utils
from mnist_norms import runner
from mnist_norms.augment import to_input
from mnist_norms.data import select
from mnist_norms.files import write_json
from mnist_norms.recipe import L1, Recipe, settings_folder
from mnist_norms.records import load_records, load_weights, run_paths
from model import CONTROL, CONTROLS, MODELS
from studies import stats

PEAKS = (0.01, 0.03, 0.1, 0.3, 1.0)
EXTRA_PEAK = 3.0
TRAINS = 90.0     # % mean final validation accuracy: a model that still trains at a peak (rule 1)
TIE = stats.TIE   # points (rule 3)
SEEDS = (0, 1, 2)
EPOCHS = 6        # the rise to the peak (in epoch 1) and five epochs of the anneal: enough to see a divergence
VAL = stats.VALIDATION
SCALE_IMAGES = 1000
BLOCKS = ("conv0", "conv1", "trans1", "conv2", "conv3", "conv4", "conv5", "conv6")  # model.Net's, input to output
FOLDER = "lr_sweep"
CONTROL_SEEDS = tuple(range(10))  # the control on the test set: the experiment's ten seeds at rule 3's peak ...
RECIPE_SEEDS = CONTROL_SEEDS      # ... and at the recipe's peak, when rule 3 chose another, so that every model has
#                                   ten seeds at the same peak (seeds 5-9 at 0.1 joined after 0-4, issue 49)


def recipes(peaks=None, **settings):
    """The sweep's recipes at `peaks` (default PEAKS), seed by seed, then peak, then model (an interrupted sweep leaves
    whole comparisons); `settings` (Recipe fields) for all."""
    return [Recipe(norm, l1=L1 if norm == "BN" else 0.0, lr=peak, **{"epochs": EPOCHS, "val": VAL, **settings},
                   seed=seed)
            for seed in SEEDS for peak in peaks or PEAKS for norm in MODELS]


def run_name(recipe):
    """ "bn_l1_lr0.3": the run's file name stem (its files add _seed<S>)."""
    return f"{recipe.name}_lr{recipe.lr:g}"


def diverged(record):
    """Rule 2: its validation accuracy fell by stats.COLLAPSE points in one epoch, or its last loss is not finite."""
    return stats.diverged(record["history"]) or not math.isfinite(record["history"][-1]["test_loss"])


def planned_peaks(records):
    """PEAKS, and EXTRA_PEAK once rule 1 asks for it (it needs every model's seeds at the largest peak)."""
    top = PEAKS[-1]
    for norm in MODELS:
        runs = [r for recs in records.values() for r in recs if r["config"]["norm"] == norm
                and r["config"]["lr"] == top and len(r["history"]) >= r["config"]["epochs"]]
        if len(runs) == len(SEEDS) and np.mean([stats.final(r) for r in runs]) >= TRAINS:
            return PEAKS + (EXTRA_PEAK,)
    return PEAKS


def table(records):
    """{(norm, peak): {"label", "finals": {seed: final acc}, "diverged": [seeds], "never": [seeds], "std": {seed:
    block_std}}} of the finished runs; "never": the seeds that never learned (stats.never_learned)."""
    out = {}
    for recs in records.values():
        for r in recs:
            if len(r["history"]) < r["config"]["epochs"]:
                continue
            recipe = Recipe.from_config(r["config"])
            cell = out.setdefault((recipe.norm, recipe.lr), {"label": recipe.label, "finals": {}, "diverged": [],
                                                             "never": [], "std": {}})
            cell["finals"][recipe.seed] = stats.final(r)
            if diverged(r):
                cell["diverged"].append(recipe.seed)
            elif stats.never_learned(r["history"]):
                cell["never"].append(recipe.seed)
            if "block_std" in r:
                cell["std"][recipe.seed] = r["block_std"]
    return out


def trained(cell):
    """The seeds of a table cell that trained: neither diverged nor never learned."""
    return sorted(set(cell["finals"]) - set(cell["diverged"]) - set(cell["never"]))


def seeds_phrase(seeds):
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, sorted(seeds)))}"


def control_peak(records, norm=CONTROL):
    """Rule 3: (control `norm`'s peak, the peaks tied with it), or None while a planned peak of it is unfinished."""
    cells = table(records)
    peaks = planned_peaks(records)
    if any(len(cells.get((norm, p), {}).get("finals", {})) < len(SEEDS) for p in peaks):
        return None
    alive = {p: float(np.mean(list(cells[norm, p]["finals"].values()))) for p in peaks
             if not cells[norm, p]["diverged"]}
    if not alive:
        return None
    tied = sorted(stats.within(alive, TIE))
    return min(tied, key=lambda p: (abs(math.log(p / Recipe.lr)), -p)), tied


@torch.inference_mode()
def block_std(model, images, *, train=False):
    """{block: the standard deviation of its output over `images` (uint8 [N, 28, 28])}, in eval mode (train: in train
    mode, BN normalizing by the statistics of `images`, as in a training step)."""
    outputs = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda m, i, o, name=name: outputs.__setitem__(name, o.float().std().item())) for name in BLOCKS]
    try:
        model.train(train)(to_input(images.to(next(model.parameters()).device)))
    finally:
        for h in hooks:
            h.remove()
    return {name: outputs[name] for name in BLOCKS}


def add_block_std(records, data, out):
    """Write block_std into every finished run's results file that lacks it, from its weights file."""
    images = select(data, Recipe(val=VAL))[1][0][:SCALE_IMAGES]
    for name, recs in records.items():
        for r in recs:
            paths = run_paths(out, FOLDER, name, r["config"]["seed"])
            if "block_std" in r or len(r["history"]) < r["config"]["epochs"] or not os.path.exists(paths["weights"]):
                continue
            model, _ = load_weights(paths["weights"], sha256=r.get("weights_sha256"))
            r["block_std"] = block_std(model, images)
            write_json(paths["results"], r)


INIT_FILE = "block_std_init.json"


def add_init_std(data, out, device):
    """Write OUT/results/lr_sweep/INIT_FILE, if it is not there: {model: {seed: block_std}} of each model as each of the
    sweep's seeds starts (utils.setup: the second control after its scaling), on the first SCALE_IMAGES
    validation images, in train mode, as its first step sees them."""
    path = os.path.join(out, "results", FOLDER, INIT_FILE)
    if os.path.exists(path):
        return
    train, val = select(data, Recipe(val=VAL))
    scales, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)  # as every run computes, so that the file's digits re-run
    try:
        for recipe in recipes(PEAKS[:1]):
            model = utils.setup(recipe, len(train[1]), device, images=train[0])[0]
            scales.setdefault(recipe.norm, {})[str(recipe.seed)] = block_std(model, val[0][:SCALE_IMAGES], train=True)
    finally:
        torch.set_num_threads(threads)
    write_json(path, {"images": f"the first {SCALE_IMAGES} validation images", "mode": "train", "block_std": scales})


def control_recipes(peak, norm=CONTROL, **settings):
    """Control `norm`'s test runs: [its seeds CONTROL_SEEDS at `peak`], then [RECIPE_SEEDS at the recipe's peak] when
    `peak` is another; `settings` (Recipe fields) for all. One list per settings folder."""
    runs = [[Recipe(norm, lr=peak, seed=seed, **settings) for seed in CONTROL_SEEDS]]
    if peak != Recipe.lr:
        runs.append([Recipe(norm, seed=seed, **settings) for seed in RECIPE_SEEDS])
    return runs


def control_runs(results, norm=CONTROL):
    """(rule 3's peak, {seed: record} of control `norm`'s finished test runs at it) from RESULTS (the folder
    train.py writes), or None while rule 3 has not chosen."""
    folder = os.path.join(results, FOLDER)
    chosen = control_peak(load_records(folder), norm) if os.path.isdir(folder) else None
    if chosen is None:
        return None
    peak = chosen[0]
    where = os.path.join(results, settings_folder(Recipe(norm, lr=peak)))
    runs = load_records(where).get(Recipe(norm).name, []) if os.path.isdir(where) else []
    return peak, stats.finished(runs)


def run_sweep(data, *, device, out, jobs, fresh=False, progress=True, control=True, **overrides):
    """Train (or resume) what the rule asks for, then the block scales, then (`control`) the control's test runs at
    the peak rule 3 chose; returns the records under OUT/results/lr_sweep/. A quick look (`overrides` with other
    epochs than EPOCHS) gives the control's runs those epochs too."""
    folder = os.path.join(out, "results", FOLDER)
    for stage in (1, 2):
        records = load_records(folder) if os.path.isdir(folder) else {}
        peaks = planned_peaks(records) if stage == 2 else PEAKS
        if stage == 2 and peaks == PEAKS:
            break
        runs = recipes(peaks if stage == 1 else (EXTRA_PEAK,), **overrides)
        print(f"learning-rate sweep, stage {stage}: {len(runs)} runs")
        utils.run_experiments(runs, data, device=device, out=out, jobs=jobs, progress=progress, fresh=fresh,
                              study=runner.Study(folder=FOLDER, names=tuple(run_name(r) for r in runs),
                                                invocations="sweep.json"))
    records = load_records(folder)
    add_block_std(records, data, out)
    add_init_std(data, out, device)
    records = load_records(folder)
    for norm in CONTROLS if control else ():
        chosen = control_peak(records, norm)
        label = Recipe(norm).label
        if chosen is None:
            print(f"{label}: its test runs wait for rule 3 (an unfinished run of the sweep, or every peak diverged)")
            continue
        # on the test set (no val), with the recipe's epochs unless a quick look shortened the sweep's
        settings = {k: v for k, v in overrides.items() if k != "val" and (k != "epochs" or v != EPOCHS)}
        for runs in control_recipes(chosen[0], norm, **settings):
            print(f"{label} on the test set at peak {runs[0].lr:g}: {len(runs)} runs")
            utils.run_experiments(runs, data, device=device, out=out, jobs=jobs, progress=progress, fresh=fresh,
                                  study=runner.Study(invocations="control.json"))
    return records
