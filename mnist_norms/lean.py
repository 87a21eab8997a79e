"""A GPU's path: the same training as utils.train, in fewer operations a step, since on a GPU each operation is a
kernel launch of a few microseconds of work. utils.fit chooses it once, from the device (lean_path); a CPU takes
utils.train, whose runs reproduce bit for bit on x86-64 CPUs (tools.fingerprint).

What differs (benchmarks/launches.py counts both): the weight average with its count on the host (LeanAverage), L1's
gradient added in one foreach operation instead of differentiated through autograd, the epoch's augmentation
matrices built at once and sampled with F.affine_grid, and the metrics gathered once an epoch. tests/test_lean.py
checks it against the CPU's path."""
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from mnist_norms.augment import affine_theta, draw, standardize, to_unit
from mnist_norms.training import autocast


def lean_path(device) -> bool:
    """Whether a run on `device` takes this path: on every device but a CPU."""
    return device.type != "cpu"


class LeanAverage(AveragedModel):
    """ema_update's warmed-up average with its count on the host, for the lean path. AveragedModel.update_parameters
    tests its count twice a step in Python (bool(n_averaged == 0), n_averaged > 0): where the count is on the GPU, as
    when built with device= (as here) or moved with the model, each test waits for the GPU; built without device=,
    the count stays on the host and each step copies it to the GPU once per group of tensors of one device and dtype,
    each copy a wait. It also loops over the tensors in Python. Here the count is a Python int and a step is one
    foreach lerp of the floating-point tensors (and a copy of the integer ones, BN's num_batches_tracked); its
    state_dict is AveragedModel's."""

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


def batches(data, batch_size, *, generator=None, **augmentation):
    """augment.batches, with the epoch's maps turned into matrices at once and each batch sampled with F.affine_grid:
    8 operations a batch instead of 50. On a CPU affine_grid would be Intel MKL's, whose last digits follow the CPU's
    vendor, so the CPU's path builds each batch's grid elementwise (augment.affine)."""
    images, labels = data
    order, params = draw(images, generator, **augmentation)
    theta = affine_theta(**params, shape=images.shape) if params else None  # [N, 2, 3]
    for start in range(0, len(labels), batch_size):
        idx = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
        x = to_unit(images[idx])  # [B, 1, 28, 28]
        if theta is not None:
            grid = F.affine_grid(theta[start:start + batch_size], list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        yield standardize(x), labels[idx]


def train_step(model, optimizer, x, y, recipe, scheduler=None):
    """utils.train_step, with L1's gradient, l1 * sign(w), added to the gradients in one foreach operation instead of
    differentiating a sum of 8 penalties through autograd (about 50 operations)."""
    with autocast(recipe.precision, x.device):
        out = model(x)  # [B, 10] log-probabilities
    loss = F.nll_loss(out.float(), y)
    objective = loss
    if recipe.label_smoothing:
        objective = F.cross_entropy(out.float(), y, label_smoothing=recipe.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    if recipe.l1:  # the gradient of l1 * Σ|w| is l1 * sign(w) (0 at 0, as abs's backward gives)
        weights = [p for p in model.parameters() if p.ndim > 1]
        torch._foreach_add_([w.grad for w in weights], torch._foreach_sign(weights), alpha=recipe.l1)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip) if recipe.clip else \
        torch.nn.utils.get_total_norm(grads)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return out, loss, norm


def train(model, data, optimizer, recipe, *, generator, scheduler=None, averaged=None, progress=True):
    """utils.train on this path: each step's loss and predictions kept on the device and summed once, at the end of
    the epoch. Returns (loss, accuracy %, the gradient's total norm at each step [steps])."""
    model.train()
    n = len(data[1])
    norms, kept = [], []
    bar = tqdm(total=n, unit="img", leave=False, disable=not progress, mininterval=0.5)
    for step, (x, y) in enumerate(batches(data, recipe.batch_size, generator=generator, **recipe.augmentation)):
        out, loss, norm = train_step(model, optimizer, x, y, recipe, scheduler)
        norms.append(norm.detach())
        if averaged is not None:
            averaged.update_parameters(model)
        kept.append((loss.detach(), out.detach().argmax(1), y))
        bar.update(len(y))
        if progress and step % 50 == 0:  # the last step's loss, every 50 steps
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    losses, predicted, labels = zip(*kept)
    sizes = torch.tensor([len(t) for t in labels], device=losses[0].device)
    total_loss = (torch.stack(losses) * sizes).sum()
    correct = (torch.cat(predicted) == torch.cat(labels)).sum()
    return total_loss.item() / n, 100 * correct.item() / n, torch.stack(norms)
