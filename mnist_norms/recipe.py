"""Every setting of a run, each with its default, range and help in one place (Recipe); the experiment's runs."""
import math
from dataclasses import dataclass, field, fields

from model import AFFINE, CONTROL, MODELS, NORMS, VALID_GROUPS

PRECISIONS = ("fp32", "bf16")
# Each control named by what it lacks, then what it has instead
CONTROL_LABELS = {CONTROL: "no norm, default init", AFFINE: "no norm, scaled init + affine"}
L1 = 1e-5  # the L1 weight of the experiment's BN run (LN and GN train without L1)


def setting(default, help, kind=float, *, low=None, high=None, low_open=False, choices=None, optional=False):
    """A Recipe field: its default, what it accepts (a `kind` in [low, high) or (low, high) with low_open, or one of
    `choices`; None too if `optional`) and its help. The checks and the command line (cli.py) are built from these."""
    return field(default=default, metadata=dict(help=help, kind=kind, low=low, high=high, low_open=low_open,
                                                choices=choices, optional=optional))


def accepted(f) -> str:
    """What field `f` accepts, in words: "a number in [0, 1)", "an integer >= 1", "one of BN, LN, GN"."""
    m = f.metadata
    if m["choices"]:
        return "one of " + ", ".join(map(str, m["choices"]))
    what = "an integer" if m["kind"] is int else "a number"
    if m["low"] is not None and m["high"] is not None:
        what += f" in {'(' if m['low_open'] else '['}{m['low']:g}, {m['high']:g})"
    elif m["low"] is not None:
        what += f" {'>' if m['low_open'] else '>='} {m['low']:g}"
    return what


def check(f, value):
    """`value` if field `f` accepts it, else ValueError saying what it accepts."""
    m = f.metadata
    if value is None and m["optional"]:
        return value
    ok = not isinstance(value, bool) and isinstance(value, (int, float) if m["kind"] is float else m["kind"])
    if ok and m["choices"]:
        ok = value in m["choices"]
    elif ok:
        above = m["low"] is None or value > m["low"] or (value == m["low"] and not m["low_open"])
        ok = math.isfinite(value) and above and (m["high"] is None or value < m["high"])
    if not ok:
        raise ValueError(f"{f.name} must be {accepted(f)}{' or None' if m['optional'] else ''}, got {value!r}")
    return value


@dataclass(frozen=True)
class Recipe:
    """Every setting of one run, with its default. A run's JSON config is this plus its data and environment."""
    norm: str = setting("BN", "the norm layers: BN, LN or GN, or a control: NONE (no norm, default init) or AFFINE "
                        "(no statistics: a per-channel scale and shift, scaled init) (any case; stored in upper "
                        "case)", str, choices=MODELS)
    groups: int = setting(2, "groups in every GroupNorm layer (GN only)", int, choices=VALID_GROUPS)
    l1: float = setting(0.0, "weight of the L1 penalty on the convolution weights", low=0)
    dropout: float = setting(0.0, "dropout after every norm layer (the recipe search chose none, results/tune/)",
                             low=0, high=1)
    epochs: int = setting(20, "epochs per run", int, low=1)
    seed: int = setting(0, "initial weights, dropout masks, batch order and augmentation", int, low=0)
    batch_size: int = setting(64, "training batch size", int, low=1)
    lr: float = setting(0.1, "peak learning rate of the one-cycle schedule", low=0, low_open=True)
    # pct_start 0.15 and ema 0.999: the schedule search's choice on the validation split (studies/recipe_search.py)
    pct_start: float = setting(0.15, "the share of the cycle's steps over which the learning rate rises to its peak",
                               low=0, high=1, low_open=True)
    cycle_epochs: int | None = setting(None, "the one-cycle schedule spans the first N epochs, then holds its end "
                                       "(None: all epochs)", int, low=1, optional=True)
    final_div: float = setting(1e4, "the cycle ends at lr / 25 / final_div (OneCycleLR's final_div_factor)", low=0,
                               low_open=True)
    ema: float = setting(0.999, "per-step decay of an average of the weights and BN's statistics that is evaluated and "
                         "saved (torch.optim.swa_utils.AveragedModel); 0: none, the trained weights", low=0, high=1)
    # ema_warmup 10: the guard search's choice on the validation split (studies/search.py --search guard)
    ema_warmup: float = setting(10.0, "warm the average up: its decay at update n is min(ema, (1 + n) / (ema_warmup "
                                "+ n)), as TensorFlow's ExponentialMovingAverage with num_updates; 0: ema from the "
                                "first update", low=0)
    clip: float = setting(0.0, "clip the total norm of the gradient (of the loss + L1) to this before each step; "
                          "0: never", low=0)
    label_smoothing: float = setting(0.0, "train on cross-entropy against labels smoothed by this; 0: the NLL",
                                     low=0, high=1)
    weight_decay: float = setting(0.0, "SGD's weight decay (L2), on every parameter", low=0)
    # Augmentation, drawn per image and per epoch: an affine map about the image's centre (augment.batches).
    degrees: float = setting(7.0, "augmentation: rotation uniform in ±degrees (counter-clockwise positive)", low=0)
    translate: float = setting(0.1, "augmentation: shift uniform in ±translate of the width (x) and of the height (y)",
                               low=0, high=1)
    scale: float = setting(0.1, "augmentation: zoom by a factor uniform in [1 - scale, 1 + scale]", low=0, high=1)
    shear: float = setting(5.0, "augmentation: shear along x by an angle uniform in ±shear degrees", low=0, high=90)
    precision: str = setting("fp32", "the training forward pass: fp32, or bf16 (bfloat16 autocast)", str,
                             choices=PRECISIONS)
    val: int = setting(0, "hold out the last N training images and evaluate on them, not the test set (0: the test "
                       "set)", int, low=0)
    limit: int | None = setting(None, "train on only the first N training images (None: all)", int, low=1,
                                optional=True)

    def __post_init__(self):
        if isinstance(self.norm, str):
            object.__setattr__(self, "norm", self.norm.upper())
        for f in fields(self):
            check(f, getattr(self, f.name))
        if self.cycle_epochs is not None and self.cycle_epochs > self.epochs:
            raise ValueError(f"cycle_epochs must be None or at most epochs={self.epochs}, got {self.cycle_epochs!r}")

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
        """The keyword arguments of augment.batches() that augment the training images."""
        return {"degrees": self.degrees, "translate": self.translate, "scale": self.scale, "shear": self.shear}

    @property
    def label(self) -> str:
        """The name shown in figures and tables: "BN + L1", "GN (5 groups)", "LN (bf16)", "no norm, default init"."""
        label = CONTROL_LABELS.get(self.norm, self.norm)
        label += (" + L1" if self.l1 else "") + (f" ({self.l1:g})" if self.l1 not in (0, L1) else "")
        if self.norm == "GN" and self.groups != Recipe.groups:
            label += f" ({self.groups} groups)"
        return label + (" (bf16)" if self.precision == "bf16" else "")

    @classmethod
    def from_config(cls, config):
        """The recipe of a run's JSON config (a setting it does not record is the default: the record of the recipe
        searches' runs predates some settings, which docs/experiments.md names)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in known})


def experiment(norms=NORMS, seeds=(0,), *, l1=L1, groups=Recipe.groups, **settings):
    """The experiment's recipes, by norm then seed: L1 on the BN run only, `groups` on the GN run only (BN and LN
    have no groups); `settings` (Recipe fields) for all."""
    return [Recipe(norm, l1=l1 if norm.upper() == "BN" else 0.0,
                   groups=groups if norm.upper() == "GN" else Recipe.groups, seed=seed, **settings)
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
            shown = value if isinstance(value, str) else "all" if value is None else format(value, "g")
            parts.append(shown if isinstance(value, str) else f"{f.name}{shown}")
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
    """The order runs are listed in, from their config: by norm as in model.MODELS, L1 before none, fewer groups
    first, fp32 before bf16, then by batch size."""
    recipe = Recipe.from_config(config)
    return (MODELS.index(recipe.norm), -recipe.l1, recipe.groups, PRECISIONS.index(recipe.precision),
            recipe.batch_size)


def label(record) -> str:
    """A record's label, from its config (Recipe.label)."""
    return Recipe.from_config(record["config"]).label
