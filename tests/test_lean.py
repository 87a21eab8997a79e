"""The lean path a GPU run takes (mnist_norms/lean.py), checked on the CPU: the same training as the committed runs'
path up to rounding, its average against the warmed-up formula, its state interchangeable with AveragedModel's; a
checkpoint read to the CPU whatever the device; bf16 only where the GPU has it; and, where CUDA is present, no wait
for the GPU in a training step."""
import json
from dataclasses import replace

import pytest
import torch

import utils
from conftest import synthetic, without_time
from mnist_norms import lean as lean_module
from mnist_norms import records, runner, training
from mnist_norms.recipe import Recipe

TRAIN, TEST = synthetic(320), synthetic(64, seed=1)
CPU = torch.device("cpu")


def test_the_lean_path_trains_as_the_committed_path_does_up_to_rounding():
    # One epoch of BN + L1 both ways from one seed: the same batches, L1 and average, so the same numbers but for the
    # last digits (lerp for mul + add, F.affine_grid for the grid built elementwise, L1's gradient added directly)
    recipe = Recipe("BN", l1=1e-3, epochs=1, batch_size=32)
    out = {}
    for lean in (False, True):
        model, optimizer, scheduler, averaged, generator = utils.setup(recipe, 320, CPU, lean_path=lean)
        epoch = lean_module.train if lean else utils.train
        loss, acc, norms = epoch(model, TRAIN, optimizer, recipe, generator=generator, scheduler=scheduler,
                                 averaged=averaged, progress=False)
        out[lean] = (loss, acc, norms, averaged.module.state_dict())
    (l0, a0, n0, s0), (l1, a1, n1, s1) = out[False], out[True]
    assert type(utils.setup(recipe, 320, CPU, lean_path=True)[3]) is lean_module.LeanAverage
    assert l1 == pytest.approx(l0, rel=1e-3) and abs(a1 - a0) <= 100 * 2 / 320  # two images may flip
    assert torch.allclose(n1, n0, rtol=1e-3)
    assert s0.keys() == s1.keys() and all(torch.allclose(s0[k].double(), s1[k].double(), rtol=1e-3, atol=1e-5)
                                          for k in s0)


def test_the_lean_average_follows_the_warmed_up_formula_and_keeps_averaged_models_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    reference = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=training.ema_update(0.99, 10.0),
                                                    use_buffers=True)
    lean = lean_module.LeanAverage(model, 0.99, 10.0)
    for _ in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(4, 3))
        reference.update_parameters(model)
        lean.update_parameters(model)
    a, b = reference.state_dict(), lean.state_dict()
    assert a.keys() == b.keys() and b["n_averaged"].item() == 30
    assert all(torch.allclose(a[k].double(), b[k].double(), rtol=1e-5, atol=1e-6) for k in a)
    again = lean_module.LeanAverage(model, 0.99, 10.0)
    again.load_state_dict(a)  # an AveragedModel's checkpoint resumes the lean average, count and all
    assert again.count == 30


def test_a_checkpoint_is_read_to_the_cpu_whatever_the_runs_device(tmp_path, monkeypatch):
    # A GPU run read its checkpoint with map_location=its device, which moved the generators' states there too, and
    # Generator.set_state takes only a CPU byte tensor (the meta device stands in for the GPU here):
    with pytest.raises((TypeError, RuntimeError)):
        torch.Generator().set_state(torch.Generator().get_state().to("meta"))
    # so a load that puts every tensor off the CPU unless told "cpu" must leave the resume as it was
    real = torch.load

    def off_the_cpu(path, map_location=None, **kw):
        return real(path, map_location=map_location if str(map_location) == "cpu" else "meta", **kw)
    recipe = Recipe("BN", l1=1e-5, epochs=2, batch_size=64, ema=0.9)
    _, whole = runner.run(utils.fit, recipe, (TRAIN, TEST), device=CPU, out=str(tmp_path / "whole"), progress=False)
    runner.run(utils.fit, recipe, (TRAIN, TEST), device=CPU, out=str(tmp_path / "cut"), progress=False,
               study=runner.Study(stop_after=1))
    monkeypatch.setattr(records.torch, "load", off_the_cpu)
    _, resumed = runner.run(utils.fit, recipe, (TRAIN, TEST), device=CPU, out=str(tmp_path / "cut"), progress=False)
    assert without_time(resumed["history"]) == without_time(whole["history"])


def test_a_lean_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    # As a GPU run would: stopped after epoch 1 and resumed, it continues from its average's count
    monkeypatch.setattr(lean_module, "lean_path", lambda device: True)
    recipe = Recipe("LN", epochs=2, batch_size=64)
    _, whole = runner.run(utils.fit, recipe, (TRAIN, TEST), device=CPU, out=str(tmp_path / "whole"), progress=False)
    runner.run(utils.fit, recipe, (TRAIN, TEST), device=CPU, out=str(tmp_path / "cut"), progress=False,
               study=runner.Study(stop_after=1))
    _, resumed = runner.run(utils.fit, recipe, (TRAIN, TEST), device=CPU, out=str(tmp_path / "cut"), progress=False)
    assert json.dumps(without_time(resumed["history"])) == json.dumps(without_time(whole["history"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_training_step_on_cuda_never_waits_for_the_gpu():
    device = torch.device("cuda")
    recipe = replace(Recipe("BN", l1=1e-5, batch_size=64), epochs=1)
    data = tuple(t.to(device) for t in synthetic(640))
    model, optimizer, scheduler, averaged, generator = utils.setup(recipe, 640, device, lean_path=True)
    batches = lean_module.batches(data, recipe.batch_size, generator=generator, **recipe.augmentation)
    x, y = next(batches)
    lean_module.train_step(model, optimizer, x, y, recipe, scheduler)  # the first step sets things up
    averaged.update_parameters(model)
    x, y = next(batches)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        lean_module.train_step(model, optimizer, x, y, recipe, scheduler)
        averaged.update_parameters(model)
        next(batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_bf16_stops_with_one_line_on_a_gpu_that_only_emulates_it_and_fp32_turns_tf32_off(monkeypatch):
    from mnist_norms import machine
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.raises(ValueError, match=r"^precision bf16: Tesla T4 has no native bfloat16 .*7\.5.*use fp32$"):
        machine.gpu_arithmetic("bf16", cuda)
    flags = [(torch.backends.cudnn, f) for f in ("allow_tf32", "deterministic", "benchmark")] + \
        [(torch.backends.cuda.matmul, "allow_tf32")]
    saved = [getattr(m, f) for m, f in flags]
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # PyTorch's default for cuDNN
        machine.gpu_arithmetic("fp32", cuda)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        for (m, f), v in zip(flags, saved):
            setattr(m, f, v)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    machine.gpu_arithmetic("bf16", cuda)  # an A100 or newer: no error
    machine.gpu_arithmetic("bf16", CPU)  # the CPU's bf16 is its own matter (oneDNN)


def test_the_lean_path_dispatches_fewer_than_150_operations_a_step_for_bn_with_l1():
    from benchmarks import launches
    recipe = Recipe("BN", l1=1e-5)
    lean, committed = launches.count(recipe, True, steps=2), launches.count(recipe, False, steps=2)
    assert sum(lean.values()) < 150 and sum(lean.values()) < sum(committed.values()) / 2
    assert lean["average"] <= 2 and lean["augmentation"] < committed["augmentation"]
