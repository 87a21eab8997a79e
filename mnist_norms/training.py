"""What training and evaluation share beneath utils.py: the warmed-up weight average's update, the forward pass's
precision, and predictions and accuracy in batches (the studies' too, BN optionally with test-batch statistics)."""
import contextlib
import copy

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import get_ema_multi_avg_fn

from mnist_norms.augment import to_input

SCALE_IMAGES = 512  # AFFINE's start: its blocks are scaled to standard deviation 1 on this many training images


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


def autocast(precision, device):
    """The context the forward pass runs in: nothing for fp32; for bf16 (Recipe.precision), autocast to bfloat16
    (convolutions in bfloat16; weights, gradients, the optimizer and the norms' statistics stay fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


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
