"""A Net described layer by layer: each layer's output size, the jump between neighbouring outputs in input pixels,
and its receptive field, computed from the layers' kernel, stride, padding and dilation (and checked against the
shapes a forward pass gives), plus the parameters each holds."""
from dataclasses import dataclass, replace

import torch
from torch import nn

# The layers that move the receptive field; every other layer (ReLU, a norm, dropout) maps each position to itself.
SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


@dataclass(frozen=True)
class Layer:
    name: str         # the block it belongs to in the Net ("conv0", "trans1", "gap")
    kind: str         # "conv 3x3, 1 -> 10, ReLU, BatchNorm2d" or "max-pool 2x2": the layer, then what follows it
    size: int         # the output's height (= width) in positions
    channels: int     # the output's channels
    jump: int         # input pixels between neighbouring outputs (the product of the strides so far)
    receptive: int    # input pixels (per side) that one output sees
    params: int       # learnable parameters of the layer and of the norm that follows it


def pair(value):
    """A layer's kernel, stride, padding or dilation as one int: this Net's are square (a clear error otherwise)."""
    a, b = (value, value) if isinstance(value, int) else value
    if a != b:
        raise ValueError(f"expected a square kernel, stride, padding and dilation, got {value!r}")
    return a


def step(layer, size, jump, receptive):
    """(size, jump, receptive field) after `layer` given those of its input, by the usual arithmetic: an output sees
    receptive + (k_eff - 1) * jump input pixels, with k_eff = dilation * (kernel - 1) + 1, and its neighbours are
    jump * stride apart; size = floor((size + 2 * padding - k_eff) / stride) + 1."""
    kernel, padding = pair(layer.kernel_size), pair(layer.padding)
    stride = pair(layer.stride if layer.stride is not None else layer.kernel_size)
    dilation = pair(getattr(layer, "dilation", 1))
    k_eff = dilation * (kernel - 1) + 1
    return (size + 2 * padding - k_eff) // stride + 1, jump * stride, receptive + (k_eff - 1) * jump


def short_name(module):
    """A per-position layer as the table names it ("" for one that does nothing: an identity, dropout of 0)."""
    if isinstance(module, nn.GroupNorm):
        return f"GroupNorm({module.num_groups})"
    if isinstance(module, nn.Identity) or isinstance(module, nn.Dropout) and module.p == 0:
        return ""
    return f"Dropout({module.p:g})" if isinstance(module, nn.Dropout) else type(module).__name__


def describe(layer):
    kernel = pair(layer.kernel_size)
    if isinstance(layer, nn.Conv2d):
        return f"conv {kernel}x{kernel}, {layer.in_channels} -> {layer.out_channels}" + \
            (f", padding {pair(layer.padding)}" if pair(layer.padding) else "")
    return f"{'max' if isinstance(layer, nn.MaxPool2d) else 'average'}-pool {kernel}x{kernel}"


def layer_table(net, size=28):
    """[Layer] of `net`'s spatial layers in the order its forward pass calls them, for a size x size input."""
    calls = []  # (name, module, output shape) in call order
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: calls.append((name, m, tuple(o.shape))))
             for name, m in net.named_modules() if not list(m.children())]
    try:
        with torch.no_grad():
            mode = net.training
            net.eval()  # BN's running statistics are not touched, dropout draws nothing
            net(torch.zeros(1, 1, size, size))
            net.train(mode)
    finally:
        for h in hooks:
            h.remove()
    rows, jump, receptive = [], 1, 1
    for name, module, shape in calls:
        own = sum(p.numel() for p in module.parameters())
        if not isinstance(module, SPATIAL):  # a ReLU or a norm (its γ and β) joins the row of the layer before it
            if rows and short_name(module):
                rows[-1] = replace(rows[-1], kind=f"{rows[-1].kind}, {short_name(module)}",
                                   params=rows[-1].params + own)
            continue
        size, jump, receptive = step(module, size, jump, receptive)
        if shape[-2:] != (size, size):
            raise AssertionError(f"{name}: computed {size}x{size}, the forward pass gave {shape[-2:]}")
        rows.append(Layer(name.split(".")[0], describe(module), size, shape[1], jump, receptive, own))
    return rows


def format_table(rows, size=28):
    """The table as text: the input, then a line per layer."""
    width = max(len(r.kind) for r in rows)
    lines = [f"{'layer':<9} {'what':<{width}} {'output':>10} {'jump':>4} {'RF':>3} {'params':>6}",
             f"{'input':<9} {'':<{width}} {f'1x{size}x{size}':>10} {1:>4} {1:>3} {'':>6}"]
    for r in rows:
        lines.append(f"{r.name:<9} {r.kind:<{width}} {f'{r.channels}x{r.size}x{r.size}':>10} {r.jump:>4} "
                     f"{r.receptive:>3} {r.params:>6,}")
    lines.append(f"{'total':<9} {'then log_softmax over the 10 outputs':<{width}} {'':>10} {'':>4} {'':>3} "
                 f"{sum(r.params for r in rows):>6,}")
    return "\n".join(lines)
