"""normalizations.py: its hand-computed statistics agree with torch's layers; the README shows its output."""
import numpy as np
import pytest
import torch

from studies import normalizations as norms


@pytest.mark.parametrize("method,groups", [("BN", 2), ("LN", 2), ("GN", 2), ("GN", 4)])
@pytest.mark.parametrize("seed", [0, 1])
def test_hand_formulas_match_torch_layers(method, groups, seed):
    x = np.random.default_rng(seed).integers(-5, 10, size=(3, 8, 3, 2)).astype(np.float64)
    with torch.no_grad():
        ref = norms.torch_layer(method, 8, groups)(torch.tensor(x, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(norms.normalize(x, method, groups), ref, atol=1e-5)


def test_worked_example_numbers():
    x = norms.EXAMPLE
    mean, var = norms.statistics(x, "BN")
    # channel 0 holds 1 3 5 7 (image 0) and 3 5 7 9 (image 1): mean 5, variance 48 / 8 = 6
    assert mean.ravel()[0] == 5 and var.ravel()[0] == 6
    mean, var = norms.statistics(x, "LN")
    assert mean.ravel()[0] == x[0].mean() == 4.125
    mean, _ = norms.statistics(x, "GN", 2)
    assert mean.shape == (2, 2, 1, 1, 1) and mean[0, 0].item() == x[0, :2].mean() == 3.5
    text = norms.worked_example()
    diffs = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if "largest difference" in line]
    assert len(diffs) == 4 and max(diffs) < 1e-5


def test_bad_method():
    with pytest.raises(ValueError, match="method must be one of"):
        norms.statistics(norms.EXAMPLE, "IN")


def test_figure_has_one_cube_per_method(tmp_path):
    fig = norms.figure()
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["Batch Norm", "Layer Norm", "Group Norm"]
    norms.main(["--figure", str(tmp_path / "n.png")])
    assert (tmp_path / "n.png").stat().st_size > 10000
