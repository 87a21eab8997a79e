"""The notebook's findings: its own runs in plain sentences, each beside the committed ten seeds of the same model
(results/*.json), written from the records rather than typed, so that they say what this notebook's runs did."""
import os

from mnist_norms.recipe import Recipe, label, settings_folder
from mnist_norms.records import ROOT, load_records
from studies import stats

RESULTS = os.path.join(ROOT, "results")  # the committed runs: seeds 0 to 9 of each model with the default settings


def run_sentence(record):
    """What one run did: its final and best test accuracy, the first epoch at stats.TARGET, whether it stayed there
    from stats.STEADY on, and its training figures against its test figures."""
    h = record["history"]
    last, best = h[-1], max(h, key=lambda e: e["test_acc"])
    first, steady = stats.first_epoch(h), stats.steady_from(h)
    epochs = f"{len(h)} epoch{'s' if len(h) != 1 else ''}"
    text = (f"{label(record)}, seed {record['config']['seed']} ({epochs}): final test accuracy "
            f"{last['test_acc']:.2f}%, best {best['test_acc']:.2f}% (epoch {best['epoch']}). ")
    if first is None:
        text += f"It never reached {stats.TARGET}%. "
    else:
        text += f"It first reached {stats.TARGET}% in epoch {first}"
        if len(h) < stats.STEADY:
            text += f"; it trained fewer than {stats.STEADY} epochs, so steadiness from epoch {stats.STEADY} does " \
                    "not apply. "
        elif steady is not None and steady <= stats.STEADY:
            text += f" and stayed at or above it in every epoch from epoch {steady} on, so it is steady from epoch " \
                    f"{stats.STEADY} (the README's measure of steady in the last epochs). "
        else:
            dips = [e["epoch"] for e in h[stats.STEADY - 1:] if e["test_acc"] < stats.TARGET]
            text += f", but was below it from epoch {stats.STEADY} on in epoch{'s' if len(dips) > 1 else ''} " \
                    f"{', '.join(map(str, dips))}. "
    gap = round(last["test_acc"], 2) - round(last["train_acc"], 2)  # the difference of the figures as shown
    return text + (f"Last epoch: training accuracy {last['train_acc']:.2f}% against test {last['test_acc']:.2f}% "
                   f"({'+' if gap >= 0 else '−'}{abs(gap):.2f} points), training loss {last['train_loss']:.4f} "
                   f"against test {last['test_loss']:.4f}.")


def context_sentence(record, committed):
    """The committed seeds of the run's model: their final accuracy's mean and interval, range and steady count, and
    where this run's final accuracy lies among them; or why they are not comparable."""
    done = stats.finished(committed.get(record["name"], []))
    if not done:
        return f"No committed runs of {label(record)} to compare with."
    finals = [stats.final(r) for r in done.values()]
    mean, half = stats.mean_ci(finals)
    steady = sum(e is not None and e <= stats.STEADY for e in stats.steady(committed[record["name"]]).values())
    text = (f"The committed {len(done)} seeds of {label(record)}: final {mean:.2f} ± {half:.2f}% (95% interval of "
            f"the mean), from {min(finals):.2f}% to {max(finals):.2f}%; {steady} of {len(done)} at or above "
            f"{stats.TARGET}% in every epoch from {stats.STEADY} on.")
    own, theirs = Recipe.from_config(record["config"]), Recipe.from_config(next(iter(done.values()))["config"])
    if settings_folder(own) != settings_folder(theirs):
        return text + (f" They trained with the default settings, this run with {settings_folder(own)}, so they are "
                       "context, not a comparison.")
    seed = record["config"]["seed"]
    untimed = lambda r: [{k: v for k, v in e.items() if k != "seconds"} for e in r["history"]]
    if seed in done and untimed(done[seed]) == untimed(record):
        return text + f" This run equals their seed {seed} in every number of every epoch (all but the timings)."
    final = stats.final(record)
    where = "within" if min(finals) <= final <= max(finals) else "below" if final < min(finals) else "above"
    return text + f" This run's final accuracy lies {where} their range."


def findings(records, results=RESULTS):
    """The notebook's findings on its runs ({name: [record per seed]}), as a few paragraphs of plain text."""
    committed = load_records(results) if os.path.isdir(results) else {}
    runs = [r for recs in records.values() for r in recs if r["history"]]
    paragraphs = [run_sentence(r) + "\n" + context_sentence(r, committed) for r in runs]
    finals = {label(r): stats.final(r) for r in runs}
    if len(finals) > 1:
        order = sorted(finals, key=finals.get, reverse=True)
        pairs = stats.comparisons(committed, stats.NORM_PAIRS)
        paragraphs.append(
            f"Here, by final test accuracy: {', '.join(f'{n} {finals[n]:.2f}%' for n in order)}. One run per model "
            "is one draw: " + (f"over the committed seeds, paired by seed, the three differ by at most "
                               f"{max(abs(p['mean']) for _, _, p in pairs):.2f} points on average (README)."
                               if pairs else "the committed seeds are needed to rank them."))
    config = runs[0]["config"] if runs else {}
    paragraphs.append(
        "The training and test figures are measured differently: the training accuracy and loss during each epoch, "
        f"on augmented images ({config.get('augmentation', '').split(';')[0]}), by the weights as they train; the "
        "test figures after the epoch, on the unaltered test images, by "
        + ("the weights' moving average." if config.get("ema") else "the trained weights."))
    return "\n\n".join(paragraphs) if runs else "No finished epoch yet."

