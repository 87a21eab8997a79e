"""A run's JSON config: its recipe and data, the optimizer, schedule and augmentation in words, and the machine it ran
on; and how a saved config differs from a new one (what runner.run checks before it resumes or loads a run)."""
from dataclasses import asdict, fields

import torch

from mnist_norms import machine
from mnist_norms.recipe import Recipe
from model import Net


def params(recipe) -> int:
    """The number of parameters of the recipe's Net (built on the meta device: no memory, no random numbers)."""
    with torch.device("meta"):
        return sum(p.numel() for p in Net(recipe.norm, groups=recipe.groups).parameters())


def run_config(recipe, train, test, device):
    """A run's JSON config: the recipe, its data, a description of the optimizer and the environment."""
    lr, cycle = recipe.lr, recipe.cycle_epochs or recipe.epochs
    schedule = (f"OneCycleLR(max_lr={lr}, stepped per batch): lr {lr / 25:g} -> {lr:g} over the first "
                f"{100 * recipe.pct_start:g}%, then cosine to {lr / 25 / recipe.final_div:.1e}; "
                "momentum 0.95 -> 0.85 -> 0.95")
    if cycle < recipe.epochs:
        schedule += f"; the cycle spans epochs 1-{cycle}, then lr and momentum stay at its end"
    if recipe.clip:
        schedule += f"; the gradient's total norm clipped to {recipe.clip:g} before each step"
    if recipe.ema:
        warmup = f", warmed up: min({recipe.ema:g}, (1 + n) / ({recipe.ema_warmup:g} + n)) at update n" \
            if recipe.ema_warmup else ""
        schedule += (f"; evaluated and saved: the exponential moving average of the weights and BN's statistics, "
                     f"decay {recipe.ema:g} per step{warmup} (AveragedModel)")
    return {**asdict(recipe), "train_images": len(train[1]),
            "eval_split": f"validation: the last {recipe.val} training images" if recipe.val else "test",
            "eval_images": len(test[1]), "params": params(recipe),
            "optimizer": "SGD(nesterov=True), momentum set by the schedule" + (
                f", weight decay {recipe.weight_decay:g}" if recipe.weight_decay else ""),
            "schedule": schedule,
            "augmentation": describe_augmentation(recipe),
            "torch": str(torch.__version__), "device": str(device), "hardware": machine.hardware(device),
            # the CPU instruction set of the kernels (machine.pin_isa): "avx2" reproduces on x86-64 CPUs with AVX2
            # and FMA, Intel's and AMD's alike (tools.fingerprint checks a machine in seconds)
            "isa": machine.isa_in_use() if device.type == "cpu" else None,
            # the CPU's model and vendor, so that a run that does not re-run can be traced to where it ran
            "cpu": machine.cpu_name() if device.type == "cpu" else None,
            "threads": torch.get_num_threads()}


def describe_augmentation(recipe):
    """The augmentation in words, for a run's config."""
    parts = [f"rotation uniform in ±{recipe.degrees:g} degrees"]
    if recipe.translate:
        parts.append(f"shift uniform in ±{recipe.translate:g} of the width and height")
    if recipe.scale:
        parts.append(f"zoom uniform in [{1 - recipe.scale:g}, {1 + recipe.scale:g}]")
    if recipe.shear:
        parts.append(f"x-shear uniform in ±{recipe.shear:g} degrees")
    return ", ".join(parts) + "; bilinear, fill 0"


def differences(saved, config, keys):
    """"lr 0.1 there, 0.2 now; ..." for the keys where a saved config differs from this one ("" if none).
    A setting that an older file does not record counts as its default (Recipe.from_config)."""
    old = {**saved, **asdict(Recipe.from_config(saved))}
    return "; ".join(f"{k} {old.get(k)!r} there, {config[k]!r} now" for k in keys if old.get(k) != config[k])


RECIPE_KEYS = [f.name for f in fields(Recipe)] + ["train_images", "eval_images"]
