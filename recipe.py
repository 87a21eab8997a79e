"""The settings of a run, each with its default in one place (Recipe), and the experiment's runs built from them."""
import math
from dataclasses import dataclass, fields

import torch

from data import MNIST_SHA256
from model import NORMS, Net

PRECISIONS = ("fp32", "bf16")
L1 = 1e-5  # the L1 weight of the experiment's BN run (LN and GN train without L1)


@dataclass(frozen=True)
class Recipe:
    """Every setting of one run, with its default. A run's JSON config is this plus its data and environment."""
    norm: str = "BN"          # BN, LN or GN (any case; stored in upper case)
    groups: int = 2           # groups in every GroupNorm layer (GN only): 1, 2, 5 or 10
    l1: float = 0.0           # weight of the L1 penalty on the convolution weights
    dropout: float = 0.0      # after every norm layer (0: none; the recipe search chose none, results/tune/)
    epochs: int = 20
    seed: int = 0             # initial weights, dropout masks, batch order and augmentation
    batch_size: int = 64
    lr: float = 0.1           # peak learning rate of the one-cycle schedule
    pct_start: float = 0.15   # the share of the cycle's steps over which the learning rate rises to its peak
    cycle_epochs: int | None = None  # the one-cycle schedule spans the first cycle_epochs (None: all), then holds its end
    final_div: float = 1e4    # the cycle ends at lr / 25 / final_div (OneCycleLR's final_div_factor)
    ema: float = 0.999        # per-step decay of an average of the weights and BN's statistics (0: none); if > 0 the
                              # averaged model is what is evaluated and saved (torch.optim.swa_utils.AveragedModel)
    ema_warmup: float = 10.0  # warm the average up: its decay at the n-th update is min(ema, (1 + n) / (ema_warmup + n))
                              # (TensorFlow's ExponentialMovingAverage with num_updates uses 10); 0: ema from the start
    clip: float = 0.0         # clip the total norm of the gradient (of the loss + L1) to this before each step (0: never)
    label_smoothing: float = 0.0  # the loss is cross-entropy against (1 - this) on the label and the rest spread evenly
    weight_decay: float = 0.0     # SGD's weight decay (L2), on every parameter
    # pct_start 0.15 and ema 0.999: the schedule search's choice on the validation split (tune.py, results/tune/schedule/)
    # ema_warmup 10: the guard search's choice on the validation split (tune.py --search guard,
    # results/tune/guard/)
    # Augmentation, drawn per image and per epoch: an affine map about the image's centre (see batches, affine).
    degrees: float = 7.0      # rotation uniform in ±degrees (counter-clockwise positive)
    translate: float = 0.1    # shift uniform in ±translate of the width (x) and of the height (y)
    scale: float = 0.1        # zoom by a factor uniform in [1 - scale, 1 + scale]
    shear: float = 5.0        # shear along x by an angle uniform in ±shear degrees
    precision: str = "fp32"   # the training forward pass: fp32, or bf16 (bfloat16 autocast)
    val: int = 0              # if > 0: hold out the last `val` training images and evaluate on them, not the test set
    limit: int | None = None  # train on only the first `limit` training images

    def __post_init__(self):
        with torch.device("meta"):  # Net's own checks name what is accepted; no memory, no random numbers drawn
            Net(self.norm, groups=self.groups, dropout=self.dropout)
        object.__setattr__(self, "norm", self.norm.upper())
        for name, low in (("epochs", 1), ("seed", 0), ("batch_size", 1), ("val", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 1):
            raise ValueError(f"limit must be None or an integer >= 1, got {self.limit!r}")
        for name, positive in (("l1", False), ("lr", True), ("degrees", False), ("ema_warmup", False), ("clip", False),
                               ("weight_decay", False)):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or value < 0 or (positive and value == 0)):
                raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value!r}")
        if self.cycle_epochs is not None and (isinstance(self.cycle_epochs, bool) or not isinstance(self.cycle_epochs, int)
                                              or not 1 <= self.cycle_epochs <= self.epochs):
            raise ValueError(f"cycle_epochs must be None or an integer in [1, epochs={self.epochs}], got "
                             f"{self.cycle_epochs!r}")
        if isinstance(self.pct_start, bool) or not isinstance(self.pct_start, (int, float)) or \
                not 0 < self.pct_start < 1:
            raise ValueError(f"pct_start must be a number in (0, 1), got {self.pct_start!r}")
        if isinstance(self.final_div, bool) or not isinstance(self.final_div, (int, float)) or \
                not math.isfinite(self.final_div) or self.final_div <= 0:
            raise ValueError(f"final_div must be a finite number > 0, got {self.final_div!r}")
        for name, high in (("translate", 1), ("scale", 1), ("shear", 90), ("ema", 1), ("label_smoothing", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < high:
                raise ValueError(f"{name} must be a number in [0, {high}), got {value!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def name(self) -> str:
        """The run's file name stem: bn_l1, bn, ln, gn; bn_l1_0.0001 for an L1 weight other than L1; gn_g5 for GN with
        other than 2 groups; _bf16 for bf16."""
        name = self.norm.lower() + ("_l1" if self.l1 else "") + (f"_{self.l1:g}" if self.l1 not in (0, L1) else "")
        if self.norm == "GN" and self.groups != Recipe.groups:
            name += f"_g{self.groups}"
        return name + ("_bf16" if self.precision == "bf16" else "")

    @property
    def augmentation(self) -> dict:
        """The keyword arguments of batches() and train_epoch() that augment the training images."""
        return {"degrees": self.degrees, "translate": self.translate, "scale": self.scale, "shear": self.shear}

    @property
    def step(self) -> dict:
        """The keyword arguments of train_epoch() and train_step() that shape a training step: its loss, the
        forward pass's precision and the clip."""
        return {"l1": self.l1, "label_smoothing": self.label_smoothing, "clip": self.clip, "precision": self.precision}

    @property
    def label(self) -> str:
        """The name shown in figures and tables: "BN + L1", "GN (5 groups)", "LN (bf16)"."""
        label = self.norm + (" + L1" if self.l1 else "") + (f" ({self.l1:g})" if self.l1 not in (0, L1) else "")
        if self.norm == "GN" and self.groups != Recipe.groups:
            label += f" ({self.groups} groups)"
        return label + (" (bf16)" if self.precision == "bf16" else "")

    @classmethod
    def from_config(cls, config):
        """The recipe of a run's JSON config. A setting that an older file does not record is what such runs
        used: UNRECORDED's value, else the default; the split, which such files give as image counts."""
        known = {f.name for f in fields(cls)}
        settings = {**UNRECORDED, **{k: v for k, v in config.items() if k in known}}
        if "val" not in config and config.get("eval_split", "test") != "test":
            settings["val"] = config["eval_images"]
        if "limit" not in config and "train_images" in config:
            full = MNIST_SHA256["train"][0] - settings.get("val", 0)
            settings["limit"] = config["train_images"] if config["train_images"] < full else None
        return cls(**settings)


# The learning-rate schedule of every run before the schedule search (results/v2/, results/v1/, results/tune/,
# results/batch_size/): one cycle over all epochs, peaking after 30% of it, and no average of the weights.
FIRST_SCHEDULE = {"pct_start": 0.3, "cycle_epochs": None, "final_div": 1e4, "ema": 0.0}
# The settings that the guard search (tune.py --search guard) added, as every run before it had them: no warm-up of
# the average, no clip, the NLL itself, no weight decay.
BEFORE_GUARD = {"ema_warmup": 0.0, "clip": 0.0, "label_smoothing": 0.0, "weight_decay": 0.0}
# What runs whose files do not record these settings trained with (the files predate the settings).
UNRECORDED = {"degrees": 7.0, "translate": 0.0, "scale": 0.0, "shear": 0.0, **FIRST_SCHEDULE, **BEFORE_GUARD}


def experiment(norms=NORMS, seeds=(0,), *, l1=L1, groups=Recipe.groups, **settings):
    """The experiment's recipes, by norm then seed: L1 on the BN run only, `groups` on the GN run only (BN and LN
    have no groups); `settings` (Recipe fields) for all."""
    return [Recipe(norm, l1=l1 if norm.upper() == "BN" else 0.0, groups=groups if norm.upper() == "GN" else Recipe.groups,
                   seed=seed, **settings)
            for norm in norms for seed in seeds]


# In a run's file name (Recipe.name) rather than in its folder.
NAMED = ("norm", "seed", "groups", "l1")


def settings_folder(recipe) -> str:
    """The folder, under results/, weights/, checkpoints/ and static/, of a run's settings: "" for the experiment's
    own (Recipe's defaults), else the settings that differ from them, as "epochs1_limit2000" or "lr0.05_bf16".

    So runs with other settings never meet the experiment's files, nor each other's: change a setting, run, change
    it back and run again, and each set of settings resumes or loads its own runs. The norm, seed, groups and
    L1 are in the file's name instead (Recipe.name: bn_l1_seed0, gn_g5_seed0)."""
    default = Recipe()
    parts = []
    for f in fields(Recipe):
        value = getattr(recipe, f.name)
        if f.name not in NAMED and value != getattr(default, f.name):
            parts.append(value if isinstance(value, str) else f"{f.name}{'all' if value is None else format(value, 'g')}")
    return "_".join(parts)


def experiment_folder(recipes) -> str:
    """The settings folder (settings_folder) that every one of `recipes` shares."""
    folders = {settings_folder(r) for r in recipes}
    if len(folders) != 1:
        raise ValueError(f"these runs differ in more than their norm, seed, groups and L1, so they belong in "
                         f"different folders: {sorted(folders)}")
    return folders.pop()


ABLATION_GROUPS = (5, 10)  # GN's other group counts (1 group is LN, 2 the default GN): Wu & He's ablation


def ablations(seeds=(0,), **settings):
    """The runs that answer the side questions, by seed: BN without L1 (does L1 matter?) and GN with
    ABLATION_GROUPS groups (how many groups?); `settings` (Recipe fields) for all."""
    return [Recipe("BN", l1=0.0, seed=seed, **settings) for seed in seeds] + \
        [Recipe("GN", groups=g, seed=seed, **settings) for g in ABLATION_GROUPS for seed in seeds]


def run_order(config):
    """The order runs are listed in, from their config: by norm as in model.NORMS, L1 before none, fewer groups
    first, fp32 before bf16, then by batch size."""
    recipe = Recipe.from_config(config)
    return (NORMS.index(recipe.norm), -recipe.l1, recipe.groups, PRECISIONS.index(recipe.precision),
            recipe.batch_size)


def label(record) -> str:
    """A record's label, from its config (Recipe.label)."""
    return Recipe.from_config(record["config"]).label
