"""machine.py: the CPU instruction set pinned before torch's first operation, checked, and recorded in each run; the
allocator setting, which changes no number."""
import json
import os
import subprocess
import sys

import pytest

import machine
from conftest import ROOT, without_time


def in_a_fresh_process(code, **env):
    """stdout and stderr of `code` run by a new Python in the repository (a pin only works before torch's first op)."""
    import os
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), done.stderr


@pytest.mark.skipif(machine.why_not_pinnable() is not None, reason="this CPU cannot run AVX2 kernels")
def test_the_pin_makes_aten_and_onednn_compute_with_avx2():
    out, err = in_a_fresh_process("import machine, torch\nused = machine.pin_isa()\n"
                                  "print(used, torch.backends.cpu.get_cpu_capability(), machine.onednn_convolution())")
    used, aten, convolution = out.split()
    assert (used, aten) == ("avx2", "AVX2") and convolution.endswith(":avx2") and "Warning" not in err


@pytest.mark.skipif(machine.why_not_pinnable() is not None, reason="this CPU cannot run AVX2 kernels")
def test_a_pin_after_torch_ran_an_operation_warns_and_says_what_is_in_use():
    # ATEN_CPU_CAPABILITY=default from the start makes the kernels torch picks at its first operation differ from
    # AVX2 on any CPU, so the too-late pin is visible even on a CPU whose own best is AVX2.
    out, err = in_a_fresh_process("import torch, machine\ntorch.ones(3).add(1)\nprint(machine.pin_isa())",
                                  ATEN_CPU_CAPABILITY="default")
    assert out.startswith("native: ATen default") and "could not be pinned to AVX2" in err
    assert "torch had already run an operation" in err


def test_without_the_pin_the_native_instruction_set_is_recorded_as_it_is():
    out, err = in_a_fresh_process("import machine\nprint(machine.pin_isa(False))")
    assert out == "avx2" or out.startswith("native: ATen ")
    assert machine.parts(out)[0] in ("avx2", "avx512", "default") or out.startswith("native")


def test_isa_strings_split_into_aten_and_onednn():
    assert machine.parts("avx2") == ("avx2", "jit:avx2")
    assert machine.parts("native: ATen avx512, oneDNN brgconv:avx512_core") == ("avx512", "brgconv:avx512_core")
    assert machine.parts("native: ATen avx512") == ("avx512", None)
    with pytest.raises(ValueError, match="not an instruction set"):
        machine.parts("AVX-512")


def test_rerun_reads_the_instruction_set_of_files_from_before_it_was_recorded():
    import train
    assert train.recorded_isa({"hardware": "CPU AVX2"}) == "avx2"
    assert train.recorded_isa({"hardware": "CPU AVX512"}) == "native: ATen avx512"
    assert train.recorded_isa({"hardware": "CPU AVX2", "isa": "native: ATen avx2, oneDNN x"}) == \
        "native: ATen avx2, oneDNN x"
    assert train.recorded_isa({"hardware": "NVIDIA H200", "isa": None}) is None


# Runs made before affine_ops was recorded computed their augmentation in Intel MKL (torch.tan, F.affine_grid), whose
# results follow the code branch MKL runs: such a file re-runs identically where MKL runs the branch that made it.
# results/v3/ln_seed0.json was made on an Intel Xeon with AVX-512, where MKL runs AVX512_E1 (docs/experiments.md,
# Reproduce, machine C), so it needs an Intel CPU on which MKL runs that branch; results/v2/ln_seed0.json on an AMD
# EPYC, where MKL runs what its COMPATIBLE branch computes, which --rerun-mkl COMPATIBLE asks for on any CPU.
# results/ln_seed0.json (today's recipe) computed its augmentation with ATen's own operations: it needs no branch.
NEEDS = {os.path.join("results", "v3", "ln_seed0.json"): "AVX512_E1"}


def rerun(committed, tmp_path, *options):
    """`python train.py --rerun COMMITTED --rerun-epochs 1` in a fresh process: its output, after checking that it
    reports the first epoch identical."""
    from conftest import DATA
    done = subprocess.run([sys.executable, "train.py", "--rerun", committed, "--rerun-epochs", "1", "--out",
                           str(tmp_path), "--data", DATA, "--no-progress", *options], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "identical: the first 1 of its" in done.stdout, done.stdout
    return done.stdout


@pytest.mark.mnist
@pytest.mark.parametrize("committed,options,folder", [
    (os.path.join("results", "ln_seed0.json"), [], "rerun"),
    # The recipe before the guard search: its settings differ from today's defaults in ema_warmup (hence the folder).
    (os.path.join("results", "v3", "ln_seed0.json"), [], os.path.join("rerun", "ema_warmup0_mkl")),
    # The recipe before the schedule search, whose file records no schedule settings: read as FIRST_SCHEDULE's, which
    # now differ from the defaults (hence the folder), they still give its history.
    (os.path.join("results", "v2", "ln_seed0.json"), ["--rerun-mkl", "COMPATIBLE"],
     os.path.join("rerun", "pct_start0.3_ema0_ema_warmup0_mklCOMPATIBLE")),
])
def test_rerun_of_a_committed_run_reproduces_its_first_epoch_exactly(tmp_path, mnist, committed, options, folder):
    if not (machine.mkl_branch() or "").startswith(NEEDS.get(committed, "")):
        pytest.skip(f"{committed} needs Intel MKL's {NEEDS[committed]} branch, which it does not run on this CPU "
                    f"({machine.cpu_name()}: {machine.mkl_branch()})")
    # The proof that the committed numbers come from the committed code: epoch 1 of a full-data run, through the same
    # code path as `python train.py --rerun`, with the file's settings, thread count and instruction set.
    rerun(committed, tmp_path, *options)
    with open(os.path.join(ROOT, committed)) as f:
        old = json.load(f)
    with open(tmp_path / "results" / folder / "ln_seed0.json") as f:
        new = json.load(f)
    (epoch,) = new["history"]
    assert {k: epoch[k] for k in old["history"][0] if k != "seconds"} == \
        {k: v for k, v in old["history"][0].items() if k != "seconds"}
    assert new["config"]["isa"] == "avx2" and new["config"]["threads"] == old["config"]["threads"] == 1
    assert new["config"]["affine_ops"] == old["config"].get("affine_ops", "mkl")


@pytest.mark.mnist
@pytest.mark.skipif(machine.why_not_pinnable() is not None, reason="this CPU cannot run AVX2 kernels")
def test_runs_made_with_atens_own_operations_reproduce_on_any_cpu(tmp_path, mnist):
    # LN's one-minute run (python train.py --epochs 1 --limit 2000 --out .), made with the current arithmetic on the
    # CPU the file names, with 2 threads: identical here, whatever this CPU's vendor (the fingerprint checks all three
    # models op by op).
    committed = os.path.join("results", "epochs1_limit2000", "ln_seed0.json")
    with open(os.path.join(ROOT, committed)) as f:
        config = json.load(f)["config"]
    assert config["affine_ops"] == "aten" and config["threads"] == 2
    out = rerun(committed, tmp_path)
    assert "no operation of its steps depends on the CPU's vendor" in out or f"({machine.cpu_vendor()})" in config["cpu"]


@pytest.mark.skipif("avx512f" in (machine.cpu_flags() or {"avx512f"}), reason="needs a CPU without AVX-512")
def test_rerun_of_a_run_made_with_an_instruction_set_this_cpu_lacks_says_so_before_training(tmp_path):
    import json
    import os
    saved = json.load(open(os.path.join(ROOT, "results", "v2", "ln_seed0.json")))
    saved["config"].update(hardware="CPU AVX512", isa="native: ATen avx512, oneDNN brgconv:avx512_core")
    path = tmp_path / "avx512_run.json"
    path.write_text(json.dumps(saved))
    done = subprocess.run([sys.executable, "train.py", "--rerun", str(path), "--out", str(tmp_path), "--data",
                           str(tmp_path / "no-data")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "was trained with native: ATen avx512" in done.stderr and "cannot be reproduced bit for bit" in done.stderr
    assert not (tmp_path / "no-data").exists()  # it stopped before loading (let alone training) anything


def test_malloc_setting_changes_no_number(tmp_path):
    # Two fresh processes, the same 1-epoch run with and without tune_malloc(): identical histories.
    code = ("import sys, torch, machine, utils; from recipe import Recipe; torch.set_num_threads(1); "
            "sys.argv[2] == '1' and machine.tune_malloc(); from conftest import synthetic; "
            "utils.run(Recipe('BN', l1=1e-5, epochs=1, batch_size=64), (synthetic(512), synthetic(64, seed=1)), "
            "device=torch.device('cpu'), out=sys.argv[1], progress=False)")
    for flag in ("0", "1"):
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / flag), flag], capture_output=True, text=True,
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tests")))
        assert done.returncode == 0, done.stderr
    a, b = (json.load(open(tmp_path / flag / "results" / "bn_l1_seed0.json")) for flag in ("0", "1"))
    assert without_time(a["history"]) == without_time(b["history"])
    import platform
    assert machine.tune_malloc() == (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")


def test_rerun_says_what_to_expect_on_a_cpu_other_than_the_one_that_made_the_file(monkeypatch, capsys):
    import argparse
    import train
    monkeypatch.setattr(machine, "pin_isa", lambda *a, **k: machine.AVX2)  # the pin itself is tested above
    config = {"device": "cpu", "hardware": "CPU AVX2", "isa": "avx2"}
    args = argparse.Namespace(rerun="run.json", device=None, rerun_mkl=None)
    # A run made with ATen's own operations on another vendor's CPU reproduces here all the same.
    train.pin_for_rerun(args, {"config": {**config, "affine_ops": "aten", "cpu": "Some CPU (OtherVendor)"}})
    out = capsys.readouterr().out
    assert "was made on Some CPU (OtherVendor)" in out and "no operation of its steps depends on the CPU's vendor" in out
    train.pin_for_rerun(args, {"config": {**config, "affine_ops": "aten", "cpu": machine.cpu_name()}})  # this CPU's
    assert capsys.readouterr().out == ""
    # A run from before affine_ops was recorded computed its augmentation in MKL: where it reproduces, and how.
    train.pin_for_rerun(args, {"config": {**config, "cpu": "AMD EPYC (AuthenticAMD)"}})
    out = capsys.readouterr().out
    assert "computed its augmentation in Intel MKL" in out and "--rerun-mkl COMPATIBLE" in out
    assert args.affine_ops == "mkl"
    train.pin_for_rerun(args, {"config": config})  # one from before the CPU was recorded: the docs say which
    assert "does not record the CPU that made it" in capsys.readouterr().out
    # --rerun-mkl is for those files only
    args.rerun_mkl = "COMPATIBLE"
    with pytest.raises(SystemExit, match="did not compute its augmentation with Intel MKL"):
        train.pin_for_rerun(args, {"config": {**config, "affine_ops": "aten"}})
