"""The learning-rate sweep: its plan, the rule that picks the control's peak, its table against scipy's intervals,
each block's output scale, and a tiny sweep end to end."""
import math

import pytest
import torch
from scipy import stats as scipy_stats

from conftest import synthetic
from mnist_norms.recipe import L1, Recipe
from model import AFFINE, CONTROL, Net
from studies import lr_sweep
from studies.lr_sweep import report as lr_report

NO_NORM = Recipe(CONTROL).label  # the first control's label: "no norm, default init"


def test_the_sweep_is_every_model_at_every_peak_on_the_validation_split():
    runs = lr_sweep.recipes()
    assert len(runs) == 5 * 5 * 3 and len({(r.norm, r.lr, r.seed) for r in runs}) == 75  # 3 norms, 2 controls
    assert {r.norm for r in runs} == {"BN", "LN", "GN", CONTROL, AFFINE} and {r.lr for r in runs} == set(lr_sweep.PEAKS)
    assert all(r.val == 10000 and r.epochs == 6 and r.l1 == (L1 if r.norm == "BN" else 0) for r in runs)
    # everything else is today's recipe
    from dataclasses import replace
    assert all(replace(r, norm="BN", l1=0.0, lr=Recipe.lr, epochs=20, val=0, seed=0) == Recipe() for r in runs)
    assert [lr_sweep.run_name(r) for r in runs[:4]] == ["bn_l1_lr0.01", "ln_lr0.01", "gn_lr0.01", "none_lr0.01"]


def fake(finals_by_cell, diverged=()):
    """Records {name: [record]} from {(norm, peak): [final accuracy per seed]}; (norm, peak, seed) in `diverged`
    collapse in their last epoch."""
    records = {}
    for (norm, peak), finals in finals_by_cell.items():
        recipe = Recipe(norm, lr=peak, epochs=2, val=10000)
        for seed, acc in enumerate(finals):
            first = acc + 20 if (norm, peak, seed) in diverged else acc
            records.setdefault(lr_sweep.run_name(recipe), []).append(
                {"name": lr_sweep.run_name(recipe), "config": {**vars(Recipe(norm, lr=peak, epochs=2, seed=seed)),
                                                               "val": 10000},
                 "history": [{"epoch": 1, "test_acc": first, "test_loss": 0.1, "train_acc": first, "train_loss": 0.1},
                             {"epoch": 2, "test_acc": acc, "test_loss": 0.1, "train_acc": acc, "train_loss": 0.1}]})
    return records


def test_a_run_diverges_when_its_accuracy_collapses_or_its_loss_is_not_finite():
    h = lambda *accs, loss=0.1: {"history": [{"test_acc": a, "test_loss": loss} for a in accs]}
    assert lr_sweep.diverged(h(98.0, 60.0)) and lr_sweep.diverged(h(98.0, 98.5, loss=math.nan))
    assert not lr_sweep.diverged(h(10.0, 11.0)) and not lr_sweep.diverged(h(98.0, 88.5))


def test_the_rule_picks_the_controls_best_peak_without_divergence_and_breaks_ties_toward_the_recipes():
    accs = {0.01: [97.0] * 3, 0.03: [98.0] * 3, 0.1: [98.2] * 3, 0.3: [99.0, 99.0, 50.0], 1.0: [10.0] * 3}
    records = fake({(CONTROL, p): a for p, a in accs.items()}, diverged={(CONTROL, 0.3, 2)})
    assert lr_sweep.control_peak(records) == (0.1, [0.1])  # 0.3 is out: one of its seeds diverged
    accs[0.03] = [98.17] * 3  # within 0.05 of 0.1's: tied, and the tie goes to the recipe's peak
    assert lr_sweep.control_peak(fake({(CONTROL, p): a for p, a in accs.items()}, {(CONTROL, 0.3, 2)})) == \
        (0.1, [0.03, 0.1])
    del accs[1.0]  # a planned peak without its runs: the rule waits
    assert lr_sweep.control_peak(fake({(CONTROL, p): a for p, a in accs.items()})) is None


def test_a_model_that_still_trains_at_the_largest_peak_adds_the_extra_one():
    low = {("LN", 1.0): [50.0, 60.0, 70.0]}
    assert lr_sweep.planned_peaks(fake(low)) == lr_sweep.PEAKS
    assert lr_sweep.planned_peaks(fake({("BN", 1.0): [95.0, 96.0, 97.0]})) == lr_sweep.PEAKS + (3.0,)


def test_the_table_gives_each_cell_its_mean_and_students_interval(tmp_path):
    import json
    import os
    records = fake({("BN", 0.1): [99.0, 99.2, 99.4], (CONTROL, 0.1): [98.0, 98.5, 97.0],
                    (CONTROL, 0.3): [11.0, 97.5, 11.0]}, {(CONTROL, 0.1, 1)})
    folder = tmp_path / "lr_sweep"
    os.makedirs(folder)
    for name, recs in records.items():
        for r in recs:
            (folder / f"{name}_seed{r['config']['seed']}.json").write_text(json.dumps(r))
    text = lr_report.sweep_table(str(tmp_path))
    half = scipy_stats.t.ppf(0.975, 2) * 0.2 / 3 ** 0.5  # std 0.2 of 99.0, 99.2, 99.4
    assert f"| BN | 99.20 ± {half:.2f} |" in text
    # a cell with a run that diverged or never learned (below 20% in every epoch) lists each seed instead
    assert f"| {NO_NORM} | seeds: 98.00, 98.50, 97.00; diverged: seed 1 | seeds: 11.00, 97.50, 11.00; never learned: " \
           "seeds 0, 2 |" in text
    assert "Rule 3 waits" in text


def test_block_std_is_each_blocks_output_scale_which_a_norm_holds_and_the_control_lets_grow():
    # Scaling every convolution by 3: without a norm (ReLU and max-pool are positively homogeneous) the k-th
    # convolution's output grows by 3^k; after a norm it does not change (up to its epsilon).
    images = synthetic(64)[0]
    scales = {}
    for norm in ("LN", "none"):
        for factor in (1, 3):
            torch.manual_seed(0)
            model = Net(norm)
            with torch.no_grad():
                for p in model.parameters():
                    if p.ndim > 1:
                        p.mul_(factor)
            scales[norm, factor] = lr_sweep.block_std(model, images)
    assert list(scales["LN", 1]) == list(lr_sweep.BLOCKS)
    for k, block in enumerate(lr_sweep.BLOCKS):
        grew = scales["none", 3][block] / scales["none", 1][block]
        assert grew == pytest.approx(3 ** (k + 1), rel=1e-4), block
    for block in ("conv0", "conv1", "conv2", "conv3", "conv4", "conv5"):
        assert scales["LN", 3][block] == pytest.approx(scales["LN", 1][block], rel=1e-3), block


@pytest.mark.parametrize("jobs", [1])
def test_a_tiny_sweep_trains_its_runs_and_records_the_block_scales(tmp_path, monkeypatch, jobs):
    monkeypatch.setattr(lr_sweep, "PEAKS", (0.1,))
    monkeypatch.setattr(lr_sweep, "SEEDS", (0,))
    monkeypatch.setattr(lr_sweep, "VAL", 32)
    monkeypatch.setattr(lr_sweep, "SCALE_IMAGES", 16)
    monkeypatch.setattr(lr_sweep, "CONTROL_SEEDS", (0,))
    monkeypatch.setattr(lr_sweep, "EPOCHS", 1)  # the study's own epochs: the control trains the recipe's
    data = (synthetic(96), synthetic(16, seed=1))
    records = lr_sweep.run_sweep(data, device=torch.device("cpu"), out=str(tmp_path), jobs=jobs, progress=False,
                                 epochs=1, val=32)
    assert sorted(records) == ["affine_lr0.1", "bn_l1_lr0.1", "gn_lr0.1", "ln_lr0.1", "none_lr0.1"]
    for (r,) in records.values():
        assert len(r["history"]) == 1 and set(r["block_std"]) == set(lr_sweep.BLOCKS)
        assert r["config"]["val"] == 32 and r["config"]["train_images"] == 64
    # ... then the control on the test set at the peak rule 3 chose: where train.py puts it, trained on all 96
    peak, control = lr_sweep.control_runs(str(tmp_path / "results"))
    assert peak == 0.1 and control[0]["config"]["val"] == 0 and control[0]["config"]["train_images"] == 96
    assert len(control[0]["history"]) == Recipe.epochs
    assert (tmp_path / "results" / "none_seed0.json").exists()
    # and the second control, by the same rule
    peak, control = lr_sweep.control_runs(str(tmp_path / "results"), AFFINE)
    assert peak == 0.1 and len(control[0]["history"]) == Recipe.epochs
    assert (tmp_path / "results" / "affine_seed0.json").exists()
    figures = lr_report.plot(records)
    assert len(figures) == 2 and figures[0].axes[0].get_xscale() == "log"
    titles = [ax.get_title() for ax in figures[1].axes]
    assert titles == [f"after {lr_report.EPOCHS} epochs at peak {p:g}" for p in lr_report.SCALE_PEAKS]
    import json
    with open(tmp_path / "results" / "lr_sweep" / lr_sweep.INIT_FILE) as f:
        init = json.load(f)["block_std"]  # the sweep wrote every model's scales at the start
    assert set(init) == {"BN", "LN", "GN", CONTROL, AFFINE} and set(init[AFFINE]["0"]) == set(lr_sweep.BLOCKS)
    assert figures[1] is not None and lr_report.plot(records, init)[1].axes[0].get_title() == "at the start"


def test_the_control_trains_ten_seeds_at_the_chosen_peak_and_ten_at_the_recipes_on_the_test_set():
    from mnist_norms.recipe import settings_folder
    (at_peak, at_recipe) = lr_sweep.control_recipes(0.03)
    assert [r.seed for r in at_peak] == list(range(10)) and [r.seed for r in at_recipe] == list(range(10))
    assert all(r.norm == CONTROL and r.val == 0 and r.epochs == Recipe.epochs for r in at_peak + at_recipe)
    assert {settings_folder(r) for r in at_peak} == {"lr0.03"} and {settings_folder(r) for r in at_recipe} == {""}
    (only,) = lr_sweep.control_recipes(Recipe.lr)  # the rule chose the recipe's peak: its ten seeds are all
    assert [r.seed for r in only] == list(range(10)) and {settings_folder(r) for r in only} == {""}


def write_records(folder, records):
    import json
    import os
    os.makedirs(folder, exist_ok=True)
    for recs in records.values():
        for r in recs:
            with open(os.path.join(folder, f"{r['name']}_seed{r['config']['seed']}.json"), "w") as f:
                json.dump(r, f)


def test_the_control_at_the_chosen_peak_gains_rows_with_paired_intervals_in_the_headline_and_findings(tmp_path):
    from studies import experiment
    results = tmp_path / "results"
    accs = {0.01: [97.0] * 3, 0.03: [98.5] * 3, 0.1: [98.2] * 3, 0.3: [90.0] * 3, 1.0: [10.0] * 3}
    write_records(results / "lr_sweep", fake({(CONTROL, p): a for p, a in accs.items()}))  # rule 3: 0.03

    def runs_of(norm, lr, finals, l1=0.0):
        """{name: [record per seed]}: three epochs each, ending at `finals`."""
        name = Recipe(norm, l1=l1).name
        config = lambda seed: {**vars(Recipe(norm, l1=l1, lr=lr, epochs=3, seed=seed)),
                               "params": 7590 if norm == CONTROL else 7750}
        return {name: [{"name": name, "config": config(seed),
                        "history": [{"epoch": e, "test_acc": acc, "test_loss": 0.1, "train_acc": acc, "seconds": 1.0}
                                    for e, acc in enumerate((98.0, 98.5, final), 1)]}
                       for seed, final in enumerate(finals)]}
    norms = {"bn_l1": [99.5, 99.6, 99.7], "ln": [99.4, 99.5, 99.6], "gn": [99.6, 99.4, 99.5]}
    for (norm, l1), finals in zip((("BN", L1), ("LN", 0.0), ("GN", 0.0)), norms.values()):
        write_records(results, runs_of(norm, Recipe.lr, finals, l1))
    control = [99.0, 99.3, 99.1]
    write_records(results / "lr0.03", runs_of(CONTROL, 0.03, control))
    write_records(results, runs_of(CONTROL, Recipe.lr, [90.0, 91.0]))  # at the recipe's peak: a row of its own

    assert lr_sweep.control_runs(str(results))[0] == 0.03
    head = experiment.headline_table(str(results))
    assert f"| {NO_NORM} (peak 0.03) | 99.13 ± " in head and "| 3 | never | 0 of 3 | 7,590 |" in head
    findings = experiment.findings_table(str(results))
    for name, label in (("bn_l1", "BN + L1"), ("ln", "LN"), ("gn", "GN")):
        diffs = [a - b for a, b in zip(norms[name], control)]
        mean = sum(diffs) / 3
        low, high = scipy_stats.t.interval(0.95, 2, loc=mean, scale=scipy_stats.sem(diffs))
        assert (f"| a norm at all (control at its rule's peak) | {label} (peak 0.1) | {NO_NORM} (peak 0.03) | 0-2 "
                f"| {mean:+.3f} "
                f"| [{low:+.3f}, {high:+.3f}] |" in findings), label
    assert f"| a norm at all (peak 0.1) | BN + L1 | {NO_NORM} (peak 0.1) | 0-1 |" in findings.replace("0, 1 |", "0-1 |")
    assert experiment.seeds_figure(str(results)) is not None
    every = experiment.results_table(str(results))  # every run: the control at both peaks, each labelled with it
    assert f"| {NO_NORM} (peak 0.03) | 0, 1, 2 | 99.13 ± " in every
    assert f"| {NO_NORM} (peak 0.1) | 0, 1 | 90.50 ± " in every
    for table in (experiment.seeds_table, experiment.steady_table):
        text = table(str(results))
        assert f"| {NO_NORM} (peak 0.03) | 0, 1, 2 |" in text and f"| {NO_NORM} (peak 0.1) | 0, 1 |" in text, table


def test_the_scales_table_gives_each_blocks_geometric_mean_scale_and_the_gradient_norms(tmp_path):
    records = fake({(CONTROL, 0.1): [98.0, 98.5]})
    for r, (scale, grads) in zip(records["none_lr0.1"], ((2.0, (1.0, 3.0)), (8.0, (2.0, 5.0)))):
        r["block_std"] = {b: scale * (k + 1) for k, b in enumerate(lr_sweep.BLOCKS)}
        for e, g in zip(r["history"], grads):
            e["grad_norm_median"], e["grad_norm_max"] = g, 10 * g
    write_records(tmp_path / "lr_sweep", records)
    text = lr_report.scales_table(str(tmp_path))
    # conv0: sqrt(2 * 8) = 4, conv6 (8th): sqrt(16 * 64) = 32; medians over epochs 2 and 3.5, their median 2.75
    assert f"| {NO_NORM} | 0.1 | 0, 1 | 4 | 8 | 12 | 16 | 20 | 24 | 28 | 32 | 2.75 | 50 |" in text


def test_the_scales_table_averages_the_seeds_that_trained_and_shows_dead_and_non_finite_blocks(tmp_path):
    records = fake({(CONTROL, 0.1): [98.0, 11.0], (CONTROL, 1.0): [11.0, 11.0]})
    for r in records["none_lr0.1"] + records["none_lr1"]:
        dead = r["config"]["lr"] == 1.0 and r["config"]["seed"] == 1
        r["block_std"] = {b: 0.0 if dead and k >= 4 else 2.0 for k, b in enumerate(lr_sweep.BLOCKS)}
        for e in r["history"]:
            e["grad_norm_median"], e["grad_norm_max"] = 1.0, math.nan if dead else 2.0
    write_records(tmp_path / "lr_sweep", records)
    text = lr_report.scales_table(str(tmp_path))
    assert f"| {NO_NORM} | 0.1 | 0 | 2 | 2 | 2 | 2 | 2 | 2 | 2 | 2 | 1 | 2 |" in text  # seed 1 never learned
    assert f"| {NO_NORM} | 1 | none trained (0, 1) | 2 | 2 | 2 | 2 | 0 | 0 | 0 | 0 | 1 | not finite |" in text
    assert lr_report.geometric_mean([2.0, 8.0]) == pytest.approx(4.0) and lr_report.geometric_mean([2.0, 0.0]) == 0
    assert math.isnan(lr_report.geometric_mean([2.0, math.inf]))


def test_the_failure_table_names_how_each_run_failed_with_the_rates_exact_interval(tmp_path):
    from scipy.stats import beta
    records = fake({("BN", 0.1): [99.0, 99.2, 99.4], (CONTROL, 0.1): [80.0, 11.0, 97.0], (CONTROL, 3.0): [9.9] * 3},
                   diverged={(CONTROL, 0.1, 0)})
    for r in records[f"{Recipe(CONTROL).name}_lr3"]:
        r["history"][0]["train_loss"] = math.nan
    write_records(tmp_path / "results" / "lr_sweep", records)
    text = lr_report.failures_table(str(tmp_path / "results"))
    low, high = beta.ppf(0.025, 2, 2), beta.ppf(0.975, 3, 1)  # 2 of 3: Clopper-Pearson's closed form
    assert "| BN | 0 of 3 (0% to 71%) |  |" in text
    assert (f"| {NO_NORM} | 2 of 3 ({100 * low:.0f}% to {100 * high:.0f}%); collapsed: seed 0; never learned: "
            "seed 1 | 3 of 3 (29% to 100%); not finite: seeds 0, 1, 2 |") in text


def test_the_init_table_gives_each_models_geometric_mean_scale_over_seeds(tmp_path):
    import json
    import os
    os.makedirs(tmp_path / "lr_sweep")
    scales = {"NONE": {"0": {b: 0.5 for b in lr_sweep.BLOCKS}, "1": {b: 0.125 for b in lr_sweep.BLOCKS}},
              "AFFINE": {"0": {b: 1.0 for b in lr_sweep.BLOCKS}}}
    with open(tmp_path / "lr_sweep" / lr_sweep.INIT_FILE, "w") as f:
        json.dump({"images": "the first 8 validation images", "mode": "train", "block_std": scales}, f)
    text = lr_report.init_table(str(tmp_path))
    assert f"| {NO_NORM} | 0, 1 | " + " | ".join(["0.25"] * 8) + " |" in text
    assert f"| {Recipe(AFFINE).label} | 0 | " + " | ".join(["1"] * 8) + " |" in text
