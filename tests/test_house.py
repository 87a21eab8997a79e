"""The house in floors that never point up: model.py and the package mnist_norms at the bottom, utils.py (the
student's code) above them, then train.py, the notebook, the studies, tools and benchmarks. Read from the code's own
imports, every one of them, in functions too."""
import ast
import os

import pytest

from conftest import ROOT

ABOVE_THE_PACKAGE = ("utils", "train", "hubconf", "studies", "tools", "benchmarks")


def imported(path):
    """Every module a file imports, at the top or inside a function: {name}."""
    with open(path) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def top(name):
    return name.split(".")[0]


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(os.path.join(ROOT, "mnist_norms")) if f.endswith(".py")))
def test_no_module_of_the_package_imports_what_sits_above_it(name):
    up = {n for n in imported(os.path.join(ROOT, "mnist_norms", name)) if top(n) in ABOVE_THE_PACKAGE}
    assert not up, f"mnist_norms/{name} imports {sorted(up)}"


def test_model_imports_only_torch_and_utils_imports_no_study_and_no_machinery_of_processes():
    assert {top(n) for n in imported(os.path.join(ROOT, "model.py"))} <= {"torch", "math"}
    names = imported(os.path.join(ROOT, "utils.py"))
    assert not {n for n in names if top(n) in ("studies", "tools", "benchmarks", "train")}
    # a course's utils.py: train, test and the figures, nothing about processes, signals or threads
    assert not names & {"multiprocessing", "signal", "threading", "subprocess", "multiprocessing.managers"}
    with open(os.path.join(ROOT, "utils.py")) as f:
        assert len(f.read().splitlines()) <= 250
