"""Net: shapes, the per-layer parameter table, argument errors, and each norm against hand formulas."""
import numpy as np
import pytest
import torch
from torch import nn

from model import AFFINE, CONTROL, NORMS, Affine, Net, make_norm

# block -> (output shape for a 28x28 input, parameters): the table in the issue.


TABLE = {
    "conv0": ((10, 26, 26), 90 + 20),
    "conv1": ((20, 24, 24), 1800 + 40),
    "trans1": ((10, 12, 12), 200),
    "conv2": ((20, 10, 10), 1800 + 40),
    "conv3": ((10, 8, 8), 1800 + 20),
    "conv4": ((10, 6, 6), 900 + 20),
    "conv5": ((10, 6, 6), 900 + 20),
    "gap": ((10, 1, 1), 0),
    "conv6": ((10, 1, 1), 100),
}


@pytest.mark.parametrize("norm", NORMS + (AFFINE,))
def test_layer_table_and_total(norm):
    model = Net(norm)
    shapes = {}
    for name in TABLE:
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape[1:]))
    out = model(torch.randn(3, 1, 28, 28))
    for name, (shape, params) in TABLE.items():
        assert tuple(shapes[name]) == shape, name
        assert sum(p.numel() for p in getattr(model, name).parameters()) == params, name
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 7750
    assert out.shape == (3, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)  # log-probabilities
    assert not any(isinstance(m, nn.Linear) for m in model.modules())


@pytest.mark.parametrize("norm", NORMS)
def test_torchinfo_summary_counts_7750(norm):
    torchinfo = pytest.importorskip("torchinfo")
    stats = torchinfo.summary(Net(norm), input_size=(1, 1, 28, 28), verbose=0)
    assert stats.trainable_params == 7750


def test_the_control_is_the_same_network_with_every_norm_the_identity():
    # 7,590 parameters: the 160 of the norms' γ and β gone, every convolution as in the normalized networks
    torch.manual_seed(0)
    bn = Net("BN")
    torch.manual_seed(0)
    none = Net("none")
    assert none.norm == CONTROL and sum(p.numel() for p in none.parameters()) == 7750 - 160 == 7590
    norms = [m for m in none.modules() if isinstance(m, nn.Identity)]
    assert len(norms) == 6 and not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in none.modules())
    # the same seed draws the same convolution weights (so a paired seed starts from the same network)
    for (name, w), w_bn in zip(((n, p) for n, p in none.named_parameters()),
                               (p for n, p in bn.named_parameters() if p.ndim > 1)):
        assert torch.equal(w, w_bn), name
    # the identity: each block's output is its ReLU's, and the log-probabilities sum to one
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(none.conv0(x), torch.relu(none.conv0[0](x)))
    assert torch.allclose(none.eval()(x).exp().sum(1), torch.ones(4), atol=1e-5)
    for norm in NORMS:
        assert sum(p.numel() for p in Net(norm).parameters()) == 7750


def block_scales(model, x):
    """{block: the standard deviation of its output on x}, in train mode (BN by its batch's statistics)."""
    out = {}
    hooks = [layer.register_forward_hook(lambda m, i, o, name=name: out.__setitem__(name, o.std().item()))
             for name, layer in model.blocks() if name != "gap"]
    with torch.no_grad():
        model.train()(x)
    for h in hooks:
        h.remove()
    return out


def test_the_second_control_lacks_only_the_statistics():
    # 7,750 parameters as the norms, the same layers in the same places; each norm a per-channel γ·x + β that is the
    # identity at the start; the convolutions the same seed's directions as BN's, each scaled by one factor
    torch.manual_seed(0)
    bn = Net("BN")
    torch.manual_seed(0)
    affine = Net("affine")
    assert affine.norm == AFFINE and sum(p.numel() for p in affine.parameters()) == 7750
    assert [n for n, _ in affine.named_parameters()] == [n for n, _ in bn.named_parameters()]
    layers = [m for m in affine.modules() if isinstance(m, Affine)]
    assert len(layers) == 6 and not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in affine.modules())
    for m in layers:
        x = torch.randn(4, m.weight.numel(), 5, 5)
        assert torch.equal(m(x), x)
    x = torch.randn(4, 10, 5, 5)
    with torch.no_grad():
        layers[0].weight.copy_(torch.arange(10.0))
        layers[0].bias.fill_(0.5)
    assert torch.allclose(layers[0](x), x * torch.arange(10.0)[:, None, None] + 0.5)
    # scale_init_ changes each convolution by one positive factor and leaves γ and β
    torch.manual_seed(0)
    affine = Net("affine").scale_init_(torch.randn(64, 1, 28, 28))
    for (name, w), w_bn in zip(affine.named_parameters(), bn.parameters()):
        if w.ndim > 1:
            ratio = w / w_bn
            assert ratio.min() > 0 and torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-4), name
        else:
            assert torch.equal(w, torch.ones_like(w) if name.endswith("weight") else torch.zeros_like(w)), name
    with pytest.raises(ValueError, match="AFFINE's start"):
        Net("BN").scale_init_(torch.randn(2, 1, 28, 28))


@pytest.mark.parametrize("seed", range(5))
def test_the_scaled_init_starts_every_block_near_scale_1_where_the_default_init_shrinks_it(seed):
    # Scaled on one synthetic batch, measured on another (images like MNIST: a dark background, a few bright strokes)
    def images(n, generator):
        x = (torch.rand(n, 1, 28, 28, generator=generator) > 0.8).float() * torch.rand(n, 1, 28, 28,
                                                                                        generator=generator)
        return (x - 0.1307) / 0.3081
    g = torch.Generator().manual_seed(100 + seed)
    fit, held_out = images(256, g), images(256, g)
    torch.manual_seed(seed)
    scaled = block_scales(Net("affine").scale_init_(fit), held_out)
    assert all(0.5 < v < 2 for v in scaled.values()), scaled
    torch.manual_seed(seed)
    default = block_scales(Net("none"), held_out)
    assert default["conv5"] < default["conv0"] / 10, default  # what the first control starts from


def test_norm_choice_is_case_insensitive_and_builds_the_right_layers():
    assert Net("bn").norm == "BN"
    assert isinstance(Net("Bn").conv0[2], nn.BatchNorm2d)
    assert isinstance(Net("ln").conv1[2], nn.GroupNorm) and Net("ln").conv1[2].num_groups == 1
    assert Net("gn", groups=5).conv1[2].num_groups == 5


@pytest.mark.parametrize("bad", ["XN", "", "batch", None, 1])
def test_bad_norm_names_the_accepted_values(bad):
    with pytest.raises(ValueError, match="BN, LN, GN, NONE"):
        Net(bad)


@pytest.mark.parametrize("bad", [3, 4, 20, 0, -2, 2.0, True, "2"])
def test_bad_groups_says_they_must_divide_10_and_20(bad):
    with pytest.raises(ValueError, match=r"divide both 10 and 20.*\(1, 2, 5, 10\)"):
        Net("GN", groups=bad)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2, "0.1"])
def test_bad_dropout(bad):
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\)"):
        Net("BN", dropout=bad)


# The references below are written from the definitions with numpy, independent of torch's layers.
def reference(x, axes_of, eps=1e-5):
    x = x.astype(np.float64)
    mean = x.mean(axis=axes_of, keepdims=True)
    var = x.var(axis=axes_of, keepdims=True)  # biased, as every norm uses for normalizing
    return (x - mean) / np.sqrt(var + eps)


def grouped(x, groups):
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w)


@pytest.mark.parametrize("norm,groups", [("BN", 2), ("LN", 2), ("GN", 2), ("GN", 5)])
def test_norm_layers_match_hand_formulas(norm, groups):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(4, 10, 5, 5)).astype(np.float32)
    layer = make_norm(norm, 10, groups).train()
    with torch.no_grad():  # non-trivial scale and shift, per channel
        layer.weight.copy_(torch.linspace(0.5, 2.0, 10))
        layer.bias.copy_(torch.linspace(-1.0, 1.0, 10))
    got = layer(torch.from_numpy(x)).detach().numpy()
    if norm == "BN":
        z = reference(x, (0, 2, 3))  # per channel, over the batch and the image
    elif norm == "LN":
        z = reference(x, (1, 2, 3))  # per sample, over all channels and the image
    else:
        z = reference(grouped(x, groups), (2, 3, 4)).reshape(x.shape)  # per sample and group
    expected = z * np.linspace(0.5, 2.0, 10).reshape(1, 10, 1, 1) + np.linspace(-1, 1, 10).reshape(1, 10, 1, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert sum(p.numel() for p in layer.parameters()) == 20  # 2 * C for every norm


def test_bn_eval_uses_running_statistics_and_ln_gn_do_not():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(5.0, 2.0, size=(8, 10, 4, 4)).astype(np.float32))
    bn = make_norm("BN", 10, 2).train()
    bn(x)  # one update: running = 0.9 * initial + 0.1 * batch statistic
    mean = x.double().mean((0, 2, 3))
    var_unbiased = x.double().var((0, 2, 3), unbiased=True)  # running_var stores the unbiased estimate
    np.testing.assert_allclose(bn.running_mean, 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * var_unbiased, rtol=1e-5)
    bn.eval()
    expected = (x.double() - bn.running_mean.double().view(1, -1, 1, 1)) / torch.sqrt(
        bn.running_var.double().view(1, -1, 1, 1) + 1e-5)
    np.testing.assert_allclose(bn(x).detach(), expected, rtol=1e-4, atol=1e-4)
    for norm in ("LN", "GN"):
        layer = make_norm(norm, 10, 2)
        assert torch.equal(layer.train()(x), layer.eval()(x))  # per-sample statistics: no mode difference


def test_ln_and_gn_do_not_depend_on_the_rest_of_the_batch_but_bn_does():
    x = torch.randn(6, 1, 28, 28)
    for norm in NORMS:
        model = Net(norm, dropout=0.0).train()
        alone = model(x[:1])
        together = model(x)[:1]
        same = torch.allclose(alone, together, atol=1e-5)
        assert same == (norm != "BN"), norm


@pytest.mark.parametrize("groups", [1, 2, 5, 10])
def test_gn_right_before_the_global_pool_leaves_10_minus_groups_dimensions(groups):
    # conv5's norm feeds the 6x6 average pool. GroupNorm makes each group's mean over its channels and pixels 0,
    # so the pooled values of a group's channels, once (value - beta) / gamma, sum to 0 in every image: the 10
    # pooled features span at most 10 - G dimensions. With G = 10 (InstanceNorm) they are beta for every image,
    # and the network's output does not depend on its input at all.
    torch.manual_seed(0)
    model = Net("GN", groups=groups).eval()
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):  # away from gamma = 1, beta = 0, so that nothing holds by coincidence
            nn.init.normal_(m.weight, 1.0, 0.3)
            nn.init.normal_(m.bias, 0.0, 0.3)
    pooled = {}
    model.gap.register_forward_hook(lambda m, i, o: pooled.__setitem__("x", o.flatten(1).double()))
    with torch.no_grad():
        out = model(torch.randn(64, 1, 28, 28))
    centered = pooled["x"] - pooled["x"].mean(0)
    singular = torch.linalg.svdvals(centered)  # [10], largest first
    if groups == 10:
        assert (out - out[0]).abs().max() < 1e-5
        assert centered.abs().max() < 1e-5
    else:
        assert (out - out[0]).abs().max() > 1e-2
        assert singular[10 - groups - 1] > 1e-3 * singular[0]  # 10 - G dimensions are used ...
        assert (singular[10 - groups:] < 1e-5 * singular[0]).all()  # ... and no more
