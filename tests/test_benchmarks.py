"""The benchmarks run in --quick mode and write what they promise (figures only: no timing assertions)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

KEYS = {"conventional_img_s", "ours_img_s", "ceiling_img_s", "speedup", "efficiency", "device", "versions", "settings"}


def run(script, *args):
    from conftest import DATA
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{script}", "--quick", "--device", "cpu",
                           "--data", DATA, *args], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.mnist
def test_pipeline_benchmark_quick_writes_the_three_throughputs_and_their_ratios(tmp_path, mnist):
    out = tmp_path / "benchmark.json"
    stdout = run("pipeline", "--out", str(out))
    result = json.load(open(out))
    assert KEYS <= set(result)
    for name in ("conventional", "ours", "ceiling"):
        assert result[f"{name}_img_s"] > 0 and len(result["samples_img_s"][name]) == result["settings"]["repeats"]
    assert result["speedup"] == pytest.approx(result["ours_img_s"] / result["conventional_img_s"])
    assert result["efficiency"] == pytest.approx(result["ours_img_s"] / result["ceiling_img_s"])
    assert result["settings"]["num_workers"] in (0, 1) and result["settings"]["quick"] is True
    assert {"torch", "torchvision", "python"} <= set(result["versions"])
    assert "speedup (ours / conventional)" in stdout
    assert 9e6 < result["flops_per_image"] < 10e6  # about 4.7 million multiply-adds per image, forward and backward
    assert result["fraction_of_matmul_peak"] == pytest.approx(result["ours_img_s"] * result["flops_per_image"]
                                                              / result["matmul_flop_s"])


@pytest.mark.mnist
def test_options_benchmark_quick_reports_ratios_and_run_estimates(tmp_path, mnist):
    out = tmp_path / "options.json"
    run("options", "--only", "channels_last", "bfloat16 autocast", "--out", str(out))
    result = json.load(open(out))
    assert set(result["train"]) == {"channels_last", "bfloat16 autocast"}
    for group in ("train", "eval"):
        for name, v in result[group].items():
            assert v["ratio"] > 0 and v["run_seconds"] > 0, name
    assert "torch.no_grad instead of inference_mode" in result["eval"] and result["baseline_run_seconds"] > 0


@pytest.mark.parametrize("gpu", [True, False])
def test_the_pipeline_and_options_benchmarks_time_the_path_a_run_on_the_device_takes(monkeypatch, gpu):
    # No GPU needed: lean_path is made to say what it says for a GPU (or a CPU), and every function of either path
    # is watched, so that --device cuda is seen to time the GPU's path, as utils.fit would train there.
    import utils
    from benchmarks import options, pipeline
    from conftest import synthetic
    from mnist_norms import lean
    monkeypatch.setattr(lean, "lean_path", lambda device: gpu)
    called = set()

    def watch(module, name):
        real = getattr(module, name)

        def watched(*args, **kwargs):
            called.add(f"{module.__name__}.{name}")
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, watched)
    for module, name in ((lean, "batches"), (lean, "train_step"), (lean, "train"), (pipeline, "batches"),
                         (utils, "train_step"), (utils, "train")):
        watch(module, name)
    cpu, data = torch.device("cpu"), synthetic(64)
    pipeline.time_ours(data, 2, 16, cpu, "fp32")
    pipeline.time_ceiling((data[0][:16].float().unsqueeze(1), data[1][:16]), 1, cpu, "fp32")
    model, optimizer = pipeline.fresh_model(cpu)
    options.train_steps(model, optimizer, data, 2, 16)
    expected = {"mnist_norms.lean.batches", "mnist_norms.lean.train_step", "mnist_norms.lean.train"} if gpu else \
        {"benchmarks.pipeline.batches", "utils.train_step", "utils.train"}
    assert called == expected


def test_options_benchmark_rejects_an_unknown_option(capsys):
    from benchmarks import options
    with pytest.raises(SystemExit):
        options.main(["--only", "fp8"])
    assert "unknown ['fp8']" in capsys.readouterr().err


def fake_seconds(spec):
    """An epoch time that tells the settings apart: each slower setting adds its own amount."""
    return (1.0 + 1.0 * (spec["pipeline"] == "conventional") + 0.5 * (not spec["malloc"])
            + 2.0 * (spec["precision"] == "bf16") + 0.25 * (spec["isa"] == "native"))


@pytest.mark.mnist  # main() loads the real MNIST once, as before the fresh processes
def test_end_to_end_compares_each_pair_alternating_and_keeps_the_other_comparisons(tmp_path, monkeypatch, mnist):
    # The bookkeeping, in this process: what each fresh process would measure is faked (the measuring itself is
    # the next test), so the medians, ratios and files can be checked exactly.
    from benchmarks import end_to_end
    from conftest import DATA
    order = []
    def fresh_epochs(spec, args):
        order.append(spec)
        return [100.0] + [fake_seconds(spec)] * (args.epochs - 1)  # a slow first epoch: the warm-up, left out
    monkeypatch.setattr(end_to_end, "fresh_epochs", fresh_epochs)
    monkeypatch.setattr(end_to_end, "fresh_experiment", lambda jobs, args, folder, checkout=None: 30.0 / jobs)
    monkeypatch.setattr(end_to_end, "isa_of_a_fresh_process",
                        lambda pin: "avx2" if pin else "native: ATen x9, oneDNN y")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    out = tmp_path / "end_to_end.json"
    end_to_end.main(["--repeats", "2", "--compare", "malloc", "pipeline", "isa", "experiment", "--data", DATA,
                     "--out", str(out)])
    result = json.load(open(out))
    assert set(result) == {"malloc", "pipeline", "isa", "experiment"}
    for threads in (1, 2):  # glibc's default is 0.5 s slower per epoch in the fake
        assert result["malloc"][f"{threads}_threads"]["speedup"] == 1.5
    assert result["pipeline"]["conventional_seconds"] == 2.5 and result["pipeline"]["speedup"] == 2.5
    assert result["isa"]["x9"]["speedup"] == 1.25 and result["isa"]["x9"]["isa_in_use"]["avx2"] == "avx2"
    assert result["experiment"]["speedup"] == 1.5 and result["experiment"]["settings"]["repeats"] == 2
    # Alternating: the second repeat of each pair starts with the setting that went second in the first.
    pipeline = [s["pipeline"] for s in order if s["limit"] is None and s["isa"] == "avx2"]
    assert pipeline[:4] == ["conventional", "ours", "ours", "conventional"]
    # A second invocation for one comparison keeps the others; the isa entry of another kind of CPU is kept too.
    monkeypatch.setattr(end_to_end, "isa_of_a_fresh_process", lambda pin: "avx2")
    end_to_end.main(["--repeats", "1", "--epochs", "2", "--compare", "precision", "isa", "--data", DATA,
                     "--out", str(out)])
    result = json.load(open(out))
    assert set(result) == {"malloc", "pipeline", "precision", "isa", "experiment"}
    assert result["precision"]["speedup"] == 1 / 3
    assert set(result["isa"]) == {"x9", "avx2"} and result["isa"]["avx2"]["speedup"] == 1.25


@pytest.mark.mnist
def test_end_to_end_measures_epochs_in_fresh_processes_and_times_the_train_py_command(tmp_path, monkeypatch, mnist):
    import train
    from benchmarks import end_to_end
    from conftest import DATA
    args = end_to_end.parse_args(["--quick", "--data", DATA])
    for pipeline in ("ours", "conventional"):  # one real process each: 2 epochs on 512 images
        spec = {"pipeline": pipeline, "malloc": True, "threads": 1, "precision": "fp32", "epochs": 2, "limit": 512,
                "workers": 0, "isa": "avx2", "test_images": end_to_end.QUICK_TEST_IMAGES}
        seconds = end_to_end.fresh_epochs(spec, args)
        assert len(seconds) == 2 and all(s > 0 for s in seconds), pipeline
    # The whole-experiment comparison times train.py's own command line: train.py must accept it as it is.
    ran = []
    monkeypatch.setattr(end_to_end.subprocess, "run", lambda cmd, **kw: ran.append(cmd))
    assert end_to_end.fresh_experiment(2, args, str(tmp_path)) > 0
    (cmd,) = ran
    assert cmd[1].endswith("train.py")
    parsed = train.parse_args(cmd[2:])
    assert (parsed.epochs, parsed.jobs, parsed.limit, parsed.no_figures) == (1, 2, 512, True)


def test_the_isa_comparison_keeps_one_entry_per_kind_of_cpu_and_reads_the_older_single_entry():
    from benchmarks.end_to_end import isa_entries
    old = {"native_seconds": 44.8, "avx2_seconds": 45.2, "speedup": 0.99,
           "isa_in_use": {"native": "avx2", "avx2": "avx2"}}
    assert isa_entries(old) == {"avx2": old}  # written before the entries were kept by kind
    wide = {**old, "isa_in_use": {"native": "native: ATen avx512, oneDNN brgconv:avx512_core", "avx2": "avx2"}}
    assert isa_entries({"avx2": old, "avx512": wide}) == {"avx2": old, "avx512": wide}
    assert isa_entries(None) == {}


@pytest.mark.mnist
def test_evaluation_benchmark_quick_times_each_batch_and_compares_every_file_with_the_reference(tmp_path, mnist):
    from conftest import DATA
    out = tmp_path / "evaluation.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.evaluation", "--quick", "--data", DATA, "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.load(open(out))
    assert set(result["seconds_median"]) == {"250", "500", "1000", "2000"} and result["weights_files"] == 3
    assert result["ratio_to_reference"]["2000"] == 1.0
    # every file at 250 against 2,000: how many give the same loss and accuracy, bit for bit
    assert set(result["identical_to_reference"]) == {"250"}
    assert result["identical_to_reference"]["250"] + len(result["different"]["250"]) == 3
    from benchmarks import evaluation
    table = evaluation.evaluation_table(str(tmp_path)).splitlines()
    assert table[2].startswith("| 250 | ") and table[2].endswith(" of 3 |") and table[-3].endswith("(the reference) |")
