"""A run's files: where they go, reading them back (with an error that says how to restore a broken one), and the
summary table of finished runs."""
import json
import os

import numpy as np
import torch

from mnist_norms.files import sha256_file
from mnist_norms.recipe import label
from model import Net

# the repository (this package's parent folder): its results/, weights/ and static/ are committed
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = os.path.join(ROOT, "runs")  # where runs are trained by default: a folder of the user's, ignored by git


class SettingsClash(ValueError):
    """A run's files on disk were written with other settings than the run asked for now."""


class RecordError(ValueError):
    """A results file, checkpoint or weights file that cannot be read as one."""


def is_committed(path) -> bool:
    """Whether git tracks `path` (a file of the repository as committed); False where git or a repository is not
    there. Only asked on the way to an error message, so its cost does not matter."""
    import subprocess
    try:
        done = subprocess.run(["git", "ls-files", "--error-unmatch", os.path.basename(path)],
                              cwd=os.path.dirname(os.path.abspath(path)), capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def shown(path) -> str:
    """A path as a log shows it: relative to the working directory when inside it, else as it is."""
    rel = os.path.relpath(path)
    return path if rel.startswith(os.pardir) else rel


def how_to_restore(path, own=None) -> str:
    """What to do about a file that cannot be used: `git checkout` for a committed one (never delete it), else `own`
    (by default: train the run again with --fresh)."""
    if is_committed(path):
        return f"it is a committed file: restore it with `git checkout -- {os.path.relpath(path)}`"
    return own or "if it is a run of your own, --fresh trains the run again from scratch"


def settings_clash(path, clash, resume="") -> SettingsClash:
    """The error for a run's file written with other settings: where to train instead, never to delete a committed one.
    resume: how the file could still be used, said first."""
    if is_committed(path):
        advice = "it is a committed run, so leave it and train into another folder (the default --out, runs/)"
    else:
        advice = "train into another folder (--out), or pass --fresh to train this folder's run again from scratch"
    return SettingsClash(f"{shown(path)} was written with other settings ({clash}); {resume}{advice}")


def read_json(path, what="JSON file", own=None):
    """The JSON in `path`, or RecordError naming the file, what is wrong and how to restore it (`own`: see
    how_to_restore)."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{shown(path)} is not a {what}: it is not valid JSON ({e}); "
                          f"{how_to_restore(path, own)}") from None


def read_record(path, own=None):
    """A run's record {"name", "config", "history"} from its results JSON, or RecordError naming the file, what is
    wrong with it and how to restore it (a truncated file, one edited by hand, or not a results file at all).
    own: what to do if it is not a committed file (how_to_restore)."""
    record = read_json(path, "results file", own)
    missing = [k for k, kind in (("name", str), ("config", dict), ("history", list))
               if not isinstance(record, dict) or not isinstance(record.get(k), kind)]
    if missing:
        raise RecordError(f"{shown(path)} is not a results file: a run's JSON has \"name\", \"config\" and "
                          f"\"history\", "
                          f"and this one lacks {', '.join(repr(k) for k in missing)} or has another type there; "
                          f"{how_to_restore(path, own)}")
    bad = [i + 1 for i, e in enumerate(record["history"]) if not isinstance(e, dict) or "test_acc" not in e]
    if bad or not isinstance(record["config"].get("epochs"), int):
        raise RecordError(f"{shown(path)} is not a complete results file: "
                          + (f"epoch {bad[0]} of its history has no test_acc" if bad else "its config has no epochs")
                          + f"; {how_to_restore(path, own)}")
    return record


def load_torch(path, device="cpu", what="checkpoint"):
    """torch.load(path, weights_only=True) (data only, never code), or RecordError naming the file."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or not data only: all mean the file is unusable
        # (torch's own message suggests weights_only=False, which would run code from the file: not repeated here)
        raise RecordError(f"{shown(path)} cannot be read as a {what} ({type(e).__name__}: it is truncated, or not a "
                          f"file "
                          f"that a run wrote); {how_to_restore(path)}") from None


def run_paths(out, folder, name, seed):
    """Where a run's files go: OUT/results/FOLDER/NAME_seedS.json, and the same under weights/ and checkpoints/
    as .pt (results/ and weights/ beside each other; checkpoints are removed when the run finishes)."""
    stem = f"{name}_seed{seed}"
    return {"results": os.path.join(out, "results", folder, f"{stem}.json"),
            "weights": os.path.join(out, "weights", folder, f"{stem}.pt"),
            "checkpoint": os.path.join(out, "checkpoints", folder, f"{stem}.pt")}


def load_weights(path, device="cpu", sha256=None):
    """(model in eval mode, saved config) from a weights file a run wrote. Loaded with weights_only=True:
    a weights file is data (tensors, numbers and strings), never code. sha256: the file's SHA-256 as its run recorded
    it (weights_sha256 in its results file); a file that differs is refused."""
    if sha256 is not None and (digest := sha256_file(path)) != sha256:
        raise RecordError(f"{shown(path)}: its SHA-256 {digest[:12]}... is not the {sha256[:12]}... its run recorded, "
                          f"so it is not the file that run wrote; {how_to_restore(path)}")
    saved = load_torch(path, device, "weights file")
    config = saved["config"]
    model = Net(config["norm"], groups=config["groups"], dropout=config["dropout"]).to(device)
    model.load_state_dict(saved["state_dict"])
    return model.eval(), config


def is_finished(path, stop_after=None):
    """Whether a results file exists and holds every epoch its config plans (or `stop_after` epochs, if fewer)."""
    if not os.path.exists(path):
        return False
    record = read_record(path)
    return len(record["history"]) >= min(record["config"]["epochs"], stop_after or record["config"]["epochs"])


def load_records(folder):
    """{run name: [record per seed, by seed]} from the folder's <name>_seed<S>.json files."""
    records = {}
    for file in sorted(os.listdir(folder)):
        if file.endswith(".json") and "_seed" in file:
            record = read_record(os.path.join(folder, file))
            records.setdefault(record["name"], []).append(record)
    for recs in records.values():
        recs.sort(key=lambda r: r["config"]["seed"])
    return records


def summarize(records):
    """One row per run name from {name: [record per seed]}: <key>_mean and <key>_std over seeds
    (population std, 0 for one seed) of the final and best test accuracy (final, best), the final
    train accuracy (train), the lowest test loss (loss) and the minutes per run (minutes).
    Runs that have not finished an epoch are left out; unfinished runs are listed as
    (seed, epochs done, epochs planned)."""
    rows = []
    for name, recs in records.items():
        recs = [r for r in recs if r["history"]]
        if not recs:
            continue
        hist = [r["history"] for r in recs]
        row = {"name": name, "label": label(recs[0]), "params": recs[0]["config"]["params"],
               "seeds": [r["config"]["seed"] for r in recs], "finals": [h[-1]["test_acc"] for h in hist],
               "unfinished": [(r["config"]["seed"], len(r["history"]), r["config"]["epochs"]) for r in recs
                              if len(r["history"]) < r["config"]["epochs"]]}
        for key, values in (("final", row["finals"]),
                            ("best", [max(e["test_acc"] for e in h) for h in hist]),
                            ("train", [h[-1]["train_acc"] for h in hist]),
                            ("loss", [min(e["test_loss"] for e in h) for h in hist]),
                            ("minutes", [sum(e["seconds"] for e in h) / 60 for h in hist])):
            row[f"{key}_mean"], row[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
        rows.append(row)
    return rows


def format_histories(records):
    """Each run's epochs together, run by run (runs trained side by side interleave their log lines): its label and
    seed, then a line per epoch."""
    lines = []
    for recs in records.values():
        for r in recs:
            lines.append(f"{label(r)}, seed {r['config']['seed']}:")
            lines.append(f"  {'epoch':>5} {'train loss':>10} {'train acc %':>11} {'test loss':>9} {'test acc %':>10}")
            lines += [f"  {e['epoch']:>5} {e['train_loss']:>10.4f} {e['train_acc']:>11.2f} {e['test_loss']:>9.4f} "
                      f"{e['test_acc']:>10.2f}" for e in r["history"]]
    return "\n".join(lines)


def format_summary(records):
    """A fixed-width table of summarize(records), for the terminal."""
    lines = [f"{'run':<16} {'params':>6} {'seeds':>5} {'best test acc %':>16} {'final test acc %':>17} "
             f"{'min/run':>7}"]
    for r in summarize(records):
        # one seed has no spread to show: the value alone, as report.py's tables
        spread = lambda key: f" ± {r[key + '_std']:<4.2f}" if len(r["seeds"]) > 1 else " " * 7
        lines.append(f"{r['label']:<16} {r['params']:>6} {len(r['seeds']):>5} "
                     f"{r['best_mean']:>9.2f}{spread('best')} {r['final_mean']:>10.2f}{spread('final')} "
                     f"{r['minutes_mean']:>7.1f}")
    return "\n".join(lines)
