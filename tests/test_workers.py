"""Worker processes end with the process that started them, however it ends: a SIGKILL (an out-of-memory kill, a
notebook's kernel restarted) leaves none behind, idle or training."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

# Two runs on two workers: a one-epoch run whose worker then idles, waiting for a task, and a long one
SCRIPT = """
import sys, torch
sys.path[:0] = [{root!r}, {tests!r}]
import utils
from mnist_norms import runner
from conftest import synthetic
from mnist_norms.recipe import Recipe
recipes = [Recipe("LN", epochs=1, seed=0, batch_size=64), Recipe("LN", epochs=50, seed=1, batch_size=8)]
print("started", flush=True)
utils.run_experiments(recipes, (synthetic(256), synthetic(32, seed=1)), device=torch.device("cpu"), out=sys.argv[1],
                      study=runner.Study(folder=""), jobs=2, progress=False)
"""


def children(pid):
    """The pids of the processes whose parent is `pid` (from /proc)."""
    found = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(d))
        except OSError:  # it ended while listed
            pass
    return found


def descendants(pid):
    """The pids of `pid`'s children, their children and so on."""
    found = children(pid)
    for child in list(found):
        found += descendants(child)
    return found


def running(pid):
    """Whether process `pid` still runs (a zombie has ended: only its exit status is left for its new parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_a_sigkill_of_the_parent_leaves_no_worker_behind(tmp_path):
    code = SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, "tests"))
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        parent.stdout.readline()
        deadline = time.time() + 120
        first = tmp_path / "results" / "ln_seed0.json"
        while not first.exists() or "weights_sha256" not in first.read_text():  # until the one-epoch run is done
            assert time.time() < deadline and parent.poll() is None, "the runs did not start"
            time.sleep(0.2)
        time.sleep(1)  # the one-epoch run's worker now idles
        workers = descendants(parent.pid)
        # two workers and the manager that carries their log lines (and, where there is one, the fork server that
        # started them, and a resource tracker)
        assert len(workers) >= 3
    finally:
        if parent.poll() is None:
            os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    deadline = time.time() + 20
    while any(running(w) for w in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not [w for w in workers if running(w)]
