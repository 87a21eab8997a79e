"""Training and evaluation: a run's state before its first step, one step (NLL + L1), one epoch over on-device
batches, predictions and accuracy."""
import contextlib
import copy
import math

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from mnist_norms.augment import batches, to_input
from model import AFFINE, Net

SCALE_IMAGES = 512  # AFFINE's start: its blocks are scaled to standard deviation 1 on this many training images


def lean_path(device) -> bool:
    """Whether a run on `device` takes the lean path, with fewer operations a step (a GPU's, where each operation is
    a kernel launch of a few microseconds of work), rather than the committed runs' (the CPU's, bit-reproducible on
    x86-64 CPUs: tools.fingerprint). The lean path: the weight average with its count on the host (LeanAverage),
    L1's gradient added in one foreach operation, SGD's foreach update, the epoch's augmentation matrices at once,
    the metrics gathered once an epoch (benchmarks/launches.py counts both)."""
    return device.type != "cpu"


def initial_state(recipe, train_images, device, *, images=None, lean=None):
    """A run's state before its first step, for `train_images` training images: (model, optimizer, scheduler,
    averaged, generator). The recipe's Net (seeded; AFFINE's then scaled on the first SCALE_IMAGES of `images`, the
    run's uint8 training images, unaugmented: Net.scale_init_), SGD with Nesterov momentum, the one-cycle schedule
    (stepped every batch), the moving average of the weights (None without ema), and the generator of the batch order
    and the augmentation. lean: the lean path's optimizer and average (None: lean_path(device))."""
    lean = lean_path(device) if lean is None else lean
    torch.manual_seed(recipe.seed)  # initial weights and dropout masks
    generator = torch.Generator().manual_seed(recipe.seed)  # batch order and rotation angles
    model = Net(recipe.norm, groups=recipe.groups, dropout=recipe.dropout).to(device)
    if recipe.norm == AFFINE:
        if images is None:
            raise ValueError("AFFINE's start needs the run's training images (initial_state's images)")
        model.scale_init_(to_input(images[:SCALE_IMAGES].to(device)))
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True,
                                weight_decay=recipe.weight_decay, foreach=True if lean else None)
    steps = math.ceil(train_images / recipe.batch_size)
    cycle = recipe.cycle_epochs or recipe.epochs
    # A cycle shorter than the run gets one step more than it takes, so that its last step lands on the cycle's end
    # (lr / 25 / final_div), the rate then held; OneCycleLR's own count would end one step past it.
    total = cycle * steps + (cycle < recipe.epochs)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=total,
                                                    pct_start=recipe.pct_start, final_div_factor=recipe.final_div)
    # PyTorch's own averaging; use_buffers: BN's running statistics are averaged too, so they match the weights
    if not recipe.ema:
        averaged = None
    elif lean:
        averaged = LeanAverage(model, recipe.ema, recipe.ema_warmup)
    else:
        averaged = AveragedModel(model, multi_avg_fn=ema_update(recipe.ema, recipe.ema_warmup), use_buffers=True)
    return model, optimizer, scheduler, averaged, generator


def ema_update(decay, warmup=0.0):
    """AveragedModel's multi_avg_fn for an exponential moving average of `decay` per update; with warmup > 0 the decay
    at the n-th update after the first (which copies the weights) is min(decay, (1 + n) / (warmup + n)), so the
    average soon forgets the random initialization instead of keeping decay^n of it (0.999^938 = 39% after an epoch
    of 938 steps). warmup 0 is PyTorch's get_ema_multi_avg_fn(decay), which the runs before the warm-up used."""
    if not warmup:
        return get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(averaged, current, n):
        if not torch.is_floating_point(averaged[0]):  # integer buffers, BN's num_batches_tracked: a count, copied
            torch._foreach_copy_(averaged, current)
            return
        # n: AveragedModel's count of updates so far, a tensor on the device, so the decay is computed there too
        # (no wait for the device in every step)
        d = torch.clamp((1 + n) / (warmup + n), max=decay).to(averaged[0].dtype)
        torch._foreach_mul_(averaged, d)
        torch._foreach_add_(averaged, torch._foreach_mul(current, 1 - d))
    return update


class LeanAverage(AveragedModel):
    """ema_update's warmed-up average with its count on the host, for the lean path: AveragedModel reads its count
    from the device twice a step (n_averaged == 0, > 0) and copies it to the device for every group of tensors, each a
    wait for a GPU, and loops over the tensors in Python. Here a step is one foreach lerp of the floating-point
    tensors (and a copy of the integer ones, BN's num_batches_tracked); its state_dict is AveragedModel's."""

    def __init__(self, model, decay, warmup=0.0):
        super().__init__(model, device=next(model.parameters()).device, use_buffers=True)
        self.decay, self.warmup, self.count = decay, warmup, 0
        tensors = list(self.module.parameters()) + list(self.module.buffers())
        self.floats = [i for i, t in enumerate(tensors) if t.is_floating_point()]
        self.ints = [i for i, t in enumerate(tensors) if not t.is_floating_point()]

    @torch.no_grad()
    def update_parameters(self, model):
        mine = list(self.module.parameters()) + list(self.module.buffers())
        theirs = [t.detach() for t in list(model.parameters()) + list(model.buffers())]
        if self.count == 0:  # the first update copies the weights
            torch._foreach_copy_(mine, theirs)
        else:  # decay d = min(decay, (1 + n) / (warmup + n)) at update n: the average moves 1 - d toward them
            d = self.decay if not self.warmup else min(self.decay, (1 + self.count) / (self.warmup + self.count))
            torch._foreach_lerp_([mine[i] for i in self.floats], [theirs[i] for i in self.floats], 1 - d)
            if self.ints:
                torch._foreach_copy_([mine[i] for i in self.ints], [theirs[i] for i in self.ints])
        self.count += 1

    def state_dict(self, *args, **kwargs):
        self.n_averaged.fill_(self.count)
        return super().state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, *args, **kwargs):
        result = super().load_state_dict(state_dict, *args, **kwargs)
        self.count = int(self.n_averaged)  # once, at a resume
        return result


def l1_penalty(model) -> torch.Tensor:
    """Σ|w| over the convolution weights (every parameter with 2+ dims); the norms' scale and shift
    are not penalized."""
    return sum(p.abs().sum() for p in model.parameters() if p.ndim > 1)


def autocast(precision, device):
    """The context the forward pass runs in: nothing for fp32; for bf16 (Recipe.precision), autocast to bfloat16
    (convolutions in bfloat16; weights, gradients, the optimizer and the norms' statistics stay fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train_step(model, optimizer, x, y, recipe, scheduler=None, lean=False):
    """One step of `recipe` (a recipe.Recipe): forward (in recipe.precision), the loss + l1 * Σ|w|, backward, the
    gradient's total norm clipped to recipe.clip (0: not clipped), update, schedule. The loss is the NLL, or with
    label_smoothing > 0 the cross-entropy against labels smoothed by it. Returns (output [B, 10], NLL, the gradient's
    total norm before clipping). lean (lean_path): L1's gradient, l1 * sign(w), is added to the gradients in one
    foreach operation instead of differentiating a sum of 7 penalties through autograd (about 50 operations)."""
    with autocast(recipe.precision, x.device):
        out = model(x)  # [B, 10] log-probabilities
    loss = F.nll_loss(out.float(), y)  # the loss in fp32 whatever the forward pass ran in
    objective = loss
    if recipe.label_smoothing:  # cross_entropy's log_softmax leaves log-probabilities as they are (logsumexp 0)
        objective = F.cross_entropy(out.float(), y, label_smoothing=recipe.label_smoothing)
    if recipe.l1 and not lean:
        objective = objective + recipe.l1 * l1_penalty(model)
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    if recipe.l1 and lean:  # the gradient of l1 * Σ|w| is l1 * sign(w) (0 at 0, as abs's backward gives)
        weights = [p for p in model.parameters() if p.ndim > 1]
        torch._foreach_add_([w.grad for w in weights], torch._foreach_sign(weights), alpha=recipe.l1)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    # Reading the norm changes no gradient; clipping scales every gradient by clip / norm where the norm is larger.
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip) if recipe.clip else \
        torch.nn.utils.get_total_norm(grads)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return out, loss, norm


def train_epoch(model, data, optimizer, recipe, *, generator, scheduler=None, averaged=None, progress=True,
                lean=False):
    """One epoch of `recipe` over data = (images, labels) on the model's device, in batches of recipe.batch_size
    augmented as recipe says (augment.batches, drawn from `generator`). Returns (loss, accuracy %, the gradient's
    total norm at each step [steps], before clipping).

    The loss returned is the mean NLL (of the model trained, not of `averaged`), so runs with and without L1 or
    smoothing compare. `scheduler` steps after every batch, and `averaged` (a torch.optim.swa_utils.AveragedModel of
    `model`) takes in the weights after every step. lean (lean_path): the lean path's augmentation, L1 and metrics
    (each step's loss and predictions kept on the device and summed once, at the end of the epoch).
    """
    model.train()
    n = len(data[1])
    total_loss = torch.zeros((), device=data[1].device)
    correct = torch.zeros((), dtype=torch.long, device=data[1].device)
    seen, norms, kept = 0, [], []
    bar = tqdm(total=n, unit="img", leave=False, disable=not progress, mininterval=0.5)
    for step, (x, y) in enumerate(batches(data, recipe.batch_size, generator=generator, lean=lean,
                                          **recipe.augmentation)):
        out, loss, norm = train_step(model, optimizer, x, y, recipe, scheduler, lean=lean)
        norms.append(norm.detach())
        if averaged is not None:
            averaged.update_parameters(model)
        seen += len(y)
        bar.update(len(y))
        if lean:  # summed at the end of the epoch; the bar shows the last step's loss every 50 steps
            kept.append((loss.detach(), out.detach().argmax(1), y))
            if progress and step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
            continue
        # Accumulate on the device; reading a value back only every 20 steps avoids GPU syncs.
        total_loss += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        if progress and step % 20 == 0:
            bar.set_postfix(loss=f"{total_loss.item() / seen:.4f}", acc=f"{100 * correct.item() / seen:.2f}%")
    bar.close()
    if kept:
        losses, predicted, labels = zip(*kept)
        sizes = torch.tensor([len(t) for t in labels], device=losses[0].device)
        total_loss = (torch.stack(losses) * sizes).sum()
        correct = (torch.cat(predicted) == torch.cat(labels)).sum()
    return total_loss.item() / n, 100 * correct.item() / n, torch.stack(norms)


# Images per evaluation forward pass: 250 gives the weights files the same loss and accuracy, bit for bit, as the 2,000
# of the runs that made them, and re-runs their first epochs identically; benchmarks/evaluation.py times both.
EVAL_BATCH = 250


@torch.inference_mode()
def predict(model, images, batch_size=EVAL_BATCH, *, batch_stats=False) -> torch.Tensor:
    """Log-probabilities [N, 10] for uint8 images [N, 28, 28], in eval mode, `batch_size` images at a time.

    batch_stats=True: every BatchNorm normalizes by the statistics of its own batch (train mode), as in
    training, instead of its running averages; it runs on a copy, so the model's averages stay untouched.
    """
    model = model.eval()
    if batch_stats:
        model = copy.deepcopy(model)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.train()
    device = next(model.parameters()).device
    chunks = (images[i:i + batch_size].to(device) for i in range(0, len(images), batch_size))
    return torch.cat([model(to_input(chunk)) for chunk in chunks])


def evaluate(model, data, batch_size=EVAL_BATCH, *, batch_stats=False):
    """(mean NLL, accuracy %) on data = (images, labels), without augmentation. batch_stats: see predict;
    the test set is then cut in order into batches of batch_size (the last one may be smaller)."""
    images, labels = data
    logp = predict(model, images, batch_size, batch_stats=batch_stats)
    labels = labels.to(logp.device)
    if batch_stats:  # summed batch by batch
        loss = sum(F.nll_loss(p, y, reduction="sum") for p, y in zip(logp.split(batch_size), labels.split(batch_size)))
    else:
        loss = F.nll_loss(logp, labels, reduction="sum")
    return loss.item() / len(labels), 100 * (logp.argmax(1) == labels).sum().item() / len(labels)
