"""tools/report.py and the studies' tables: the README's tables are generated from results/, and a stale README is
caught."""
import json
import os

import pytest

from benchmarks import end_to_end, pipeline
from benchmarks import options as options_benchmark
from conftest import ROOT
from mnist_norms.recipe import Recipe
from mnist_norms.records import load_records
from studies import batch_size, experiment, recipe_search, search
from tools import report


def test_readme_and_docs_tables_match_results():
    assert report.main(["--check"]) == 0, "run `python -m tools.report` after changing results/"


def write_run(folder, name, accs, epochs=None, seed=0):
    os.makedirs(folder, exist_ok=True)
    config = {"norm": name[:2].upper(), "l1": 1e-5 if "l1" in name else 0.0}
    if "_g" in name:
        config["groups"] = int(name.split("_g")[1])
    record = {"name": name, "config": {**config, "seed": seed, "epochs": epochs or len(accs), "params": 7750},
              "history": [{"epoch": i + 1, "test_acc": a, "seconds": 1.0} for i, a in enumerate(accs)]}
    with open(os.path.join(folder, f"{name}_seed{seed}.json"), "w") as f:
        json.dump(record, f)


def test_findings_give_paired_intervals_seeds_and_time_to_accuracy(tmp_path):
    results = tmp_path / "results"
    finals = {"bn_l1": [99.5, 99.6, 99.7], "ln": [99.4, 99.5, 99.6], "gn": [99.6, 99.4, 99.5], "gn_g5": [99.3]}
    for name, accs in finals.items():
        for seed, acc in enumerate(accs):
            write_run(results, name, [99.0, 99.41 if seed == 0 else 99.2, acc], seed=seed)
    write_run(results, "gn_g10", [99.0, 99.1], seed=0, epochs=3)  # unfinished: left out
    readme = tmp_path / "README.md"
    readme.write_text("".join(f"<!-- {b}:start -->\n<!-- {b}:end -->\n" for b in ("headline", "seeds", "findings")))
    assert report.main(["--files", str(readme), "--results", str(results)]) == 0
    text = readme.read_text()
    # Differences of exactly 0.1 on every seed: no spread, an interval of zero width that excludes 0.
    (row,) = [line for line in text.splitlines() if line.startswith("| norm | BN + L1 | LN |")]
    assert row.startswith("| norm | BN + L1 | LN | 0-2 | +0.100 | [+0.100, +0.100] |")
    assert row.endswith("| yes: BN + L1 higher |") and float(row.split("|")[7]) < 1e-6  # its p: no spread at all
    # -0.1, +0.2, +0.2: mean +0.1, t(0.975, 2) * std / sqrt(3) = 0.430
    # its paired t-test's p (scipy's ttest_rel gives 0.42) and Holm's over the 3 tests with an interval
    assert "| norm | BN + L1 | GN | 0-2 | +0.100 | [-0.330, +0.530] | 0.42 | 0.85 | no: the interval includes 0 |" \
        in text
    assert "GN, 1 group (= LN)" not in text  # GN against LN is stated once, as a norm
    assert "| groups | GN, 5 groups | GN, 2 groups | 0 | -0.300 | (one seed) | | | cannot say: one seed |" in text
    assert "10 groups" not in text
    # ... and in words, one line per verdict
    assert ("- **Measured to differ** (the 95% interval excludes 0, and Holm's p is below 0.05): BN + L1 is higher "
            "than LN, by 0.10 points "
            "(interval 0.10 to 0.10, 3 seeds).") in text
    assert "- **Not measured to differ** " in text and "BN + L1 against GN (-0.33 to +0.53 points, 3 seeds)" in text
    assert "- **One seed, no interval:** GN, 5 groups against GN, 2 groups." in text
    # BN + L1 - LN, BN + L1 - GN and GN - LN: three intervals
    assert "- **3 intervals at once.** " in text
    # BN + L1: 99.6 ± t(0.975, 2) * 0.1 / sqrt(3) = 0.248; seed 0 reaches 99.4% at epoch 2, the others at 3
    assert "| BN + L1 | 99.60 ± 0.25 | 3 | 2.7 | 3 of 3 | 7,750 |" in text
    assert "| GN (5 groups) | 0 | 99.30 | 99.30 | 2 | 2.0 |" in text
    assert (tmp_path / "static" / "seeds.png").stat().st_size > 10_000


def test_steady_table_and_curves_count_the_seeds_that_stay_at_the_target(tmp_path):
    results = tmp_path / "results"
    below, at = [99.0] * 11, [99.5] * 9
    write_run(results, "bn_l1", below + at, seed=0)                                # at 99.4% from epoch 12 on
    write_run(results, "bn_l1", below + [99.5, 99.3, 99.3] + at[3:], seed=1)       # reaches it at 12, falls: 15
    write_run(results, "bn_l1", below + at[:8] + [99.39], seed=2)                  # below at the end: never
    write_run(results, "ln", below + at, seed=0)
    readme = tmp_path / "README.md"
    readme.write_text("".join(f"<!-- {b}:start -->\n<!-- {b}:end -->\n" for b in ("headline", "steady")))
    assert report.main(["--files", str(readme), "--results", str(results)]) == 0
    text = readme.read_text()
    # counted from epochs 10, 12 and 15 on
    assert "| BN + L1 | 0, 1, 2 | 12, 15, - | 0 of 3 | 1 of 3 | 2 of 3 |" in text
    assert "| LN | 0 | 12 | 0 of 1 | 1 of 1 | 1 of 1 |" in text
    # 99.5, 99.5, 99.39: mean 99.463, t(0.975, 2) * 0.0635 / sqrt(3) = 0.158; every seed first reaches it at 12
    assert "| BN + L1 | 99.46 ± 0.16 | 3 | 12.0 | 1 of 3 | 7,750 |" in text  # the headline counts from epoch 12
    fig = experiment.seed_curves_figure(str(results))
    assert [len(ax.lines) for ax in fig.axes] == [3 + 1, 1 + 1]  # a line per seed, and the 99.4% line
    assert fig.axes[0].get_title() == "BN + L1: 1 of 3 seeds at ≥ 99.4%\nin every epoch from 12 on"
    assert (tmp_path / "static" / "seed_curves.png").stat().st_size > 10_000


def test_tables_are_rendered_between_markers_and_staleness_is_detected(tmp_path, capsys):
    results = tmp_path / "results"
    write_run(results, "gn", [98.0, 99.25])
    write_run(results, "bn_l1", [98.5, 99.40])
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- headline:start -->\nold\n<!-- headline:end -->\nafter\n"
                      "<!-- worked-example:start -->\n"
                      "<!-- worked-example:end -->\n")
    docs = tmp_path / "perf.md"
    docs.write_text("<!-- speed:start -->\n<!-- speed:end -->\n")
    args = ["--files", str(readme), str(docs), "--results", str(results)]
    assert report.main(args + ["--check"]) == 1
    assert report.main(args) == 0
    text = readme.read_text()
    assert "| BN + L1 | 99.40 | 1 | 2.0 | 1 of 1 | 7,750 |" in text
    assert "| GN | 99.25 | 1 | never | 0 of 1 | 7,750 |" in text
    assert text.startswith("intro\n") and "\nafter\n" in text and "old" not in text
    assert "BN: statistics per channel" in text
    assert "| run | seed | first epoch at" in docs.read_text()
    assert report.main(args + ["--check"]) == 0
    write_run(results, "gn", [98.0, 99.30])
    assert report.main(args + ["--check"]) == 1
    assert "python -m tools.report" in capsys.readouterr().err


def test_unknown_or_unclosed_markers_are_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- tables:start -->\n<!-- tables:end -->\n")
    with pytest.raises(ValueError, match="unknown block <!-- tables:start -->"):
        report.main(["--files", str(readme), "--results", str(tmp_path)])
    readme.write_text("<!-- results:start -->\n")
    with pytest.raises(ValueError, match="has no <!-- results:end -->"):
        report.main(["--files", str(readme), "--results", str(tmp_path)])


def test_results_table_averages_finished_runs_and_names_the_unfinished(tmp_path):
    for seed, accs in ((0, [99.0, 99.5]), (1, [99.1, 99.3])):
        record = {"name": "ln", "config": {"norm": "LN", "seed": seed, "epochs": 2, "params": 7750},
                  "history": [{"epoch": i + 1, "test_acc": a, "train_acc": 99.0, "test_loss": 0.03 - i * 0.01,
                               "seconds": 60.0} for i, a in enumerate(accs)]}
        (tmp_path / f"ln_seed{seed}.json").write_text(json.dumps(record))
    record["config"]["seed"], record["history"] = 2, record["history"][:1]
    (tmp_path / "ln_seed2.json").write_text(json.dumps(record))
    started = {"name": "gn", "config": {"norm": "GN", "seed": 0, "epochs": 20, "params": 7750}, "history": []}
    (tmp_path / "gn_seed0.json").write_text(json.dumps(started))  # no epoch finished yet: no row
    lines = experiment.results_table(str(tmp_path)).splitlines()
    assert len(lines) == 5 and lines[3] == ""
    # finals 99.5 and 99.3: mean 99.40, population std 0.10; seed 2 (one epoch of two) is not averaged in
    assert lines[2].startswith("| LN | 0, 1 | 99.40 ± 0.10 | 99.40 ± 0.10 | 99.50, 99.30 |") and "| 7,750 |" in lines[2]
    assert lines[4] == "Not finished, so left out: LN seed 2, GN seed 0 (the same command resumes them)."


def test_every_figure_and_link_the_readme_and_docs_show_exists():
    import re
    for doc in report.FILES + [os.path.join(ROOT, "docs", "files.md")]:
        text = open(doc).read()
        base = os.path.dirname(doc)
        for path in re.findall(r"\]\(([^)#:]+)\)", text):  # relative links and images
            assert os.path.exists(os.path.join(base, path)), f"{doc}: {path}"
        for path in re.findall(r"\]\(([^)]+\.png)\)", text):
            assert os.path.getsize(os.path.join(base, path)) > 5000, path


def test_batch_size_table_has_a_row_per_batch_and_the_study_wall_time(tmp_path):
    folder = tmp_path / "batch_size"
    os.makedirs(folder)
    for norm, bs, seed, acc in (("bn", 2, 0, 97.0), ("bn", 2, 1, 97.4), ("gn", 2, 0, 99.0), ("gn", 2, 1, 99.2),
                                ("bn", 128, 0, 99.0), ("bn", 128, 1, 99.0), ("gn", 128, 0, 98.9)):
        entry = {"epoch": 1, "test_acc": acc, "train_acc": 90.0, "test_loss": 0.05, "train_loss": 0.3, "seconds": 6.0}
        if norm == "bn":
            entry["test_acc_batch_stats"] = acc - 10
        record = {"name": f"{norm}_bs{bs}", "history": [entry],
                  "config": {"norm": norm.upper(), "seed": seed, "epochs": 1, "params": 7750, "batch_size": bs,
                             "lr": 0.1 * bs / 128,
                             "train_images": 60000}}
        (folder / f"{norm}_bs{bs}_seed{seed}.json").write_text(json.dumps(record))
    (folder / "study.json").write_text(json.dumps({"invocations": [
        {"runs_planned": 8, "runs_trained": 5, "jobs": 2, "cpus": 2, "device": "cpu", "wall_seconds": 600},
        {"runs_planned": 8, "runs_trained": 2, "jobs": 2, "cpus": 2, "device": "cpu", "wall_seconds": 300}]}))
    lines = batch_size.batch_size_table(str(tmp_path)).splitlines()
    assert lines[0] == ("| batch | peak lr | BN final test acc % (running averages) | BN with batch statistics "
                        "| GN final test acc % |")
    # mean ± t(0.975, 1) * sample std / sqrt(2): 12.706 * 0.2828 / 1.414 = 2.54 for 97.0 and 97.4; GN's 99.10 ± 1.27
    # would reach past 100%: each seed's value instead
    assert lines[2] == "| 2 | 0.0015625 | 97.20 ± 2.54 | 87.20 ± 2.54 | seeds 0, 1: 99.00, 99.20 |"
    assert lines[3] == "| 128 | 0.1 | 99.00 ± 0.00 | 89.00 ± 0.00 | 98.90 |"  # one GN seed: no interval
    assert lines[-3].endswith("augmented images): BN 90.00 / 90.00; GN 90.00 / 90.00.")
    assert "seeds 0, 1; 1 epoch(s) on 60,000 training images per run; 7 runs" in lines[-1]
    assert "Wall time: 15.0 minutes for the 7 runs trained, in 2 invocations (2 parallel jobs on 2 CPUs" in lines[-1]


def test_performance_tables_come_from_the_benchmark_files_and_the_runs(tmp_path):
    samples = {"conventional": [90.0, 100.0, 110.0], "ours": [190.0, 200.0, 210.0], "ceiling": [200.0, 210.0, 220.0]}
    bench = {"conventional_img_s": 100.0, "ours_img_s": 200.0, "ceiling_img_s": 210.0, "speedup": 2.0,
             "efficiency": 200 / 210, "device": "cpu: test", "samples_img_s": samples,
             "versions": {"python": "3", "torch": "2", "torchvision": "0"},
             "settings": {"num_workers": 2, "num_workers_img_s": {"0": 80.0, "2": 100.0}, "repeats": 3,
                          "steps_per_measurement": 50, "batch_size": 128, "precision": "bf16"}}
    (tmp_path / "benchmark.json").write_text(json.dumps(bench))
    lines = pipeline.benchmark_table(str(tmp_path)).splitlines()
    assert lines[2] == "| bf16 | conventional: `DataLoader`, num_workers=2 | 100 | 90 | 110 | 0.50 |"
    assert lines[4] == "| bf16 | ceiling: one fixed batch, no data work | 210 | 200 | 220 | 1.05 |"
    assert "**speedup** (ours / conventional) **2.00**, **efficiency** (ours / ceiling) **0.95**" in lines[-1]

    options = {"device": "cpu: test", "versions": {"torch": "2"}, "baseline_run_seconds": 600.0,
               "settings": {"baseline": "default", "repeats": 7, "training_images_per_measurement": 6400},
               "train": {"bfloat16 autocast": {"img_s": 150.0, "baseline_img_s": 100.0, "ratio": 1.5,
                                               "run_seconds": 420.0, "end_to_end_speedup": 600 / 420,
                                               "one_off_seconds": 0.0},
                         "torch.compile": {"error": "RuntimeError: no compiler"}},
               "eval": {"eval batch 500": {"img_s": 20.0, "baseline_img_s": 10.0, "ratio": 2.0, "run_seconds": 540.0,
                                           "end_to_end_speedup": 600 / 540}}}
    (tmp_path / "options.json").write_text(json.dumps(options))
    lines = options_benchmark.options_table(str(tmp_path)).splitlines()
    assert lines[2] == "| training: bfloat16 autocast | 150 | 100 | 1.50 | 7.0 min | 1.43 |"
    assert lines[3].startswith("| training: torch.compile | failed: RuntimeError: no compiler")
    assert lines[4] == "| evaluation: eval batch 500 | 20 | 10 | 2.00 | 9.0 min | 1.11 |"
    (tmp_path / "end_to_end.json").write_text(json.dumps({
        "malloc": {"1_threads": {"default_seconds": 13.0, "tuned_seconds": 10.0},
                   "settings": {"limit": 15000, "repeats": 3},
                   "device": "cpu: test", "versions": {"torch": "2"}},
        "isa": {kind: {"native_seconds": native, "avx2_seconds": 50.0, "isa_in_use": {"native": used, "avx2": "avx2"},
                       "settings": {"threads": 2, "repeats": 3}, "device": "cpu: test", "versions": {"torch": "2"}}
                for kind, native, used in (("avx512", 40.0, "native: ATen avx512, oneDNN x"), ("avx2", 49.0, "avx2"))},
        "experiment": {"jobs": [2, 3], "jobs2_seconds": 300.0, "jobs3_seconds": 200.0, "settings": {
            "command": "python train.py --epochs 2 --jobs J", "repeats": 2}, "device": "cpu: test",
            "versions": {"torch": "2"}}}))
    lines = end_to_end.end_to_end_table(str(tmp_path)).splitlines()
    assert lines[2] == ("| a BN + L1 epoch on 15,000 images + test, 1 thread(s) | test | glibc default | 13.0 "
                        "| `mnist_norms.machine.tune_malloc()` | 10.0 | **1.30** |")
    assert lines[3] == ("| a BN + L1 epoch on 60,000 images + test, 2 threads, on a CPU whose own is AVX2 | test "
                        "| the CPU's own (`--native-isa`: avx2) | 49.0 | pinned to AVX2 (the default: avx2) | 50.0 "
                        "| **0.98** |")
    assert lines[4] == ("| a BN + L1 epoch on 60,000 images + test, 2 threads, on a CPU whose own is AVX-512 | test "
                        "| the CPU's own (`--native-isa`: native: ATen avx512, oneDNN x) | 40.0 | pinned to AVX2 (the "
                        "default: avx2) | 50.0 | **0.80** |")
    assert lines[5] == ("| `python train.py --epochs 2 --jobs J`, whole process | test | --jobs 2 | 300.0 | --jobs 3 "
                        "| 200.0 | **1.50** |")
    assert "2/3 processes per setting" in lines[-1]

    for name, accs in (("bn_l1", [99.0, 99.41, 99.5]), ("ln", [99.0, 99.2, 99.3]), ("gn", [99.1, 99.3, 99.45])):
        config = {"norm": name[:2].upper(), "l1": 1e-5 if name == "bn_l1" else 0.0, "seed": 0, "epochs": 3}
        record = {"name": name, "config": {**config, "params": 7750},
                  "history": [{"epoch": i + 1, "test_acc": a, "train_acc": 99.0, "test_loss": 0.02, "seconds": 30.0}
                              for i, a in enumerate(accs)]}
        (tmp_path / f"{name}_seed0.json").write_text(json.dumps(record))
    lines = experiment.speed_table(str(tmp_path)).splitlines()
    assert lines[2] == "| BN + L1 | 0 | 2 | 1.0 | 99.50 | 1.5 |"
    (tmp_path / "invocations.json").write_text(json.dumps({"invocations": [
        {"runs": ["bn_l1", "gn", "ln"], "runs_trained": 3, "jobs": 2, "threads": 1, "wall_seconds": 600.0}]}))
    assert experiment.speed_table(str(tmp_path)).splitlines()[-1] == "| bn_l1, gn, ln | 3 | 2 x 1 | 10.0 |"


def test_no_table_mixes_recipes():
    # The tables and figures read every run of a folder together: those runs may differ only in what the experiment
    # compares (norm, groups, L1, seed, precision); the recipe (data, training, augmentation) is one: Recipe's defaults
    # for results/ (top level), Recipe's defaults but for the batch size, its learning rate and the epochs for the
    # batch-size study.
    from dataclasses import asdict
    compared = {"norm", "groups", "l1", "seed", "precision"}
    rest = lambda recipe, *more: {k: v for k, v in asdict(recipe).items() if k not in compared | set(more)}
    for folder, more in (("results", ()), (os.path.join("results", "batch_size"), ("batch_size", "lr", "epochs"))):
        recipes = [rest(Recipe.from_config(r["config"]), *more)
                   for recs in load_records(os.path.join(ROOT, folder)).values() for r in recs]
        assert len(recipes) > 1 and all(recipe == rest(Recipe(), *more) for recipe in recipes), folder


def test_search_table_gives_the_choice_once_the_rule_has_it(tmp_path):
    results, doc = tmp_path / "results", tmp_path / "doc.md"
    doc.write_text("<!-- search:start -->\n<!-- search:end -->\n")
    render = lambda: report.main(["--files", str(doc), "--results", str(results)]) or doc.read_text()
    ids = [recipe_search.setting_id(s) for s in recipe_search.settings()]
    close, best = "rotate_dropout0_bs128", "affine_dropout0.05_bs64"
    seed0 = {**{sid: 99.0 for sid in ids}, close: 99.45, best: 99.50}
    for sid in ids[:-1]:
        for name in ("bn_l1", "ln", "gn"):
            write_run(results / "tune", f"{name}_{sid}", [seed0[sid]])
    assert "Not decided by these files" in render()
    for name in ("bn_l1", "ln", "gn"):
        write_run(results / "tune", f"{name}_{ids[-1]}", [seed0[ids[-1]]])
    text = render()
    assert "Not decided by these files" in text
    assert "| affine | 0.05 | 64 | 99.50 / 99.50 / 99.50 |  | 99.500 | yes |  |" in text
    for sid, acc in ((close, 99.45), (best, 99.48)):  # two-seed scores 99.45 and 99.49: tied, the cheaper wins
        for name in ("bn_l1", "ln", "gn"):
            write_run(results / "tune", f"{name}_{sid}", [acc], seed=1)
    text = render()
    assert f"Chosen by the rule: `{close}`" in text
    assert "| rotate | 0 | 128 | 99.45 / 99.45 / 99.45 | 99.45 / 99.45 / 99.45 | 99.450 | yes | **chosen** |" in text
    assert "| affine | 0.05 | 64 | 99.50 / 99.50 / 99.50 | 99.48 / 99.48 / 99.48 | 99.490 | yes | tied |" in text


def test_a_run_that_diverged_is_named_under_the_findings_and_the_search(tmp_path):
    results = tmp_path / "results"
    for seed in (0, 1):
        write_run(results, "bn_l1", [99.0, 99.5], seed=seed)
        write_run(results, "ln", [98.5, 40.0, 99.0] if seed else [99.0, 99.4, 99.45], seed=seed)
    for seed in (0, 1, 2):  # never above guessing one class: named, and still in the table
        write_run(results, "gn_g10", [11.2, 11.35] if seed < 2 else [98.0, 99.0], seed=seed)
        write_run(results, "gn", [98.0, 99.0], seed=seed)
    sid = recipe_search.setting_id(recipe_search.settings()[0])
    write_run(results / "tune", f"ln_{sid}", [98.27, 45.38, 98.37])
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- findings:start -->\n<!-- findings:end -->\n<!-- search:start -->\n<!-- search:end -->\n")
    assert report.main(["--files", str(doc), "--results", str(results)]) == 0
    text = doc.read_text()
    assert ("such a run counts in this table like any other): LN, seed 1: collapsed (99.00% after epoch 3); "
            "GN (10 groups), seed 0: never learned (11.35% after epoch 2); GN (10 groups), seed 1: never learned "
            "(11.35% after epoch 2).") in text
    assert "| groups | GN, 10 groups | GN, 2 groups | 0-2 |" in text
    assert (f"Diverged (validation accuracy fell by 10 points or more in one epoch): LN, `{sid}`, seed 0: 98.27% after "
            "epoch 1, 45.38% after epoch 2 (98.37% after epoch 3).") in text


def test_schedule_search_table_reads_today_from_the_augmentation_search(tmp_path):
    results = tmp_path / "results"
    for norm in ("bn_l1", "ln", "gn"):
        for seed in (0, 1):
            write_run(results / "tune", f"{norm}_{recipe_search.INCUMBENT}", [99.0, 99.3, 99.4], seed=seed)
        write_run(results / "tune" / "schedule", f"{norm}_cycle14_ema", [99.45, 99.5, 99.5])
    write_run(results / "tune", "ln_rotate_dropout0_bs64", [99.9, 99.9, 99.9])  # another setting of the first search
    lines = recipe_search.schedule_markdown(str(results)).splitlines()
    assert lines[2] == "| cycle14_ema | 99.50 / 99.50 / 99.50 |  | 99.500 | 1.0 |  |  |"
    assert lines[3] == "| today | 99.40 / 99.40 / 99.40 | 99.40 / 99.40 / 99.40 | 99.400 | 2.0 |  |  |"
    assert "Not decided by these files" in lines[-1]


def test_guard_search_table_waits_for_the_stress_tests_stage_2_then_names_the_choice(tmp_path):
    results = tmp_path / "results"

    def run(folder, name, norm, accs, seed=0, extra=None):
        os.makedirs(folder, exist_ok=True)
        record = {"name": name, "config": {"norm": norm, "l1": 1e-5 if name.startswith("bn_l1") else 0.0, "seed": seed,
                                           "epochs": len(accs), "params": 7750, **(extra or {})},
                  "history": [{"epoch": i + 1, "test_acc": a, "train_acc": a, "test_loss": 0.1, "train_loss": 0.1,
                               "seconds": 1.0, "grad_norm_median": 1.0, "grad_norm_max": 2.0}
                              for i, a in enumerate(accs)]}
        with open(os.path.join(folder, f"{name}_seed{seed}.json"), "w") as f:
            json.dump(record, f)
    finals = {"warmup": 99.40, "guard": 99.42, "guard_ls": 99.20, "guard_wd": 99.10}
    for cid, acc in finals.items():
        for name, norm in (("bn_l1", "BN"), ("ln", "LN"), ("gn", "GN")):
            for seed in ((0, 1) if cid in ("warmup", "guard") else (0,)):
                run(results / "tune" / "guard", f"{name}_{cid}", norm, [98.0, acc, acc], seed)
    text = search.guard_markdown(str(results))
    assert "| guard | 99.42 / 99.42 / 99.42 | 99.42 / 99.42 / 99.42 | 99.420 | 2.0 | none |  |" in text
    assert "Not decided yet" in text  # the stress test's stage 2 is missing
    low, high = search.STRESS_PEAKS
    for peak in (low, high):
        for seed in search.STRESS_SEEDS:
            accs = [90.0, 95.0, 5.0, 95.0, 96.0, 97.0] if (peak, seed) == (low, 3) else [90.0 + e for e in range(6)]
            run(results / "tune" / "stress", search.stress_name(peak, 0), "LN", accs, seed, {"lr": peak, "clip": 0})
    clip = search.stress_clip(search.stress_records(str(results)))
    for peak in (low, high):
        for seed in search.STRESS_SEEDS:
            run(results / "tune" / "stress", search.stress_name(peak, clip), "LN", [90.0 + e for e in range(6)], seed,
                {"lr": peak, "clip": clip})
    text = search.guard_markdown(str(results))
    # tied on accuracy and settling; with fewer divergences under the clip, the tie goes to guard
    assert "Chosen by the rule: `guard`" in text and "| warmup |" in text and "| tied |" in text
    stress = search.stress_markdown(str(results))
    assert f"| {low:g} | 0 | 20 | 1 (seed 3) |" in stress
    assert f"The clip set by rule 4 from stage 1: {clip:g}." in stress
    assert (f"Rule 6: at {high:g}, 0 of the runs diverged with the clip and 0 without; at {low:g}, 0 with it and 1 "
            f"without. By the rule, the clip is not shown to stop divergence (no run diverged at {high:g} without "
            f"it).") \
        in stress
