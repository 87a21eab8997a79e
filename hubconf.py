"""torch.hub entry point: the 7,750-parameter MNIST CNN with BN, LN or GN, untrained or with the committed weights."""
import hashlib
import importlib.util
import io
import os

import torch

dependencies = ["torch"]

HERE = os.path.dirname(os.path.abspath(__file__))
# The weights of the runs the README reports (seed 0 of each model), written by train.py, and their SHA-256.
PRETRAINED = {
    "BN": ("weights/bn_l1_seed0.pt", "3e1ee6fed409a2fa82e8a2fd85fba012130ddfb95152ca7ee18b4b5ed7653c12"),
    "LN": ("weights/ln_seed0.pt", "1c2658bfa2ef1822d9f65a1ecc1bafb1a1b710436081a26f726a9ac379810556"),
    "GN": ("weights/gn_seed0.pt", "edba5d09ca4702a014752726bb8a8da159777d252a6f93559aca598af5e9c501"),
}


def _model():
    """This repository's model.py, loaded by path under a private name: a caller's own module called `model`
    (already imported, or first on sys.path) is neither used nor replaced."""
    spec = importlib.util.spec_from_file_location("mnist_norms_model", os.path.join(HERE, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_pretrained(norm):
    """(state_dict, config) of the committed weights for norm, after checking the file's SHA-256."""
    path, expected = PRETRAINED[norm]
    path = os.path.join(HERE, path)
    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise RuntimeError(f"{path}: SHA-256 {digest} does not match the pinned {expected}; the file is damaged "
                           f"or not the one published (restore it with git checkout)")
    saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # data only, never code
    return saved["state_dict"], saved["config"]


def net(norm="BN", pretrained=False, **kwargs):
    """The MNIST CNN (7,750 parameters) with norm "BN", "LN" or "GN" (any case).

    pretrained=True: the trained weights committed under weights/ (seed 0 of BN + L1, LN and GN, the runs
    the README reports: the average of their weights that each epoch evaluated; hash-checked), returned in eval
    mode. Otherwise an untrained Net; kwargs
    (groups=2, dropout=0.0) go to model.Net. Input: [N, 1, 28, 28] images scaled to [0, 1] and then
    standardized with MNIST's mean 0.1307 and std 0.3081; output: [N, 10] log-probabilities.
    """
    model = _model()
    if not pretrained:
        return model.Net(norm, **kwargs)
    key = norm.upper() if isinstance(norm, str) else norm
    if key not in PRETRAINED:
        raise ValueError(f"pretrained weights exist for norm {', '.join(PRETRAINED)}, got {norm!r}")
    state_dict, config = load_pretrained(key)
    settings = {"groups": config["groups"], "dropout": config["dropout"]}
    clash = {k: v for k, v in kwargs.items() if settings.get(k, v) != v or k not in settings}
    if clash:
        raise ValueError(f"the pretrained {key} model was trained with {settings}; got {clash}")
    network = model.Net(key, **settings)
    network.load_state_dict(state_dict)
    return network.eval()
