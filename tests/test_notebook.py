"""The notebook runs headlessly in a real Jupyter kernel (1 epoch, a small LIMIT) and makes its figures."""
import os

import pytest

from conftest import DATA, ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = os.path.join(ROOT, "session5_assignment.ipynb")


def test_notebook_is_thin_with_a_tagged_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    for name in ("EPOCHS = 20", "SEEDS = [0]", "LIMIT = None", 'DATA = "data"', 'PRECISION = "fp32"'):
        assert name in code[0].source
    assert not any(line.lstrip().startswith(("def ", "class ")) for c in code for line in c.source.splitlines())


@pytest.mark.mnist
def test_notebook_runs_and_makes_the_figures(tmp_path, mnist):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    # Papermill's convention: a cell after the parameters cell overrides them.
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(
        f"EPOCHS = 1\nSEEDS = [0]\nLIMIT = 1000\nDATA = {DATA!r}\nOUT = {str(tmp_path)!r}"))
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": ROOT}}).execute()
    for name in ("graph_losses", "graph_accuracies", "misclassified_bn_l1", "misclassified_ln", "misclassified_gn"):
        assert os.path.getsize(tmp_path / "static" / f"{name}.png") > 5000, name
    for name in ("bn_l1", "ln", "gn"):
        assert (tmp_path / "results" / f"{name}_seed0.json").exists()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 5  # Graph 1, Graph 2 and three misclassified grids shown inline
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert text.count("Trainable params: 7,750") == 3 and "final test acc" in text
