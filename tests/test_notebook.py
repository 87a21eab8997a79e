"""The notebook runs headlessly in a real Jupyter kernel: training (1 epoch, a small LIMIT), showing the committed
runs without training, and setting itself up in Colab (a clone of the repository, made with git)."""
import os
import shutil

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
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def shown(nb):
    """(number of inline images, all text output) of an executed notebook."""
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    return (sum("image/png" in o.get("data", {}) for o in outputs),
            "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs))


@pytest.mark.mnist
def test_notebook_trains_then_shows_the_same_runs_without_training(tmp_path, mnist):
    out = tmp_path / "out"
    nb = execute(f"EPOCHS = 1\nLIMIT = 1000\nJOBS = 2\nDATA = {DATA!r}\nOUT = {str(out)!r}", ROOT)
    for name in FIGURES:
        assert os.path.getsize(out / "static" / f"{name}.png") > 5000, name
    for name in ("bn_l1", "ln", "gn"):
        assert (out / "results" / f"{name}_seed0.json").exists() and (out / "weights" / f"{name}_seed0.pt").exists()
    images, text = shown(nb)
    assert images == 5  # Graph 1, Graph 2 and three misclassified grids shown inline
    assert text.count("Trainable params: 7,750") == 3 and "final test acc" in text
    table = text[text.index("final test acc"):]

    # TRAIN = False: the same summary from the files, nothing trained (no per-epoch log).
    for name in FIGURES:
        os.remove(out / "static" / f"{name}.png")
    nb = execute(f"TRAIN = False\nEPOCHS = 1\nLIMIT = 1000\nDATA = {DATA!r}\nOUT = {str(out)!r}", ROOT)
    images, text = shown(nb)
    assert images == 5 and all((out / "static" / f"{name}.png").exists() for name in FIGURES)
    assert text[text.index("final test acc"):] == table and "train_loss" not in text


@pytest.mark.mnist
def test_notebook_shows_the_committed_runs_without_training(tmp_path, mnist):
    out = tmp_path / "out"
    for folder in ("results", "weights"):
        os.makedirs(out / folder)
        for name in ("bn_l1", "ln", "gn"):
            suffix = ".json" if folder == "results" else ".pt"
            shutil.copy(os.path.join(ROOT, folder, f"{name}_seed0{suffix}"), out / folder)
    nb = execute(f"TRAIN = False\nDATA = {DATA!r}\nOUT = {str(out)!r}", ROOT)
    images, text = shown(nb)
    assert images == 5 and "BN + L1" in text and "final test acc" in text


def test_notebook_in_colab_without_repo_url_says_what_to_set(tmp_path):
    fake_colab = "import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')"
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="set REPO_URL in the parameters cell"):
        execute("", tmp_path, setup=fake_colab)
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="must sit beside this notebook"):
        execute("", tmp_path)  # not in Colab: nothing is cloned


@pytest.mark.mnist
def test_notebook_in_colab_clones_the_repository_and_runs_there(tmp_path, mnist):
    if not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("needs the repository's git history to clone from")
    fake_colab = "import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')"
    out = tmp_path / "out"
    nb = execute(f"EPOCHS = 1\nLIMIT = 500\nJOBS = 1\nDATA = {DATA!r}\nOUT = {str(out)!r}\nREPO_URL = {ROOT!r}",
                 tmp_path, setup=fake_colab)
    assert (tmp_path / os.path.basename(ROOT) / "model.py").exists()
    assert (out / "results" / "bn_l1_seed0.json").exists()
    images, text = shown(nb)
    assert images == 5 and "final test acc" in text
