"""machine.py: the CPU instruction set pinned before torch's first operation, checked, and recorded in each run; the
allocator setting, which changes no number."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, without_time
from mnist_norms import machine


def in_a_fresh_process(code, **env):
    """stdout and stderr of `code` run by a new Python in the repository (a pin only works before torch's first op)."""
    import os
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), done.stderr


@pytest.mark.skipif(machine.why_not_pinnable() is not None, reason="this CPU cannot run AVX2 kernels")
def test_the_pin_makes_aten_and_onednn_compute_with_avx2():
    out, err = in_a_fresh_process("import torch\nfrom mnist_norms import machine\nused = machine.pin_isa()\n"
                                  "print(used, torch.backends.cpu.get_cpu_capability(), machine.onednn_convolution())")
    used, aten, convolution = out.split()
    assert (used, aten) == ("avx2", "AVX2") and convolution.endswith(":avx2") and "Warning" not in err


@pytest.mark.skipif(machine.why_not_pinnable() is not None, reason="this CPU cannot run AVX2 kernels")
def test_a_pin_after_torch_ran_an_operation_warns_and_says_what_is_in_use():
    # ATEN_CPU_CAPABILITY=default from the start makes the kernels torch picks at its first operation differ from
    # AVX2 on any CPU, so the too-late pin is visible even on a CPU whose own best is AVX2.
    out, err = in_a_fresh_process("import torch\nfrom mnist_norms import machine\ntorch.ones(3).add(1)\n"
                                  "print(machine.pin_isa())", ATEN_CPU_CAPABILITY="default")
    assert out.startswith("native: ATen default") and "could not be pinned to AVX2" in err
    assert "torch had already run an operation" in err


def test_without_the_pin_the_native_instruction_set_is_recorded_as_it_is():
    out, err = in_a_fresh_process("from mnist_norms import machine\nprint(machine.pin_isa(False))")
    assert out == "avx2" or out.startswith("native: ATen ")
    assert machine.parts(out)[0] in ("avx2", "avx512", "default") or out.startswith("native")


def test_isa_strings_split_into_aten_and_onednn():
    assert machine.parts("avx2") == ("avx2", "jit:avx2")
    assert machine.parts("native: ATen avx512, oneDNN brgconv:avx512_core") == ("avx512", "brgconv:avx512_core")
    assert machine.parts("native: ATen avx512") == ("avx512", None)
    with pytest.raises(ValueError, match="not an instruction set"):
        machine.parts("AVX-512")


def test_malloc_setting_changes_no_number(tmp_path):
    # Two fresh processes, the same 1-epoch run with and without tune_malloc(): identical histories.
    code = ("import sys, torch, utils; from mnist_norms import machine, runner; from mnist_norms.recipe import Recipe; "
            "torch.set_num_threads(1); "
            "sys.argv[2] == '1' and machine.tune_malloc(); from conftest import synthetic; "
            "runner.run(utils.fit, Recipe('BN', l1=1e-5, epochs=1, batch_size=64), "
            "(synthetic(512), synthetic(64, seed=1)), "
            "device=torch.device('cpu'), out=sys.argv[1], progress=False)")
    # both at once, one thread each on the suite's two cores
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / flag), flag], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tests"))) for flag in ("0", "1")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    a, b = (json.load(open(tmp_path / flag / "results" / "bn_l1_seed0.json")) for flag in ("0", "1"))
    assert without_time(a["history"]) == without_time(b["history"])
    import platform
    assert machine.tune_malloc() == (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")


def test_default_jobs_trains_a_few_runs_all_at_once_on_a_cpu_and_one_at_a_time_on_a_gpu(monkeypatch):
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
    cpu = torch.device("cpu")
    # 3 runs on 2 cores: all at once (no tail with a core idle); many runs: one per core; a GPU: one
    assert [machine.default_jobs(cpu, n) for n in (1, 2, 3, 4, 5, 90)] == [1, 2, 3, 4, 2, 2]
    assert machine.default_jobs(cpu) == 2 and machine.default_jobs(torch.device("cuda"), 3) == 1


def test_bf16_is_judged_on_the_runs_gpu_not_the_current_one(monkeypatch):
    # Two GPUs, no GPU needed: cuda:0 an A100 (8.0), cuda:1 a T4 (7.5). torch.cuda.is_bf16_supported answers for the
    # current device only (faked the same way here), so a run on the other GPU must not be judged by it.
    capability = {0: (8, 0), 1: (7, 5)}
    current = [0]
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[
        current[0] if device is None or torch.device(device).index is None else torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: capability[current[0]] >= (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "the GPU")
    flags = [(torch.backends.cudnn, f) for f in ("allow_tf32", "deterministic", "benchmark")] + \
        [(torch.backends.cuda.matmul, "allow_tf32")]
    saved = [getattr(m, f) for m, f in flags]  # gpu_arithmetic sets them where it does not raise
    try:
        with pytest.raises(ValueError, match=r"capability 7\.5"):
            machine.gpu_arithmetic("bf16", torch.device("cuda:1"))  # the current device, cuda:0, has bfloat16
        machine.gpu_arithmetic("bf16", torch.device("cuda:0"))
        current[0] = 1
        machine.gpu_arithmetic("bf16", torch.device("cuda:0"))  # the current device, cuda:1, has none
        with pytest.raises(ValueError, match=r"capability 7\.5"):
            machine.gpu_arithmetic("bf16", torch.device("cuda"))  # no index: the current device is the run's
    finally:
        for (m, f), v in zip(flags, saved):
            setattr(m, f, v)
