"""The assignment's training and testing, as a course's utils.py holds them: the network shown, the training step with
its L1 term, one epoch, the test, the loop over epochs, Graphs 1 and 2 and the misclassified images.

What the notebook and train.py call:
    setup -> the model, SGD, the one-cycle schedule and the weight average of one run
    train -> one epoch of train_step (forward, NLL + l1 · Σ|w|, backward, step, schedule, average)
    test  -> loss and accuracy on the test set
    fit   -> the loop over a run's epochs: train, then test, each epoch
    run_experiments -> fit for every model, resumable (the machinery beneath: mnist_norms.runner)
"""
import math
import time

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import MultipleLocator
from torch.optim.swa_utils import AveragedModel
from torchinfo import summary
from tqdm.auto import tqdm

from mnist_norms import lean, machine, runner
from mnist_norms.augment import batches, to_input
from mnist_norms.figures import misclassified, plot_misclassified
from mnist_norms.layers import format_table, layer_table
from mnist_norms.recipe import label
from mnist_norms.records import RUNS
from mnist_norms.training import EVAL_BATCH, SCALE_IMAGES, autocast, ema_update
from model import AFFINE, NORMS, Net

TARGET = 99.4  # % test accuracy the course asks for
LOG_HEADER = (f"{'run':<10} {'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'test_loss':>9} {'test_acc':>8} "
              f"{'lr':>8} {'sec':>6}")


def prepare(precision="fp32"):
    """Before any tensor operation: glibc's allocator setting (faster on a CPU, the same numbers), PyTorch's CPU
    kernels pinned to AVX2 so that a run reproduces across x86-64 CPUs (bf16 keeps oneDNN's own instruction set), and
    the device, picked once: cuda, then mps, then cpu. Returns (device, the CPU kernels in use)."""
    machine.tune_malloc()
    isa = machine.pin_isa(onednn=precision == "fp32")
    return machine.pick_device(), isa


def network(norm):
    """torchinfo's summary of Net(norm), then its receptive field layer by layer (mnist_norms.layers)."""
    table = summary(Net(norm), input_size=(1, 1, 28, 28), col_names=("output_size", "num_params"), verbose=0)
    return f"{table}\n\nNet({norm!r}), layer by layer:\n{format_table(layer_table(Net(norm)))}"


def setup(recipe, train_images, device, *, images=None, lean_path=False):
    """A run's start: (model, optimizer, scheduler, averaged, generator) for `train_images` training images.
    images: the run's uint8 training images (AFFINE scales its blocks to std 1 on the first SCALE_IMAGES of them)."""
    torch.manual_seed(recipe.seed)                           # initial weights and dropout masks
    generator = torch.Generator().manual_seed(recipe.seed)  # batch order and augmentation
    model = Net(recipe.norm, groups=recipe.groups, dropout=recipe.dropout).to(device)
    if recipe.norm == AFFINE:
        if images is None:
            raise ValueError("AFFINE's start needs the run's training images (setup's images)")
        model.scale_init_(to_input(images[:SCALE_IMAGES].to(device)))
    # foreach (one operation for all tensors) is PyTorch's default on CUDA; the lean path asks for it on MPS too
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True,
                                weight_decay=recipe.weight_decay, foreach=True if lean_path else None)
    steps = math.ceil(train_images / recipe.batch_size)
    cycle = recipe.cycle_epochs or recipe.epochs
    # A cycle shorter than the run gets one step more, so that its last step lands on the cycle's end, then held.
    total = cycle * steps + (cycle < recipe.epochs)
    # The learning rate rises from lr/25 to lr over pct_start of the steps, then anneals to lr/25/final_div.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=total,
                                                    pct_start=recipe.pct_start, final_div_factor=recipe.final_div)
    # What is evaluated: an exponential moving average of the weights and BN's statistics (use_buffers)
    if not recipe.ema:
        averaged = None
    elif lean_path:
        averaged = lean.LeanAverage(model, recipe.ema, recipe.ema_warmup)
    else:
        averaged = AveragedModel(model, multi_avg_fn=ema_update(recipe.ema, recipe.ema_warmup), use_buffers=True)
    return model, optimizer, scheduler, averaged, generator


def l1_penalty(model):
    """Σ|w| over the convolution weights (every parameter with 2+ dims); γ and β are not penalized."""
    return sum(p.abs().sum() for p in model.parameters() if p.ndim > 1)


def train_step(model, optimizer, x, y, recipe, scheduler=None):
    """One step: forward, the loss (NLL + l1 · Σ|w|), backward, update, schedule. Returns (output [B, 10], NLL, the
    gradient's total norm before clipping)."""
    with autocast(recipe.precision, x.device):
        out = model(x)                    # [B, 10] log-probabilities
    loss = F.nll_loss(out.float(), y)     # what the log reports, whatever else the objective adds
    objective = loss
    if recipe.label_smoothing:
        objective = F.cross_entropy(out.float(), y, label_smoothing=recipe.label_smoothing)
    if recipe.l1:                         # the BN run's L1 penalty, 1e-5 · Σ|w|
        objective = objective + recipe.l1 * l1_penalty(model)
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip) if recipe.clip else \
        torch.nn.utils.get_total_norm(grads)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()                  # the one-cycle schedule moves every batch
    return out, loss, norm


def train(model, data, optimizer, recipe, *, generator, scheduler=None, averaged=None, progress=True):
    """One epoch over data = (uint8 images [N, 28, 28], labels [N]) on the model's device, each image augmented by
    its own random affine map. Returns (mean NLL, accuracy %, the gradient's norm at each step [steps])."""
    model.train()
    n = len(data[1])
    total_loss = torch.zeros((), device=data[1].device)
    correct = torch.zeros((), dtype=torch.long, device=data[1].device)
    seen, norms = 0, []
    bar = tqdm(total=n, unit="img", leave=False, disable=not progress, mininterval=0.5)
    for step, (x, y) in enumerate(batches(data, recipe.batch_size, generator=generator, **recipe.augmentation)):
        out, loss, norm = train_step(model, optimizer, x, y, recipe, scheduler)  # x [B, 1, 28, 28], y [B]
        norms.append(norm.detach())
        if averaged is not None:
            averaged.update_parameters(model)  # the average takes in the new weights
        total_loss += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
        bar.update(len(y))
        if progress and step % 20 == 0:  # reading a value waits for the device: only every 20 steps
            bar.set_postfix(loss=f"{total_loss.item() / seen:.4f}", acc=f"{100 * correct.item() / seen:.2f}%")
    bar.close()
    return total_loss.item() / n, 100 * correct.item() / n, torch.stack(norms)


def test(model, data, batch_size=EVAL_BATCH):
    """(mean NLL, accuracy %) of `model` in eval mode on data = (images, labels), without augmentation."""
    images, labels = data
    model.eval()
    with torch.inference_mode():  # no gradients: batch_size images at a time
        logp = torch.cat([model(to_input(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])
    loss = F.nll_loss(logp, labels, reduction="sum").item()  # logp [N, 10]
    return loss / len(labels), 100 * (logp.argmax(1) == labels).sum().item() / len(labels)


def fit(recipe, train_data, test_data, device, *, resume=None, save=None, stop_after=None, name=None,
        progress=True, log=print):
    """Train `recipe` for its epochs, testing the averaged weights after each; returns (the evaluated model, history).
    resume(state) -> the history so far, and save(state, history) after each epoch: the runner's checkpoints."""
    path = lean.lean_path(device)  # the device's path, chosen here once (mnist_norms/lean.py: a GPU's)
    names = ("model", "optimizer", "scheduler", "averaged", "generator")
    state = dict(zip(names, setup(recipe, len(train_data[1]), device, images=train_data[0], lean_path=path)))
    history = resume(state) if resume else []
    model, averaged = state["model"], state["averaged"]
    evaluated = averaged.module if averaged is not None else model
    epoch_fn = lean.train if path else train
    cycle = recipe.cycle_epochs or recipe.epochs
    for epoch in range(len(history) + 1, min(recipe.epochs, stop_after or recipe.epochs) + 1):
        start = time.perf_counter()
        lr = state["optimizer"].param_groups[0]["lr"]
        train_loss, train_acc, norms = epoch_fn(model, train_data, state["optimizer"], recipe,
                                                generator=state["generator"], averaged=averaged, progress=progress,
                                                scheduler=state["scheduler"] if epoch <= cycle else None)
        test_loss, test_acc = test(evaluated, test_data)
        history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                        "test_acc": test_acc, "lr": lr, "seconds": time.perf_counter() - start,
                        # the gradient's total norm over the epoch's steps: how close a run came to diverging
                        "grad_norm_median": norms.median().item(), "grad_norm_max": norms.max().item()})
        if save:
            save(state, history)
        log(f"{name or recipe.name:<10} {epoch:>5} {train_loss:>10.4f} {train_acc:>9.2f} {test_loss:>9.4f} "
            f"{test_acc:>8.2f} {lr:>8.2g} {history[-1]['seconds']:>6.1f}")
    return evaluated.eval(), history


def run_experiments(recipes, data, *, device, out=RUNS, jobs=None, **options):
    """fit() every recipe, each writing its results, weights and a checkpoint per epoch under OUT; finished runs are
    loaded, unfinished ones resume. On a CPU `jobs` runs train at once (None: all, up to twice the cores), each in its
    own process with one thread. Returns ({name: [record per seed]}, {name: the first seed's model})."""
    return runner.run_all(fit, recipes, data, device=device, out=out, jobs=jobs, **options)


def plot_graph(records, key):
    """Graph 1 (key "test_loss") or Graph 2 ("test_acc", with the course's 99.4% line): each run's first seed."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for recs in records.values():
        history = recs[0]["history"]
        ax.plot([e["epoch"] for e in history], [e[key] for e in history], marker="o", markersize=3,
                label=f"{label(recs[0])}: " + (f"{history[-1][key]:.4f}" if key == "test_loss" else
                                                f"{history[-1][key]:.2f}%") + " at the end")
    seeds = sorted({recs[0]["config"]["seed"] for recs in records.values()})
    what = "test loss (NLL)" if key == "test_loss" else "test accuracy (%)"
    if key == "test_acc":
        ax.axhline(TARGET, color="k", linestyle="--", linewidth=1, label=f"{TARGET}%, the course's target")
        lowest = min(e[key] for recs in records.values() for e in recs[0]["history"])
        ax.set_ylim(min(98.0, lowest - 0.2), 99.8)  # from 98%, so that the last epochs' gaps show, or the lowest
    ax.set(xlabel="epoch", ylabel=what)
    ax.xaxis.set_major_locator(MultipleLocator(1))
    ax.set_title(f"{'Graph 1' if key == 'test_loss' else 'Graph 2'}: {what} per epoch, seed "
                 f"{', '.join(map(str, seeds))}\nthe averaged weights on the 10,000 test images (one seed is one draw)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right" if key == "test_loss" else "lower right")
    return fig


def figures(records, models, test_data):
    """{file name: figure}: Graph 1, Graph 2, and each model's 10 most confident mistakes (5 x 2)."""
    out = {"graph_losses": plot_graph(records, "test_loss"), "graph_accuracies": plot_graph(records, "test_acc")}
    for name, model in models.items():
        first = records[name][0]
        title = (f"{label(first)}, seed {first['config']['seed']}: test accuracy "
                 f"{first['history'][-1]['test_acc']:.2f}%\nits most confident mistakes")
        out[f"misclassified_{name.removesuffix('_bf16')}"] = plot_misclassified(misclassified(model, test_data), title)
    return out


__all__ = ["prepare", "network", "setup", "l1_penalty", "train_step", "train", "test", "fit", "run_experiments",
           "plot_graph", "figures", "LOG_HEADER", "TARGET", "NORMS"]
