"""How BN, LN and GN compute their statistics: a worked example on a tiny tensor, and the cube figure."""
import argparse
import os

import numpy as np
import torch
from matplotlib.figure import Figure

from mnist_norms.records import ROOT
from model import make_norm

EPS = 1e-5  # what PyTorch's BatchNorm2d and GroupNorm add to the variance

# A batch of N=2 images with C=4 channels of H x W = 2 x 2 pixels: x[n, c] is a 2 x 2 block.
EXAMPLE = np.array([
    [[[1, 3], [5, 7]], [[2, 2], [4, 4]], [[0, 4], [0, 4]], [[6, 7], [8, 9]]],  # image 0
    [[[3, 5], [7, 9]], [[1, 1], [1, 5]], [[2, 6], [2, 6]], [[0, 1], [2, 3]]],  # image 1
], dtype=np.float64)

# method -> which values share one mean and variance
METHODS = {
    "BN": "per channel, over the batch and the pixels (N, H, W)",
    "LN": "per image, over all channels and pixels (C, H, W)",
    "GN": "per image and group of channels, over the group's channels and pixels (C/G, H, W)",
}


def statistics(x, method, groups=2):
    """Mean and (biased) variance that `method` normalizes x [N, C, H, W] with, by hand in numpy.

    Returned with shapes that broadcast against x: BN [1, C, 1, 1], LN [N, 1, 1, 1], GN [N, G, 1, 1, 1]
    (GN's against x reshaped to [N, G, C/G, H, W]).
    """
    if method == "BN":
        return x.mean((0, 2, 3), keepdims=True), x.var((0, 2, 3), keepdims=True)
    if method == "LN":
        return x.mean((1, 2, 3), keepdims=True), x.var((1, 2, 3), keepdims=True)
    if method == "GN":
        g = x.reshape(x.shape[0], groups, -1, *x.shape[2:])
        return g.mean((2, 3, 4), keepdims=True), g.var((2, 3, 4), keepdims=True)
    raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")


def normalize(x, method, groups=2):
    """(x - mean) / sqrt(var + eps) with `method`'s statistics; scale 1 and shift 0."""
    mean, var = statistics(x, method, groups)
    shaped = x.reshape(x.shape[0], groups, -1, *x.shape[2:]) if method == "GN" else x
    return ((shaped - mean) / np.sqrt(var + EPS)).reshape(x.shape)


def torch_layer(method, channels, groups=2):
    """The layer model.py builds for `method` (its make_norm), in training mode, with scale 1 and shift 0."""
    return make_norm(method, channels, groups).train()


def fmt(values):
    return "[" + ", ".join(f"{v:6.3f}" for v in np.ravel(values)) + "]"


def worked_example(x=EXAMPLE, groups=2):
    """Statistics and normalized values of each method, checked against torch, then BN in evaluation."""
    n, c = x.shape[:2]
    lines = ["Input x, shape [N=2, C=4, H=2, W=2]; a row per image, a [..] per channel "
             "(its 2 x 2 pixels, row by row):"]
    for i in range(n):
        lines.append(f"  image {i}: " + "  ".join(str(x[i, j].astype(int).ravel().tolist()) for j in range(c)))
    for method, where in METHODS.items():
        mean, var = statistics(x, method, groups)
        y = normalize(x, method, groups)
        with torch.no_grad():
            ref = torch_layer(method, c, groups)(torch.tensor(x, dtype=torch.float32)).double().numpy()
        lines += ["", f"{method}{f' ({groups} groups)' if method == 'GN' else ''}: statistics {where}"]
        if method == "BN":
            lines += [f"  mean per channel      {fmt(mean)}", f"  variance per channel  {fmt(var)}"]
        elif method == "LN":
            lines += [f"  mean per image        {fmt(mean)}", f"  variance per image    {fmt(var)}"]
        else:
            lines += [f"  mean per image, group     {fmt(mean)}  (image 0: g0 g1, image 1: g0 g1)",
                      f"  variance per image, group {fmt(var)}"]
        for i in range(n):
            lines.append(f"  normalized image {i}: " + " ".join(fmt(y[i, j]) for j in range(c)))
        lines.append(f"  largest difference from torch's layer: {np.abs(y - ref).max():.1e}")
    lines += ["", *bn_evaluation(x)]
    return "\n".join(lines)


def bn_evaluation(x, momentum=0.1):
    """What BN does at evaluation after training on x once: it uses running averages, not x's statistics."""
    mean, var = statistics(x, "BN")
    count = x.shape[0] * x.shape[2] * x.shape[3]
    running_mean = (1 - momentum) * 0 + momentum * mean          # they start at mean 0 ...
    running_var = (1 - momentum) * 1 + momentum * var * count / (count - 1)  # ... and variance 1 (unbiased)
    y = (x - running_mean) / np.sqrt(running_var + EPS)
    layer = torch_layer("BN", x.shape[1])
    with torch.no_grad():
        layer(torch.tensor(x, dtype=torch.float32))  # one training step updates the running averages
        ref = layer.eval()(torch.tensor(x, dtype=torch.float32)).double().numpy()
    diff = max(np.abs(running_mean.ravel() - layer.running_mean.numpy()).max(),
               np.abs(running_var.ravel() - layer.running_var.numpy()).max(), np.abs(y - ref).max())
    return [f"BN in evaluation, after one training step on x (momentum {momentum}): "
            "it normalizes with running averages",
            f"  running mean = 0.9 * 0 + 0.1 * batch mean            {fmt(running_mean)}",
            f"  running variance = 0.9 * 1 + 0.1 * unbiased variance {fmt(running_var)}",
            "  the same x in eval mode, image 0: " + " ".join(fmt(y[0, j]) for j in range(x.shape[1])),
            f"  largest difference from torch's layer and its running buffers: {diff:.1e}"]


def cube(ax, highlight, title, shape=(6, 6, 4)):
    """One of Wu & He's cubes: axes N, C and H,W flattened; `highlight` [N, C, HW] marks one set of
    values that share a mean and variance."""
    # Two calls: voxels() draws no face between two filled cells, so the set and the rest are drawn
    # apart, the rest nearly transparent so that a set inside the cube stays visible.
    ax.voxels(highlight, facecolors=(0.12, 0.47, 0.71, 0.9), edgecolors=(0.1, 0.2, 0.4, 0.6), linewidth=0.4)
    ax.voxels(~highlight, facecolors=(0.8, 0.8, 0.8, 0.06), edgecolors=(0.35, 0.35, 0.35, 0.3), linewidth=0.4)
    ax.set_xlabel("N (images)", labelpad=-8)
    ax.set_ylabel("C (channels)", labelpad=-8)
    ax.set_zlabel("H, W (pixels)", labelpad=-10)
    ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([])
    ax.set_box_aspect(shape, zoom=0.85)
    ax.view_init(elev=22, azim=-50)
    ax.set_title(title, fontsize=11)


def figure(groups=2, shape=(6, 6, 4)):
    """static/normalizations.png: which values share one mean and variance in BN, LN and GN."""
    n, c, hw = shape
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    image, channel = np.arange(n)[:, None, None], np.arange(c)[None, :, None]
    sets = {  # [N, C, HW] masks, broadcast over the dimensions a set spans
        "Batch Norm: one channel,\nall images and pixels": channel == 2,
        "Layer Norm: one image,\nall channels and pixels": image == 2,
        f"Group Norm: one image, one group\nof C/{groups} channels, all pixels":
            (image == 2) & (channel // (c // groups) == 1),
    }
    for i, (title, highlight) in enumerate(sets.items()):
        cube(fig.add_subplot(1, 3, i + 1, projection="3d"), np.broadcast_to(highlight, shape).copy(), title, shape)
    fig.suptitle("The blue values are normalized together, by their own mean and variance", fontsize=12)
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--figure", default=os.path.join(ROOT, "static", "normalizations.png"),
                   help="where the cube figure is written")
    args = p.parse_args(argv)
    print(worked_example())
    os.makedirs(os.path.dirname(args.figure), exist_ok=True)
    figure().savefig(args.figure, dpi=110)
    print(f"\nwrote {args.figure}")


if __name__ == "__main__":
    main()
