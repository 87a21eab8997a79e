"""tools/fingerprint.py: this machine's arithmetic, op by op, against the committed fingerprint; and no result of a
step that depends on Intel MKL, whose code follows the CPU's vendor."""
import copy
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from mnist_norms import machine
from tools import fingerprint


def committed():
    with open(fingerprint.FILE) as f:
        return json.load(f)


def run_fingerprint(**env):
    """(exit code, output) of `python -m tools.fingerprint` in a fresh process (the pin comes before torch's first
    op)."""
    done = subprocess.run([sys.executable, "-m", "tools.fingerprint"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300,
                          env={**os.environ, **env})
    if done.returncode == 2 and "cannot compare" in done.stdout:
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.skipif(machine.why_not_pinnable() is not None, reason="this CPU cannot run AVX2 kernels")
def test_this_machine_computes_every_operation_as_the_committed_fingerprint_without_mkls_matrix_products():
    # MKL_VERBOSE=1 makes Intel MKL print a line for each call of its BLAS (F.affine_grid's SGEMM_BATCH was one):
    # the steps make none.
    out = run_fingerprint(MKL_VERBOSE="1")
    assert out.startswith("identical: all ") and "MKL_VERBOSE" not in out


@pytest.mark.skipif(machine.why_not_pinnable() is not None, reason="this CPU cannot run AVX2 kernels")
def test_no_result_of_a_step_depends_on_the_code_mkl_picks_for_the_cpu():
    # MKL_VERBOSE does not show MKL's vector math (torch.tan ran in it). MKL_CBWR=COMPATIBLE makes MKL run its
    # COMPATIBLE branch, which on an Intel CPU with AVX-512 gives other last digits for both of the operations that
    # followed the vendor (tests/test_augment.py, tests/test_machine.py): any result of a step computed by MKL would
    # then differ from the fingerprint. (On an AMD CPU MKL runs that branch anyway, and this proves less.)
    assert run_fingerprint(MKL_CBWR="COMPATIBLE").startswith("identical: all ")


def test_mkl_verbose_would_show_an_mkl_call():
    # The other side of the check above: F.affine_grid, which the grid replaced, is an MKL call, and MKL_VERBOSE=1
    # shows it in a process like the fingerprint's.
    code = ("import torch; torch.nn.functional.affine_grid(torch.eye(2, 3)[None].repeat(4, 1, 1), [4, 1, 28, 28], "
            "align_corners=False)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "MKL_VERBOSE": "1"})
    assert done.returncode == 0, done.stderr
    import torch
    if not torch.backends.mkl.is_available():
        pytest.skip("this torch carries no Intel MKL")
    assert "SGEMM_BATCH" in done.stdout


def test_the_committed_fingerprint_records_its_cpu_and_covers_every_part_of_a_step():
    saved = committed()
    assert saved["cpu"] and saved["flags"] and saved["isa"] == "avx2" and saved["threads"] == 1
    assert list(saved["runs"]) == ["BN + L1", "LN", "GN"]
    for label, run in saved["runs"].items():
        where = {op[2] for op in run["ops"]}
        phases = [op[0] for op in run["ops"]]
        assert {"set-up", "step 1", f"step {fingerprint.STEPS}", "evaluation"} <= set(phases), label
        # the augmentation's grid, every layer forward in training and evaluation, the backward of the convolutions,
        # the optimizer, the weight average
        assert {"augment.sampling_grid", "layer conv0.0", "layer conv6", "evaluated layer conv6",
                "backward: ConvolutionBackward0", "sgd._single_tensor_sgd", "swa_utils.update_parameters"} <= where
        ops = {op[1] for op in run["ops"]}
        assert {"aten.convolution.default", "aten.convolution_backward.default", "aten.grid_sampler_2d.default",
                "aten.sin.default", "aten.cos.default"} <= ops
        assert "aten.tan.default" not in ops  # MKL's vector math on a CPU: the shear's tangent is sin / cos
    assert "aten.abs.default" in {op[1] for op in saved["runs"]["BN + L1"]["ops"]}  # the L1 penalty


def test_a_difference_names_the_first_operation_and_both_cpus():
    saved = committed()
    mine = copy.deepcopy(saved)
    mine.update(cpu="Other CPU (OtherVendor)", flags="avx avx2 fma")
    assert fingerprint.compare(mine, saved)[0] == 0
    ops = mine["runs"]["LN"]["ops"]
    first = next(i for i, op in enumerate(ops) if op[2] == "layer conv1.0")
    for op in ops[first:first + 3]:
        op[3] = "0" * 16
    code, message = fingerprint.compare(mine, saved)
    assert code == 1
    assert message.startswith(f"LN: operation {first + 1} of {len(ops)}, {ops[first][1]} in layer conv1.0 (step 1)")
    assert "3 differ in all" in message
    assert "this CPU: Other CPU (OtherVendor) (avx avx2 fma)" in message and saved["cpu"] in message
    ops[first][1] = "aten.something_else.default"
    code, message = fingerprint.compare(mine, saved)
    assert code == 1 and "the code's operations changed" in message
    code, message = fingerprint.compare({**mine, "torch": "0.0.1"}, saved)
    assert code == 2 and "cannot compare" in message
