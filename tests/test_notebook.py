"""The notebook runs headlessly in a real Jupyter kernel, in a fresh clone of the repository (the state a student gets):
training (2 epochs, a small LIMIT) into its own folder, stopped and run again, resuming; and in Colab (a clone of the
repository, made with git) showing the committed runs without training."""
import json
import os

import pytest

from conftest import DATA, ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


NOTEBOOK = os.path.join(ROOT, "session5_assignment.ipynb")
FIGURES = ("graph_losses", "graph_accuracies", "misclassified_bn_l1", "misclassified_ln", "misclassified_gn")


def test_notebook_is_thin_with_a_tagged_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    for name in ("TRAIN = True", "EPOCHS = 20", "SEEDS = [0]", "LIMIT = None", 'DATA = "data"', 'PRECISION = "fp32"',
                 "REPO_URL = None"):
        assert name in code[0].source
    assert not any(line.lstrip().startswith(("def ", "class ")) for c in code for line in c.source.splitlines())


def execute(parameters, cwd, setup=""):
    """Run the notebook in `cwd` with `parameters` overriding the parameters cell (papermill's convention: a cell
    right after it); `setup` runs first of all. Returns the executed notebook."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(parameters))
    if setup:
        nb.cells.insert(0, nbformat.v4.new_code_cell(setup))
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def shown(nb):
    """(number of inline images, all text output) of an executed notebook."""
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    return (sum("image/png" in o.get("data", {}) for o in outputs),
            "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs))


def test_notebook_in_colab_without_repo_url_says_what_to_set(tmp_path):
    fake_colab = "import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')"
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="set REPO_URL in the parameters cell"):
        execute("", tmp_path, setup=fake_colab)
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="must sit beside this notebook"):
        execute("", tmp_path)  # not in Colab: nothing is cloned


@pytest.mark.mnist
def test_notebook_in_colab_clones_the_repository_and_shows_the_committed_runs_there(clone, tmp_path, mnist):
    # TRAIN = False, as a student who first looks: in Colab the set-up cell clones the repository and works inside it,
    # and the committed runs are shown without training (the training path is the fresh-clone test's).
    from conftest import changed_files
    fake_colab = "import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')"
    colab = tmp_path / "colab"  # Colab's working folder, where the notebook clones the repository (here: `clone`)
    os.makedirs(colab)
    nb = execute(f"TRAIN = False\nDATA = {DATA!r}\nREPO_URL = {str(clone)!r}", colab, setup=fake_colab)
    assert (colab / "clone" / "model.py").exists()
    images, text = shown(nb)
    # no training log (its header's "train_loss train_acc"; the code the notebook prints names train_loss alone)
    assert images == 5 and "BN + L1" in text and "train_loss train_acc" not in text
    assert "training from scratch" not in text
    table = text[text.index("final test acc"):]
    for name in ("bn_l1", "ln", "gn"):  # the committed runs' final accuracies, in the summary table
        with open(clone / "results" / f"{name}_seed0.json") as f:
            assert f"{json.load(f)['history'][-1]['test_acc']:.2f}" in table
    assert text.count("This run equals their seed 0 in every number of every epoch") == 3
    assert changed_files(colab / "clone") == ""


def test_committed_notebook_shows_the_training_of_the_committed_seed_0_runs():
    # The notebook is committed as executed with its defaults (TRAIN = True, seed 0, into runs/) in a fresh clone: its
    # log shows every epoch of the three models training, and each logged number (as the log rounds it) equals what
    # the committed run of the same recipe recorded, results/<name>_seed0.json: same code, same thread count.
    nb = nbformat.read(NOTEBOOK, as_version=4)
    images, text = shown(nb)
    assert images == 5 and text.count("training from scratch") == 3 and "finished, loaded" not in text
    # the network's receptive-field table for each model, and the findings, which find each run equal to the
    # committed seed 0
    assert text.count("gap       average-pool 6x6") == 3 and text.count("then log_softmax over the 10 outputs") == 3
    assert text.count("This run equals their seed 0 in every number of every epoch") == 3
    assert "3 runs trained in " in text and "MNIST: 60,000 training and 10,000 test images" in text
    assert text.count("Trainable params: 7,750") == 3  # torchinfo's summary of each model
    # the code that trained them, as utils.py holds it now: re-execute the notebook after changing it
    import inspect

    import utils
    for function in (utils.train_step, utils.train, utils.test, utils.fit):
        assert inspect.getsource(function) in text, function.__name__
    table = text[text.index("final test acc"):]
    for name in ("bn_l1", "ln", "gn"):
        with open(os.path.join(ROOT, "results", f"{name}_seed0.json")) as f:
            history = json.load(f)["history"]
        assert f"{history[-1]['test_acc']:.2f}" in table, name
        logged = [fields for fields in map(str.split, text.splitlines())
                  if fields[:1] == [name] and len(fields) > 1 and fields[1].isdigit()]
        assert [int(fields[1]) for fields in logged] == list(range(1, 21)), name
        for fields, e in zip(logged, history):
            assert fields[2:6] == [f"{e['train_loss']:.4f}", f"{e['train_acc']:.2f}", f"{e['test_loss']:.4f}",
                                   f"{e['test_acc']:.2f}"], (name, fields)


@pytest.mark.mnist
def test_notebook_in_a_fresh_clone_stopped_and_run_again_resumes_into_its_own_folder(clone, mnist):
    # As a student would, in the state the repository ships in, with two settings changed for a quick try: the
    # notebook stopped during its first run's second evaluation (as Ctrl-C or a lost kernel would stop it; JOBS = 1
    # keeps that run in the kernel, where the stop is set up), then run again with the default JOBS: the stopped run
    # continues after epoch 1 and the other two start, in worker processes. Nothing committed changes.
    from conftest import changed_files
    stop = ("import utils\nreal, calls = utils.test, []\n"
            "def stopping(*a, **k):\n    calls.append(1)\n    if len(calls) == 2:\n        raise KeyboardInterrupt\n"
            "    return real(*a, **k)\nutils.test = stopping")
    parameters = f"EPOCHS = 2\nLIMIT = 500\nDATA = {DATA!r}"
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="KeyboardInterrupt"):
        execute(parameters + "\nJOBS = 1", clone, setup=stop)
    assert (clone / "runs" / "checkpoints" / "epochs2_limit500" / "bn_l1_seed0.pt").exists()
    images, text = shown(execute(parameters, clone))
    assert "bn_l1      resuming after epoch 1" in text and text.count("training from scratch") == 2
    assert "finished, loaded" not in text and "3 runs trained in " in text
    folder = clone / "runs" / "static" / "epochs2_limit500"
    for name in FIGURES:
        assert os.path.getsize(folder / f"{name}.png") > 5000, name
    for name in ("bn_l1", "ln", "gn"):
        with open(clone / "runs" / "results" / "epochs2_limit500" / f"{name}_seed0.json") as f:
            assert len(json.load(f)["history"]) == 2
        assert (clone / "runs" / "weights" / "epochs2_limit500" / f"{name}_seed0.pt").exists()
    assert images == 5  # Graph 1, Graph 2 and three misclassified grids shown inline
    assert text.count("then log_softmax over the 10 outputs") == 3 and "final test acc" in text
    # the findings: this run's settings differ from the committed runs', and they say so
    assert text.count("so they are context, not a comparison") == 3 and "LN, seed 0 (2 epochs)" in text
    assert changed_files(clone) == ""  # nothing committed changed, nothing written outside runs/
