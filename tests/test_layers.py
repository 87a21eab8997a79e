"""mnist_norms/layers.py: Net's receptive field, layer by layer, against a calculation by hand."""
import pytest
from torch import nn

from mnist_norms.layers import format_table, layer_table, step
from model import MODELS, Net

# By hand, from model.py's layers, with r_out = r_in + (k - 1) * j_in, j_out = j_in * s and
# n_out = (n_in + 2p - k) // s + 1, starting at n = 28, j = 1, r = 1:
BY_HAND = [  # (block, output size, channels, jump, receptive field)
    ("conv0", 26, 10, 1, 3),    # 3x3: 28 -> 26, r 1 + 2
    ("conv1", 24, 20, 1, 5),    # 3x3: r 3 + 2
    ("trans1", 24, 10, 1, 5),   # 1x1: nothing moves
    ("trans1", 12, 10, 2, 6),   # max-pool 2, stride 2: r 5 + 1, the jump doubles
    ("conv2", 10, 20, 2, 10),   # 3x3 at jump 2: r 6 + 4
    ("conv3", 8, 10, 2, 14),
    ("conv4", 6, 10, 2, 18),
    ("conv5", 6, 10, 2, 22),    # padding 1 keeps 6x6
    ("gap", 1, 10, 12, 32),     # average-pool 6, stride 6: r 22 + 5 * 2, wider than the 28-pixel image
    ("conv6", 1, 10, 12, 32),   # 1x1
]


@pytest.mark.parametrize("norm", MODELS)
def test_receptive_field_table_matches_the_hand_calculation(norm):
    rows = layer_table(Net(norm))
    assert [(r.name, r.size, r.channels, r.jump, r.receptive) for r in rows] == BY_HAND
    assert sum(r.params for r in rows) == sum(p.numel() for p in Net(norm).parameters())


def test_the_table_names_every_layer_and_its_norm():
    text = format_table(layer_table(Net("GN")))
    assert "conv 3x3, 10 -> 10, padding 1, ReLU, GroupNorm(2)" in text and "max-pool 2x2" in text
    assert text.splitlines()[-1].endswith("7,750") and "Dropout" not in text
    assert "Dropout(0.1)" in format_table(layer_table(Net("BN", dropout=0.1)))


def test_step_handles_stride_padding_and_dilation():
    # a 3x3 convolution with dilation 2 sees 5 pixels; at jump 2 it adds 8 to the receptive field
    assert step(nn.Conv2d(1, 1, 3, stride=2, padding=2, dilation=2), 12, 2, 6) == (6, 4, 14)
    with pytest.raises(ValueError, match="square"):
        step(nn.Conv2d(1, 1, (3, 1)), 28, 1, 1)
