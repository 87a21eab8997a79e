"""The 7,750-parameter MNIST CNN with a switchable normalization: BN, LN or GN, or one of two controls: NONE (no norm,
default init: 7,590 parameters) and AFFINE (no statistics: a norm's per-channel scale and shift alone, and convolutions
scaled so that every block starts at scale 1: 7,750)."""
import torch
from torch import nn

NORMS = ("BN", "LN", "GN")  # the three normalizations compared
CONTROL = "NONE"  # no norm, default init: every norm layer the identity, no γ or β
AFFINE = "AFFINE"  # no norm, scaled init + affine: lacks only the statistics (every norm a per-channel γ·x + β)
CONTROLS = (CONTROL, AFFINE)
MODELS = NORMS + CONTROLS
# GroupNorm needs the group count to divide every normalized width; this net has 10 and 20 channels.
VALID_GROUPS = (1, 2, 5, 10)
# groups=10 is accepted for the group-count ablation, but it cannot learn: conv5's norm is then InstanceNorm,
# whose per-channel means the global average pool turns into beta for every image, so the output ignores
# the input. In general G groups there leave the pool 10 - G of its 10 dimensions (tests/test_model.py).


def make_norm(norm: str, channels: int, groups: int) -> nn.Module:
    """The one place that maps a norm name to a layer. Each norm has 2 * channels learnable parameters; the control
    NONE is the identity and has none; AFFINE keeps a norm's scale and shift without its statistics.

    BN: statistics per channel over (N, H, W); running averages are used in eval mode.
    LN: statistics per sample over (C, H, W). It is GroupNorm with a single group rather than
        nn.LayerNorm([C, H, W]): LayerNorm would learn a scale and shift per element
        (2 * C * H * W parameters) and tie the model to one input size, whereas GroupNorm(1, C)
        computes the same statistics with a per-channel scale and shift like BN and GN.
    GN: statistics per sample over each group of C / groups channels and (H, W).
    """
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "LN":
        return nn.GroupNorm(1, channels)
    if norm == "GN":
        return nn.GroupNorm(groups, channels)
    if norm == CONTROL:
        return nn.Identity()
    if norm == AFFINE:
        return Affine(channels)
    raise ValueError(f"norm must be one of {MODELS}, got {norm!r}")


class Affine(nn.Module):
    """y = weight[c] * x + bias[c]: the per-channel scale and shift of BN, LN and GN (γ = 1, β = 0 at the start)
    without the statistics they normalize by. PyTorch has no such layer (FrozenBatchNorm2d's are buffers)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, C, H, W]
        return torch.addcmul(self.bias[:, None, None], self.weight[:, None, None], x)


def conv_block(cin: int, cout: int, norm: str, groups: int, dropout: float, padding: int = 0) -> nn.Sequential:
    """3x3 convolution (no bias: the norm's shift plays that role), ReLU, norm, dropout."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=padding, bias=False),
        nn.ReLU(),
        make_norm(norm, cout, groups),
        nn.Dropout(dropout),
    )


class Net(nn.Module):
    """Conv stack -> 1x1 transition + max-pool -> conv stack -> global average pool -> 1x1 conv.

    No fully connected layer: the last 1x1 convolution maps 10 channels to the 10 class scores.
    """

    def __init__(self, norm: str = "BN", *, groups: int = 2, dropout: float = 0.0):
        super().__init__()
        if not isinstance(norm, str) or norm.upper() not in MODELS:
            raise ValueError(f"norm must be one of {', '.join(MODELS)} (any case), got {norm!r}")
        if isinstance(groups, bool) or not isinstance(groups, int) or groups not in VALID_GROUPS:
            raise ValueError(
                f"groups must divide both 10 and 20 channels, so one of {VALID_GROUPS}; got {groups!r}"
            )
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.norm, self.groups, self.dropout = norm.upper(), groups, float(dropout)

        def block(cin, cout, padding=0):
            return conv_block(cin, cout, self.norm, groups, self.dropout, padding)

        self.conv0 = block(1, 10)                                        # [N, 10, 26, 26]
        self.conv1 = block(10, 20)                                       # [N, 20, 24, 24]
        self.trans1 = nn.Sequential(nn.Conv2d(20, 10, 1, bias=False),  # [N, 10, 24, 24]
                                    nn.MaxPool2d(2))                     # [N, 10, 12, 12]
        self.conv2 = block(10, 20)                                       # [N, 20, 10, 10]
        self.conv3 = block(20, 10)                                       # [N, 10, 8, 8]
        self.conv4 = block(10, 10)                                       # [N, 10, 6, 6]
        self.conv5 = block(10, 10, padding=1)                            # [N, 10, 6, 6]
        self.gap = nn.AvgPool2d(6)                                       # [N, 10, 1, 1]
        self.conv6 = nn.Conv2d(10, 10, 1, bias=False)                    # [N, 10, 1, 1]

    def blocks(self):
        """[(name, layer)] input to output: the eight blocks and the pool."""
        return [(name, getattr(self, name)) for name in
                ("conv0", "conv1", "trans1", "conv2", "conv3", "conv4", "conv5", "gap", "conv6")]

    @torch.no_grad()
    def scale_init_(self, x: torch.Tensor) -> "Net":
        """AFFINE's start: scale each convolution, input to output, so that its block's output has standard deviation
        1 on `x` ([N, 1, 28, 28] normalized images); returns self.

        Without statistics nothing resets the activations' scale, and with PyTorch's default init it shrinks about
        2.5x per block. He et al.'s variance 2 / fan_in keeps it on average, but at 10 to 20 channels a layer's gain
        varies from seed to seed, and over eight blocks seeds 0-9 started between 0.26 and 2.7. So the scale is set
        from data, as LSUV does (Mishkin and Matas, 2016), without its orthonormal re-draw: the convolutions keep
        the directions the seed draws for every model, one factor per layer away from the first control's. Every
        block is a bias-free conv -> ReLU -> γ·x + β (γ = 1, β = 0) or conv -> max-pool, so its output scales with
        its weight, and one division per block sets it exactly.
        """
        if self.norm != AFFINE:
            raise ValueError(f"scale_init_ is AFFINE's start; this Net is {self.norm}")
        mode = self.training
        self.eval()  # dropout off: it would draw random numbers and blur the scale (AFFINE has no statistics)
        for name, layer in self.blocks():
            if name != "gap":
                std = layer(x).std()
                if not 0 < std < float("inf"):
                    raise ValueError(f"{name}'s output has standard deviation {std.item()} on these images, so it "
                                     "cannot be scaled to 1")
                conv = layer if isinstance(layer, nn.Conv2d) else layer[0]
                conv.weight.div_(std)
            x = layer(x)
        return self.train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 1, 28, 28] normalized images -> [N, 10] log-probabilities."""
        for _, layer in self.blocks():
            x = layer(x)
        return torch.log_softmax(x.flatten(1), dim=1)
