"""train.py, the command line: its options, a quick run in a fresh clone, its errors, Ctrl-C and resuming."""
import json
import os
import subprocess
import sys

import pytest

import train as train_cli
from conftest import ROOT


@pytest.mark.parametrize("args,message", [
    (["--norms", "XN"], "invalid choice: 'XN'"),
    (["--groups", "3"], "invalid choice: 3"),
    (["--epochs", "0"], "expected a positive integer, got '0'"),
    (["--lr", "0"], "expected a number > 0, got '0'"),
    (["--l1", "nan"], "expected a finite number >= 0, got 'nan'"),
    (["--dropout", "1"], r"expected a probability in \[0, 1\)"),
    (["--seeds", "a"], "expected a seed >= 0"),
    (["--val", "60000"], "must be smaller than the 60000 training images"),
    (["--device", "tpu"], "argument --device"),
    (["--translate", "1"], r"argument --translate: expected a fraction in \[0, 1\), got '1'"),
    (["--pct-start", "0"], r"argument --pct-start: expected a fraction in \(0, 1\), got '0'"),
    (["--ema", "1"], r"argument --ema: expected a decay in \[0, 1\), got '1'"),
    (["--cycle-epochs", "0"], "argument --cycle-epochs: expected a positive integer, got '0'"),
    (["--final-div", "-1"], "argument --final-div: expected a number > 0, got '-1'"),
    (["--shear", "-1"], r"argument --shear: expected degrees in \[0, 90\)"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_cli_rejects_bad_values_naming_what_is_accepted(args, message, capsys):
    with pytest.raises(SystemExit) as exit:
        train_cli.parse_args(args)
    assert exit.value.code == 2
    import re
    assert re.search(message, capsys.readouterr().err)


def test_cli_runs_seed_by_seed_and_adds_the_ablations_with_the_same_settings():
    main, extra = train_cli.recipes(train_cli.parse_args(["--seeds", "1", "0", "--ablation-seeds", "0", "1",
                                                          "--dropout", "0", "--translate", "0.1"]))
    assert [(r.name, r.seed) for r in main] == [("bn_l1", 0), ("ln", 0), ("gn", 0), ("bn_l1", 1), ("ln", 1), ("gn", 1)]
    assert [(r.name, r.seed) for r in extra] == [("bn", 0), ("gn_g5", 0), ("gn_g10", 0), ("bn", 1), ("gn_g5", 1),
                                                 ("gn_g10", 1)]
    assert all(r.dropout == 0 and r.translate == 0.1 for r in main + extra) and extra[0].l1 == 0
    assert train_cli.recipes(train_cli.parse_args([]))[1] == []


def test_cli_defaults_are_the_experiment():
    args = train_cli.parse_args([])
    assert args.norms == ["BN", "LN", "GN"] and args.epochs == 20 and args.l1 == 1e-5 and args.groups == 2
    assert args.precision == "fp32" and train_cli.parse_args(["--precision", "bf16"]).precision == "bf16"
    assert train_cli.parse_args(["--norms", "bn", "gn"]).norms == ["BN", "GN"]


@pytest.mark.mnist
def test_cli_quick_run_in_a_fresh_clone_trains_into_its_own_folder_and_leaves_the_committed_runs(clone, mnist):
    from conftest import DATA, changed_files
    cmd = [sys.executable, "train.py", "--epochs", "1", "--limit", "2000", "--data", DATA, "--device", "cpu",
           "--no-progress"]  # no --out: as the README's one-minute run
    train = lambda *more: subprocess.run(cmd + list(more), capture_output=True, text=True, timeout=600, cwd=clone)
    done = train()
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("training from scratch") == 3 and "runs/results/epochs1_limit2000/" in done.stdout
    runs = clone / "runs"
    for name in ("graph_losses", "graph_accuracies", "misclassified_bn_l1", "misclassified_ln", "misclassified_gn"):
        assert os.path.getsize(runs / "static" / "epochs1_limit2000" / f"{name}.png") > 5000, name
    for name in ("bn_l1", "ln", "gn"):
        record = json.load(open(runs / "results" / "epochs1_limit2000" / f"{name}_seed0.json"))
        assert record["config"]["train_images"] == 2000 and record["config"]["eval_images"] == 10000
        assert record["config"]["params"] == 7750 and len(record["history"]) == 1
    assert "BN + L1" in done.stdout and "final test acc" in done.stdout and " ± " not in done.stdout  # one seed
    assert changed_files(clone) == ""  # the committed results/, weights/ and static/ as they were
    # The same command again trains nothing; other settings train again, in a folder of their own, and
    # --no-figures writes results only.
    again = train()
    assert again.returncode == 0 and again.stdout.count("finished, loaded from") == 3, again.stderr
    other = train("--epochs", "2", "--norms", "gn", "--groups", "5", "--no-figures")
    assert other.returncode == 0 and other.stdout.count("training from scratch") == 1, other.stderr
    record = json.load(open(runs / "results" / "epochs2_limit2000" / "gn_g5_seed0.json"))
    assert len(record["history"]) == 2 and record["config"]["groups"] == 5
    assert not (runs / "static" / "epochs2_limit2000").exists()
    # --rerun trains a results file's run again, with its thread count, and compares the histories.
    rerun = subprocess.run([sys.executable, "train.py", "--rerun", "runs/results/epochs1_limit2000/ln_seed0.json",
                            "--data", DATA, "--no-progress"], capture_output=True, text=True, timeout=600, cwd=clone)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "identical: all 1 epochs" in rerun.stdout
    assert changed_files(clone) == ""


@pytest.mark.mnist
def test_unreadable_files_and_a_workers_error_end_in_one_message_naming_the_file(clone, mnist):
    from conftest import DATA, changed_files
    cmd = [sys.executable, "train.py", "--data", DATA, "--device", "cpu", "--no-progress"]
    train = lambda *more: subprocess.run(cmd + list(more), capture_output=True, text=True, timeout=600, cwd=clone)
    done = train("--rerun", "/etc/passwd")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "/etc/passwd is not a results file: it is not valid JSON" in done.stderr and "--rerun takes" in done.stderr
    # A committed results file cut in half: restore it with git, never delete it.
    committed = clone / "results" / "bn_l1_seed0.json"
    text = committed.read_text()
    committed.write_text(text[:len(text) // 2])
    done = train("--out", ".")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "results/bn_l1_seed0.json is not a results file" in done.stderr
    assert "restore it with `git checkout -- results/bn_l1_seed0.json`" in done.stderr and "delet" not in done.stderr
    committed.write_text(text)
    # A checkpoint that is not one, read by a worker process (--jobs 2): one line, no pool traceback.
    broken = clone / "runs" / "checkpoints" / "epochs1_limit1000" / "ln_seed0.pt"
    os.makedirs(broken.parent)
    broken.write_bytes(b"not a checkpoint")
    done = train("--epochs", "1", "--limit", "1000", "--jobs", "2", "--no-figures")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"train.py: error: {os.path.join('runs', 'checkpoints', 'epochs1_limit1000', 'ln_seed0.pt')} cannot be read "
        "as a checkpoint (UnpicklingError: it is truncated, or not a file that a run wrote); if it is a run of your "
        "own, --fresh trains the run again from scratch"]
    assert changed_files(clone) == ""


@pytest.mark.mnist
def test_ctrl_c_stops_parallel_runs_cleanly_and_the_same_command_resumes_them(tmp_path, mnist):
    import signal
    import time
    from conftest import DATA
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--epochs", "2", "--limit", "1000", "--jobs", "2",
           "--data", DATA, "--out", str(tmp_path), "--device", "cpu", "--no-progress", "--no-figures"]
    # A new session, as a terminal's foreground job: Ctrl-C sends SIGINT to the whole process group. SIGINT is
    # reset to its default first, in case this test itself runs in the background, where it is ignored.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    results = tmp_path / "results" / "epochs2_limit1000" / "bn_l1_seed0.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (results.exists() and json.load(open(results))["history"]):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "stopped: every finished epoch is kept; resume with: python" in err
    assert "Traceback" not in err  # the workers leave Ctrl-C to the parent
    cut = len(json.load(open(results))["history"])
    assert cut == 1 and (tmp_path / "checkpoints" / "epochs2_limit1000" / "bn_l1_seed0.pt").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resuming after epoch {cut}" in done.stdout
    assert all(len(json.load(open(tmp_path / "results" / "epochs2_limit1000" / f"{n}_seed0.json"))["history"]) == 2
               for n in ("bn_l1", "ln", "gn"))


def test_settings_that_no_recipe_accepts_are_an_error_before_any_data_is_loaded(tmp_path):
    done = subprocess.run([sys.executable, "train.py", "--cycle-epochs", "30", "--data", str(tmp_path / "no-data"),
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "cycle_epochs must be None or an integer in [1, epochs=20], got 30" in done.stderr
    assert not (tmp_path / "no-data").exists()


@pytest.mark.parametrize("command", ["train", "tune", "study", "shift"])
def test_help_gives_each_option_one_default(command, capsys):
    import importlib
    import re
    with pytest.raises(SystemExit):
        importlib.import_module(command).parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    options = re.split(r" (?=--[a-z])", text)
    assert all(option.count("(default:") <= 1 for option in options), [o for o in options if o.count("(default:") > 1]
