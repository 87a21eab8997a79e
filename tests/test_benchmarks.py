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


def test_options_benchmark_rejects_an_unknown_option(capsys):
    from benchmarks import options
    with pytest.raises(SystemExit):
        options.main(["--only", "fp8"])
    assert "unknown ['fp8']" in capsys.readouterr().err


@pytest.mark.mnist
def test_end_to_end_quick_times_fresh_processes_for_every_comparison(tmp_path, mnist):
    out = tmp_path / "end_to_end.json"
    from conftest import DATA
    done = subprocess.run([sys.executable, "-m", "benchmarks.end_to_end", "--quick", "--data", DATA,
                           "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    result = json.load(open(out))
    entry = result["malloc"]["1_threads"]
    assert entry["speedup"] == pytest.approx(entry["default_seconds"] / entry["tuned_seconds"])
    assert [len(run) for run in entry["samples_epoch_seconds"]["tuned"]] == [2]  # 1 repeat of 2 epochs
    (kind, isa), = result["isa"].items()  # one entry per kind of CPU: this one's
    assert kind == torch.backends.cpu.get_cpu_capability().lower()
    for entry, (a, b) in ((result["pipeline"], ("conventional", "ours")), (result["precision"], ("fp32", "bf16")),
                          (isa, ("native", "avx2"))):
        assert entry["speedup"] == pytest.approx(entry[f"{a}_seconds"] / entry[f"{b}_seconds"])
    assert result["pipeline"]["specs"]["conventional"]["malloc"] is False
    assert isa["isa_in_use"]["avx2"] in ("avx2", isa["isa_in_use"]["native"])
    assert result["experiment"]["jobs1_seconds"] > 0 and result["experiment"]["jobs2_seconds"] > 0
    # A second invocation for one comparison keeps the others.
    done = subprocess.run([sys.executable, "-m", "benchmarks.end_to_end", "--quick", "--compare", "precision",
                           "--data", DATA, "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0 and set(json.load(open(out))) == {"malloc", "pipeline", "precision", "isa", "experiment"}


def test_the_isa_comparison_keeps_one_entry_per_kind_of_cpu_and_reads_the_older_single_entry():
    from benchmarks.end_to_end import isa_entries
    old = {"native_seconds": 44.8, "avx2_seconds": 45.2, "speedup": 0.99, "isa_in_use": {"native": "avx2", "avx2": "avx2"}}
    assert isa_entries(old) == {"avx2": old}  # written before the entries were kept by kind
    wide = {**old, "isa_in_use": {"native": "native: ATen avx512, oneDNN brgconv:avx512_core", "avx2": "avx2"}}
    assert isa_entries({"avx2": old, "avx512": wide}) == {"avx2": old, "avx512": wide}
    assert isa_entries(None) == {}
