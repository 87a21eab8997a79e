"""train.py, the command line: its options, a quick run in a fresh clone, its errors, Ctrl-C and resuming."""
import json
import os
import subprocess
import sys

import pytest

import train as train_cli
from conftest import ROOT
from mnist_norms import cli


# Each message comes from the Recipe field's own range (recipe.setting): the command line states no range of its own.
@pytest.mark.parametrize("args,message", [
    (["--norms", "XN"], "invalid choice: 'XN'"),
    (["--groups", "3"], "argument --groups: expected one of 1, 2, 5, 10, got '3'"),
    (["--epochs", "0"], "argument --epochs: expected an integer >= 1, got '0'"),
    (["--lr", "0"], "argument --lr: expected a number > 0, got '0'"),
    (["--l1", "nan"], "argument --l1: expected a number >= 0, got 'nan'"),
    (["--dropout", "1"], r"argument --dropout: expected a number in \[0, 1\), got '1'"),
    (["--seeds", "a"], "argument --seeds: expected an integer >= 0, got 'a'"),
    (["--val", "60000"], "must be between 1 and 59999"),
    (["--device", "tpu"], "argument --device"),
    (["--translate", "1"], r"argument --translate: expected a number in \[0, 1\), got '1'"),
    (["--pct-start", "0"], r"argument --pct-start: expected a number in \(0, 1\), got '0'"),
    (["--ema", "1"], r"argument --ema: expected a number in \[0, 1\), got '1'"),
    (["--cycle-epochs", "0"], "argument --cycle-epochs: expected an integer >= 1, got '0'"),
    (["--final-div", "-1"], "argument --final-div: expected a number > 0, got '-1'"),
    (["--shear", "-1"], r"argument --shear: expected a number in \[0, 90\), got '-1'"),
    (["--precision", "fp8"], "argument --precision: expected one of fp32, bf16, got 'fp8'"),
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
    # The same command again trains nothing; other settings (here a validation split, which evaluates 1,000 images
    # instead of the 10,000 test images) train again, in a folder of their own, and --no-figures writes results only.
    again = train()
    assert again.returncode == 0 and again.stdout.count("finished, loaded from") == 3, again.stderr
    other = train("--val", "1000", "--norms", "gn", "--groups", "5", "--no-figures")
    assert other.returncode == 0 and other.stdout.count("training from scratch") == 1, other.stderr
    record = json.load(open(runs / "results" / "epochs1_val1000_limit2000" / "gn_g5_seed0.json"))
    assert record["config"]["eval_images"] == 1000 and record["config"]["groups"] == 5
    assert not (runs / "static" / "epochs1_val1000_limit2000").exists()
    assert changed_files(clone) == ""  # (tests/test_rerun.py re-runs such a run and a committed one)


@pytest.mark.mnist
def test_unreadable_files_and_a_workers_error_end_in_one_message_naming_the_file(clone, mnist):
    from conftest import DATA, changed_files
    cmd = [sys.executable, "train.py", "--data", DATA, "--device", "cpu", "--no-progress"]
    train = lambda *more: subprocess.run(cmd + list(more), capture_output=True, text=True, timeout=600, cwd=clone)
    done = subprocess.run([sys.executable, "-m", "tools.rerun", "/etc/passwd", "--data", DATA], capture_output=True,
                          text=True, timeout=600, cwd=clone)
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
    # a validation split of 500 images: each epoch evaluates those instead of the 10,000 test images
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--epochs", "3", "--limit", "1000", "--val", "500",
           "--jobs", "2", "--data", DATA, "--out", str(tmp_path), "--device", "cpu", "--no-progress", "--no-figures"]
    # A new session, as a terminal's foreground job: Ctrl-C sends SIGINT to the whole process group. SIGINT is
    # reset to its default first, in case this test itself runs in the background, where it is ignored.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    folder = "epochs3_val500_limit1000"
    results = tmp_path / "results" / folder / "bn_l1_seed0.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (results.exists() and json.load(open(results))["history"]):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "stopped: every finished epoch is kept; resume with: python" in err
    assert "Traceback" not in err  # the workers leave Ctrl-C to the parent
    cut = len(json.load(open(results))["history"])  # 1, or 2 if its next epoch ended before the signal came
    assert cut in (1, 2) and (tmp_path / "checkpoints" / folder / "bn_l1_seed0.pt").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resuming after epoch {cut}" in done.stdout
    assert all(len(json.load(open(tmp_path / "results" / folder / f"{n}_seed0.json"))["history"]) == 3
               for n in ("bn_l1", "ln", "gn"))


def test_settings_that_no_recipe_accepts_are_an_error_before_any_data_is_loaded(tmp_path):
    done = subprocess.run([sys.executable, "train.py", "--cycle-epochs", "30", "--data", str(tmp_path / "no-data"),
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "cycle_epochs must be None or at most epochs=20, got 30" in done.stderr
    assert not (tmp_path / "no-data").exists()


def documented_commands():
    """Every command the README and docs name: `python train.py` and each `python -m MODULE` (pytest aside)."""
    import re
    text = "".join(open(os.path.join(ROOT, f)).read() for f in ("README.md", "docs/experiments.md",
                                                                 "docs/performance.md", "docs/files.md"))
    found = set(re.findall(r"python (-m [a-z_.]+|[a-z_]+\.py)\b", text)) - {"-m pytest"}
    return sorted(c.removeprefix("-m ") for c in found)


def test_the_documented_commands_are_the_ones_there_are():
    commands = documented_commands()
    assert "train.py" in commands and "studies.batch_size" in commands and "tools.rerun" in commands
    # tune.py is named only where the docs say which commit it ran at
    known = {"train.py", "studies.batch_size", "studies.search", "studies.shift", "studies.lr_sweep",
             "studies.tolerance", "studies.normalizations", "tools.report", "tools.rerun", "tools.fingerprint",
             "benchmarks.pipeline", "benchmarks.options", "benchmarks.end_to_end", "benchmarks.evaluation",
             "benchmarks.launches"}
    assert set(commands) - {"tune.py"} <= known, commands


@pytest.mark.parametrize("command", [c for c in documented_commands() if c != "tune.py"])
def test_every_documented_command_runs_and_gives_each_option_one_default(command, capsys):
    # Its main() with --help, in this process (the commands themselves run in fresh processes in the other tests)
    import importlib
    import re
    module = importlib.import_module(command.removesuffix(".py"))
    if not hasattr(module, "main"):  # a package: its command is its __main__
        module = importlib.import_module(command + ".__main__")
    with pytest.raises(SystemExit) as exit:
        module.main(["--help"])
    assert exit.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    options = re.split(r" (?=--[a-z])", text)
    assert text.startswith("usage:") and all(option.count("(default:") <= 1 for option in options), \
        [o for o in options if o.count("(default:") > 1]


def test_the_notebook_and_train_py_build_the_same_runs():
    # The two front doors: the notebook's parameters cell and train.py's defaults give the same recipes, and on a
    # CPU both train each run with one thread (runner.run), so both give the committed seed 0 bit for bit.
    import inspect
    import json as json_module

    from mnist_norms.recipe import experiment
    notebook = json_module.load(open(os.path.join(ROOT, "session5_assignment.ipynb")))
    params = {}
    exec("".join(notebook["cells"][1]["source"]), {}, params)
    from_notebook = experiment(seeds=params["SEEDS"], epochs=params["EPOCHS"], precision=params["PRECISION"],
                               limit=params["LIMIT"])
    main, ablation = train_cli.recipes(train_cli.parse_args([]))
    assert main == from_notebook and ablation == []
    from mnist_norms import runner
    assert inspect.signature(runner.run).parameters["threads"].default == 1


@pytest.mark.parametrize("command", ["train.py", "studies.batch_size", "studies.search", "studies.lr_sweep",
                                     "studies.shift", "tools.rerun"])
def test_the_resume_hint_is_the_command_as_typed_and_parses(command):
    # What Ctrl-C prints (cli.run_command): the same command, which must name a module that exists and parse its
    # arguments
    import importlib
    import shlex
    argv = {"studies.search": ["--search", "guard"], "tools.rerun": ["results/ln_seed0.json"]}.get(command, [])
    argv += ["--out", "some where"] + ([] if command in ("studies.shift", "tools.rerun") else ["--jobs", "2"])
    tokens = shlex.split(cli.resume_command(command, argv))
    typed = ["python", "train.py"] if command == "train.py" else ["python", "-m", command]
    assert tokens[:len(typed)] == typed
    module = importlib.import_module(command.removesuffix(".py"))
    if not hasattr(module, "parse_args"):
        module = importlib.import_module(command + ".__main__")
    args = module.parse_args(tokens[2 if command == "train.py" else 3:])
    assert args.out.startswith("some where") and getattr(args, "jobs", 2) == 2
