"""torch.hub: the entry point offline, the committed weights hash-checked, and (on the real MNIST, through an
independent torchvision pipeline) the committed weights reproduce the committed test accuracies exactly."""
import json
import os
import sys
import types

import pytest
import torch

import hubconf
from conftest import DATA, ROOT


def test_hub_builds_an_untrained_net_offline_and_its_help_names_the_options():
    net = torch.hub.load(ROOT, "net", source="local", norm="ln", groups=1)
    assert sum(p.numel() for p in net.parameters()) == 7750 and net.norm == "LN" and net.training
    assert "pretrained=True" in hubconf.net.__doc__  # what torch.hub.help("OWNER/REPO", "net") prints


@pytest.mark.parametrize("norm", ["BN", "LN", "GN"])
def test_hub_loads_the_committed_weights_in_eval_mode(norm):
    net = torch.hub.load(ROOT, "net", source="local", norm=norm, pretrained=True)
    state, config = hubconf.load_pretrained(norm)
    assert not net.training and config["norm"] == norm and config["seed"] == 0
    assert all(torch.equal(a, state[k]) for k, a in net.state_dict().items())
    with open(os.path.join(ROOT, "results", os.path.basename(hubconf.PRETRAINED[norm][0])[:-3] + ".json")) as f:
        assert json.load(f)["config"] == config  # the weights come from the run that wrote the committed results


def test_hub_uses_its_own_model_py_even_when_the_caller_has_another_module_named_model():
    theirs = types.ModuleType("model")
    theirs.Net = lambda *a, **k: "the caller's Net"
    saved = sys.modules.get("model")
    sys.modules["model"] = theirs
    sys.path.insert(0, os.path.dirname(__file__))  # and whatever else is first on sys.path
    try:
        net = torch.hub.load(ROOT, "net", source="local", norm="GN", pretrained=True)
        assert isinstance(net, torch.nn.Module) and sum(p.numel() for p in net.parameters()) == 7750
        assert sys.modules["model"] is theirs  # not replaced either
    finally:
        sys.path.remove(os.path.dirname(__file__))
        if saved is None:
            sys.modules.pop("model")
        else:
            sys.modules["model"] = saved


def test_a_weights_file_that_does_not_match_its_hash_is_refused_naming_it(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="pretrained weights exist for norm BN, LN, GN"):
        hubconf.net("IN", pretrained=True)
    with pytest.raises(ValueError, match="was trained with"):
        hubconf.net("GN", pretrained=True, groups=5)
    bad = tmp_path / "gn_seed0.pt"
    bad.write_bytes(open(os.path.join(ROOT, hubconf.PRETRAINED["GN"][0]), "rb").read() + b"x")
    monkeypatch.setitem(hubconf.PRETRAINED, "GN", (str(bad), hubconf.PRETRAINED["GN"][1]))
    with pytest.raises(RuntimeError, match=rf"{bad}: SHA-256 \w+ does not match the pinned"):
        hubconf.net("GN", pretrained=True)


def test_every_finished_run_of_todays_recipe_keeps_its_weights_and_they_are_the_ones_it_recorded():
    # Every run in results/ (top level) keeps its weights in weights/ under its name, and its results file pins their
    # SHA-256 (weights_sha256, which records.load_weights checks); hubconf pins the three it publishes to the same.
    from mnist_norms.files import sha256_file
    names = sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "results"))
                   if f.endswith(".json") and "_seed" in f)
    assert names
    for name in names:
        with open(os.path.join(ROOT, "results", name + ".json")) as f:
            record = json.load(f)
        if len(record["history"]) < record["config"]["epochs"]:
            continue  # still training: no weights yet
        assert sha256_file(os.path.join(ROOT, "weights", name + ".pt")) == record["weights_sha256"], name
    for norm, (path, digest) in hubconf.PRETRAINED.items():
        with open(os.path.join(ROOT, "results", os.path.basename(path)[:-3] + ".json")) as f:
            assert json.load(f)["weights_sha256"] == digest, norm


@pytest.mark.mnist
@pytest.mark.parametrize("norm", ["BN", "LN", "GN"])
def test_committed_weights_classify_exactly_the_committed_number_of_test_images(norm, mnist):
    # An independent path: torchvision's dataset, ToTensor and Normalize, a DataLoader, no code of ours but the Net.
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms
    test = datasets.MNIST(DATA, train=False, download=False, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]))
    net = hubconf.net(norm, pretrained=True)
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(test, batch_size=1000):
            correct += (net(x).argmax(1) == y).sum().item()
    with open(os.path.join(ROOT, "results", os.path.basename(hubconf.PRETRAINED[norm][0])[:-3] + ".json")) as f:
        recorded = json.load(f)["history"][-1]["test_acc"]
    assert correct == round(recorded * len(test) / 100)


def test_the_readme_lines_work_in_a_clone(monkeypatch):
    # The README's "Use the trained models" block, as a user runs it in a clone; the GitHub line needs the
    # network, so it is checked to be the same call with a GitHub path instead.
    import re
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"## Use the trained models.*?```python\n(.*?)```", text, re.S).group(1)
    github = [line for line in block.splitlines() if '"OWNER/REPO"' in line]
    assert len(github) == 1 and "pretrained=True" in github[0]
    monkeypatch.chdir(ROOT)
    scope = {"images": torch.randint(0, 256, (4, 1, 28, 28)).float()}
    exec("\n".join(line for line in block.splitlines() if line not in github), scope)
    assert scope["logp"].shape == (4, 10) and torch.allclose(scope["logp"].exp().sum(1), torch.ones(4))
