"""recipe.py: a run's settings checked against what is accepted, its name and label, and its settings folder."""

import pytest
import torch

import train as train_cli
from mnist_norms.config import params
from mnist_norms.recipe import L1, Recipe, experiment, experiment_folder, settings_folder


@pytest.mark.parametrize("settings,message", [
    (dict(precision="fp16"), "precision must be one of fp32, bf16, got 'fp16'"),
    (dict(norm="XN"), "norm must be one of BN, LN, GN"),
    (dict(groups=3), "groups must be one of 1, 2, 5, 10, got 3"),
    (dict(epochs=0), "epochs must be an integer >= 1, got 0"),
    (dict(lr=0.0), "lr must be a number > 0, got 0.0"),
    (dict(l1=float("nan")), "l1 must be a number >= 0, got nan"),
    (dict(limit=0), "limit must be an integer >= 1 or None, got 0"),
    (dict(translate=1.0), r"translate must be a number in \[0, 1\), got 1.0"),
    (dict(scale=-0.1), r"scale must be a number in \[0, 1\), got -0.1"),
    (dict(shear=90), r"shear must be a number in \[0, 90\), got 90"),
    (dict(pct_start=0), r"pct_start must be a number in \(0, 1\), got 0"),
    (dict(epochs=10, cycle_epochs=11), "cycle_epochs must be None or at most epochs=10, got 11"),
    (dict(final_div=0), "final_div must be a number > 0, got 0"),
    (dict(ema=1.0), r"ema must be a number in \[0, 1\), got 1.0"),
    (dict(ema_warmup=-1.0), "ema_warmup must be a number >= 0, got -1.0"),
    (dict(clip=float("inf")), "clip must be a number >= 0, got inf"),
    (dict(label_smoothing=1.0), r"label_smoothing must be a number in \[0, 1\), got 1.0"),
    (dict(weight_decay=-1e-4), "weight_decay must be a number >= 0, got -0.0001"),
    (dict(epochs=2.0), "epochs must be an integer >= 1, got 2.0"),
    (dict(seed=True), "seed must be an integer >= 0, got True"),
])
def test_bad_recipe_is_rejected_naming_what_is_accepted(settings, message):
    with pytest.raises(ValueError, match=message):
        Recipe(**settings)


def test_making_a_recipe_draws_no_random_numbers():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    Recipe("GN", groups=5)
    assert torch.equal(torch.rand(3), expected) and params(Recipe("LN")) == 7750


def test_recipe_names_and_labels_come_from_its_settings():
    assert [(r.name, r.label) for r in experiment()] == [("bn_l1", "BN + L1"), ("ln", "LN"), ("gn", "GN")]
    assert experiment()[0].l1 == L1 and Recipe("gn", groups=5).name == "gn_g5"
    assert Recipe("LN", precision="bf16").label == "LN (bf16)"
    assert Recipe("GN", groups=5).label == "GN (5 groups)"
    # A run's config is its recipe plus its data and environment: it reads back as the recipe.
    from dataclasses import asdict
    recipe = Recipe("GN", lr=0.2, val=10000, seed=3)
    assert Recipe.from_config({**asdict(recipe), "train_images": 50000, "torch": "x"}) == recipe
    assert (Recipe().pct_start, Recipe().ema) == (0.15, 0.999)  # the schedule search's choice
    assert (Recipe().ema_warmup, Recipe().clip) == (10.0, 0.0)  # the guard search's


def test_each_set_of_settings_gets_a_folder_named_after_what_differs_from_the_defaults():
    folder = lambda *argv: {settings_folder(r) for r in sum(train_cli.recipes(train_cli.parse_args(list(argv))),
                                                                  [])}
    assert folder() == folder("--seeds", "3", "--ablation-seeds", "1") == {""}  # the experiment's own: results/
    assert folder("--epochs", "1", "--limit", "2000") == {"epochs1_limit2000"}
    assert folder("--val", "10000", "--batch-size", "128", "--dropout", "0.05") == \
        {"dropout0.05_batch_size128_val10000"}
    assert folder("--precision", "bf16", "--lr", "0.05") == {"lr0.05_bf16"}
    # The schedule before the schedule search chose today's (the runs of results/v2/), from the command line.
    assert folder("--pct-start", "0.3", "--ema", "0") == {"pct_start0.3_ema0"}
    # The recipe before the guard search chose today's (the runs of results/v3/).
    assert folder("--ema-warmup", "0") == {"ema_warmup0"}
    assert folder("--cycle-epochs", "12", "--final-div", "40") == {"cycle_epochs12_final_div40"}
    assert settings_folder(Recipe(cycle_epochs=None)) == "" and \
        settings_folder(Recipe(limit=5, val=10)) == "val10_limit5"
    # The norm, seed, groups and L1 are in the file's name instead.
    assert folder("--groups", "5", "--norms", "gn", "ln") == folder("--l1", "0.0001") == {""}
    assert [r.name for r in train_cli.recipes(train_cli.parse_args(["--l1", "0.0001"]))[0]] == ["bn_l1_0.0001", "ln",
                                                                                                 "gn"]
    assert experiment(groups=5)[1].groups == Recipe.groups  # LN has no groups to set
    with pytest.raises(ValueError, match="different folders"):
        experiment_folder([Recipe(), Recipe(epochs=1)])


def test_every_setting_has_its_help_and_range_in_one_place_and_the_command_line_uses_them():
    from dataclasses import fields

    from mnist_norms import cli
    for f in fields(Recipe):
        assert f.metadata["help"] and f.metadata["kind"] in (int, float, str), f.name
    # train.py's option for a field: its default and help are the field's (--l1 and --val mean the BN run's and an
    # optional split there, and say so)
    p = cli.parser("x")
    cli.add_recipe_arguments(p)
    actions = {a.dest: a for a in p._actions}
    for f in fields(Recipe):
        if f.name in ("norm", "seed"):
            continue
        assert actions[f.name].default == f.default and actions[f.name].help == f.metadata["help"], f.name
