"""tools/rerun.py: a results file's run trained again with its recipe, thread count and instruction set, and its
history compared; the committed runs reproduce on this CPU."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from mnist_norms import machine


def start_rerun(committed, out):
    """`python -m tools.rerun COMMITTED --epochs 1` started in a fresh process (one thread, as the run recorded)."""
    from conftest import DATA
    return subprocess.Popen([sys.executable, "-m", "tools.rerun", committed, "--epochs", "1", "--out", str(out),
                             "--data", DATA, "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


def finished(proc):
    """A rerun's output, after checking that it reports the first epoch identical."""
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, out + err
    assert "identical: the first 1 of its" in out, out
    return out


@pytest.mark.mnist
@pytest.mark.skipif(machine.why_not_pinnable() is not None, reason="this CPU cannot run AVX2 kernels")
def test_committed_runs_reproduce_their_first_epoch_exactly_on_this_cpu(tmp_path, mnist):
    # The proof that the committed numbers come from the committed code: epoch 1 of a full-data run (made on an Intel
    # Xeon), through the same code path as train.py, with the file's settings, thread count and instruction set; and
    # LN's one-minute run (python train.py --epochs 1 --limit 2000 --out ., made on an AMD EPYC): identical here,
    # whatever this CPU's vendor (the fingerprint checks all three models op by op). Both at once, one thread each.
    full, small = (os.path.join("results", "ln_seed0.json"),
                   os.path.join("results", "epochs1_limit2000", "ln_seed0.json"))
    procs = [start_rerun(full, tmp_path / "full"), start_rerun(small, tmp_path / "small")]
    out_full, out_small = (finished(p) for p in procs)
    with open(os.path.join(ROOT, full)) as f:
        old = json.load(f)
    with open(tmp_path / "full" / "results" / "rerun" / "ln_seed0.json") as f:
        new = json.load(f)
    (epoch,) = new["history"]
    assert {k: epoch[k] for k in old["history"][0] if k != "seconds"} == \
        {k: v for k, v in old["history"][0].items() if k != "seconds"}
    assert new["config"]["isa"] == "avx2" and new["config"]["threads"] == old["config"]["threads"] == 1
    for committed, out in ((full, out_full), (small, out_small)):
        with open(os.path.join(ROOT, committed)) as f:
            config = json.load(f)["config"]
        assert config["threads"] == 1
        assert ("no operation of its steps depends on the CPU's vendor" in out
                or f"({machine.cpu_vendor()})" in config["cpu"])


def test_rerun_refuses_a_file_made_before_todays_arithmetic_and_names_where_to_go(tmp_path):
    saved = json.load(open(os.path.join(ROOT, "results", "tune", "ln_affine_dropout0_bs64_seed0.json")))
    done = subprocess.run([sys.executable, "-m", "tools.rerun", os.path.join("results", "tune",
                           "ln_affine_dropout0_bs64_seed0.json"), "--out", str(tmp_path), "--data",
                           str(tmp_path / "no-data")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "cpu" not in saved["config"]
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "made before today's arithmetic" in done.stderr and "names the commit" in done.stderr
    assert not (tmp_path / "no-data").exists()


@pytest.mark.skipif("avx512f" in (machine.cpu_flags() or {"avx512f"}), reason="needs a CPU without AVX-512")
def test_rerun_of_a_run_made_with_an_instruction_set_this_cpu_lacks_says_so_before_training(tmp_path):
    import json
    import os
    saved = json.load(open(os.path.join(ROOT, "results", "ln_seed0.json")))
    saved["config"].update(hardware="CPU AVX512", isa="native: ATen avx512, oneDNN brgconv:avx512_core")
    path = tmp_path / "avx512_run.json"
    path.write_text(json.dumps(saved))
    done = subprocess.run([sys.executable, "-m", "tools.rerun", str(path), "--out", str(tmp_path), "--data",
                           str(tmp_path / "no-data")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "was trained with native: ATen avx512" in done.stderr and "cannot be reproduced bit for bit" in done.stderr
    assert not (tmp_path / "no-data").exists()  # it stopped before loading (let alone training) anything


def test_rerun_says_what_to_expect_on_a_cpu_other_than_the_one_that_made_the_file(monkeypatch, capsys):
    from tools import rerun
    monkeypatch.setattr(machine, "pin_isa", lambda *a, **k: machine.AVX2)  # the pin itself is tested above
    config = {"device": "cpu", "hardware": "CPU AVX2", "isa": "avx2"}
    # A run made on another vendor's CPU reproduces here all the same: no operation of a step follows the vendor.
    assert rerun.pin_for({**config, "cpu": "Some CPU (OtherVendor)"}, "run.json").type == "cpu"
    out = capsys.readouterr().out
    assert "was made on Some CPU (OtherVendor)" in out
    assert "no operation of its steps depends on the CPU's vendor" in out
    rerun.pin_for({**config, "cpu": machine.cpu_name()}, "run.json")  # this CPU's
    assert capsys.readouterr().out == ""
