"""utils.py's training and mnist_norms/training.py: the training step with its L1 term, an epoch, bf16 autocast, the
warmed-up average, weight decay."""

import numpy as np
import pytest
import torch
from torch import nn

from conftest import synthetic
from mnist_norms import training
from mnist_norms.recipe import Recipe
from mnist_norms.training import evaluate
from model import Net
from utils import l1_penalty, setup, train_step
from utils import train as train_epoch

ROTATE = dict(translate=0.0, scale=0.0, shear=0.0)  # rotation only: the augmentation these tests were written with


def test_l1_penalty_is_the_sum_of_absolute_conv_weights():
    model = Net("BN")
    by_hand = sum(m.weight.abs().sum().item() for m in model.modules() if isinstance(m, nn.Conv2d))
    assert l1_penalty(model).item() == pytest.approx(by_hand, rel=1e-6)


def one_step(l1):
    torch.manual_seed(0)
    model = Net("BN", dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    train_epoch(model, synthetic(32), opt, Recipe(batch_size=32, l1=l1, **ROTATE),
                generator=torch.Generator().manual_seed(0), progress=False)
    return model


def test_l1_adds_lr_times_l1_times_sign_to_conv_weights_only():
    # One plain SGD step (lr 1) on the same batch: the L1 term's gradient is l1 * sign(w).
    torch.manual_seed(0)
    start = Net("BN", dropout=0.0).state_dict()
    plain, with_l1 = one_step(0.0), one_step(0.01)
    for (name, p0), p1 in zip(plain.named_parameters(), with_l1.parameters()):
        expected = -0.01 * torch.sign(start[name]) if p0.ndim > 1 else torch.zeros_like(p0)
        assert torch.allclose(p1 - p0, expected, atol=1e-6), name


def test_a_few_epochs_on_a_small_subset_lower_the_loss():
    data, test = synthetic(512), synthetic(256, seed=1)
    torch.manual_seed(0)
    model = Net("GN")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    before, _ = evaluate(model, test)
    g = torch.Generator().manual_seed(0)
    losses = [train_epoch(model, data, opt, Recipe(**ROTATE), generator=g, progress=False)[0] for _ in range(4)]
    after, acc = evaluate(model, test)
    assert losses[-1] < losses[0] and after < before
    assert acc > 30  # chance is 10%


@pytest.mark.parametrize("norm", ["BN", "LN", "GN"])
def test_bf16_training_runs_the_convolutions_in_bfloat16_and_keeps_fp32_weights(norm):
    data = synthetic(256)
    torch.manual_seed(0)
    model = Net(norm)
    seen = []
    model.conv1[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    losses = [train_epoch(model, data, opt, Recipe(precision="bf16", **ROTATE), generator=g, progress=False)[0]
              for _ in range(3)]
    assert seen[0] == torch.bfloat16 and all(p.dtype == torch.float32 for p in model.parameters())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_each_step_records_the_gradients_norm_and_clipping_bounds_it():
    # The returned norm is the total norm of the gradient of NLL + L1, before clipping; with clip, the gradient the
    # optimizer sees has at most that norm, and without it the norm is only read.
    def step(clip):
        torch.manual_seed(0)
        model = Net("LN")
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay, the gradients are kept
        x = torch.randn(16, 1, 28, 28)
        y = torch.arange(16) % 10
        _, _, norm = train_step(model, opt, x, y, Recipe(l1=1e-3, clip=clip))
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        return norm, grads
    norm, grads = step(0.0)
    assert torch.allclose(norm, grads.norm(), rtol=1e-5) and norm > 0.1
    clipped_norm, clipped = step(0.1)
    assert torch.equal(clipped_norm, norm)  # the norm before clipping
    assert clipped.norm().item() == pytest.approx(0.1, rel=1e-4)
    assert torch.allclose(clipped, grads * (0.1 / norm), rtol=1e-4, atol=1e-9)
    # an epoch returns one norm per step
    torch.manual_seed(0)
    model = Net("BN")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    *_, norms = train_epoch(model, synthetic(100), opt, Recipe(batch_size=32, **ROTATE),
                            generator=torch.Generator().manual_seed(0), progress=False)
    assert norms.shape == (4,) and (norms > 0).all()


def test_label_smoothing_trains_on_the_smoothed_cross_entropy_and_reports_the_nll():
    # By hand: with log-probabilities p over K classes and smoothing e, the loss is
    # -(1 - e) * p[label] - (e / K) * sum_k p[k]; its gradient must be what the step applied (lr 1, plain SGD).
    def step(smoothing):
        torch.manual_seed(0)
        model = Net("GN")
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        x, y = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
        out, loss, _ = train_step(model, opt, x, y, Recipe(label_smoothing=smoothing))
        return model, x, y, out, loss
    model, x, y, out, loss = step(0.2)
    assert loss.item() == pytest.approx(-out.gather(1, y[:, None]).mean().item(), rel=1e-6)  # the NLL, as before
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logp = model(x)
    by_hand = (-(1 - 0.2) * logp.gather(1, y[:, None]).squeeze(1) - 0.2 / 10 * logp.sum(1)).mean()
    by_hand.backward()
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-7)
    # 0: the NLL's gradient, bit for bit the step of runs from before the setting
    model0, x, y, *_ = step(0.0)
    model0_grads = [p.grad.clone() for p in model0.parameters()]
    model0.zero_grad()
    torch.nn.functional.nll_loss(model0(x), y).backward()
    assert all(torch.equal(g, p.grad) for g, p in zip(model0_grads, model0.parameters()))


def test_the_warmed_up_average_follows_its_formula_and_without_warm_up_is_pytorchs_own():
    # An independent reference, update by update: a_1 = w_1 (AveragedModel copies the first), then
    # a_(n+1) = d_n a_n + (1 - d_n) w_(n+1) with d_n = min(decay, (1 + n) / (warmup + n)); BN's num_batches_tracked,
    # an integer, is copied.
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    averaged = AveragedModel(model, multi_avg_fn=training.ema_update(0.99, 10.0), use_buffers=True)
    plain = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.99), use_buffers=True)
    ours = AveragedModel(model, multi_avg_fn=training.ema_update(0.99, 0.0), use_buffers=True)
    expected = None
    for n in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(4, 3))  # a training-mode forward: BN's running statistics and its count move
        weights = {k: v.clone().double() for k, v in model.state_dict().items()}
        for a in (averaged, plain, ours):
            a.update_parameters(model)
        if expected is None:
            expected = weights
        else:
            d = min(0.99, (1 + n) / (10.0 + n))
            expected = {k: d * expected[k] + (1 - d) * weights[k] for k in weights}
    state = averaged.module.state_dict()
    for k, v in expected.items():
        if k == "1.num_batches_tracked":
            assert state[k].item() == 30
        else:
            assert torch.allclose(state[k].double(), v, rtol=1e-5, atol=1e-6), k
    # After 30 updates the warmed-up average has forgotten the first weights far more than decay^29 would
    assert (state["0.weight"] - model.state_dict()["0.weight"]).abs().max() < \
        (plain.module.state_dict()["0.weight"] - model.state_dict()["0.weight"]).abs().max()
    # warmup 0: PyTorch's get_ema_multi_avg_fn itself, so the runs before the warm-up re-run as they were made
    assert all(torch.equal(a, b) for a, b in zip(plain.module.state_dict().values(), ours.module.state_dict().values()))


def test_weight_decay_reaches_sgd_and_shrinks_every_parameter_by_lr_times_it():
    # With zero gradient (lr > 0, loss ignored) SGD's weight decay alone moves a parameter: p -= lr * wd * p, then
    # Nesterov momentum adds momentum * that. One step from setup's optimizer, checked against the formula.
    recipe = Recipe("LN", weight_decay=1e-3)
    model, optimizer, *_ = setup(recipe, 640, torch.device("cpu"))
    assert all(g["weight_decay"] == 1e-3 for g in optimizer.param_groups)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    g = optimizer.param_groups[0]
    for b, p in zip(before, model.parameters()):
        d = 1e-3 * b  # the decayed gradient; the first step's momentum buffer is d, Nesterov's step d + momentum * d
        assert torch.allclose(p, b - g["lr"] * (d + g["momentum"] * d), rtol=1e-6, atol=1e-9)
    assert setup(Recipe("LN"), 640, torch.device("cpu"))[1].param_groups[0]["weight_decay"] == 0
