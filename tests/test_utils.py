"""utils.py: resumable runs, paired by seed, written after every epoch, resumed bit-identical, in worker processes."""
import json
import os
from dataclasses import replace

import pytest
import torch
from torch import nn

import utils
from conftest import synthetic, without_time
from mnist_norms import machine, runner
from mnist_norms.files import save_torch, write_json
from mnist_norms.machine import hardware
from mnist_norms.recipe import Recipe, experiment, settings_folder
from mnist_norms.records import SettingsClash, load_weights
from mnist_norms.training import evaluate
from model import Net

TRAIN, TEST = synthetic(256), synthetic(64, seed=1)


SMALL = Recipe("BN", l1=1e-5, epochs=2, batch_size=64)


def small_run(tmp_path, recipe=SMALL, **kw):
    return runner.run(utils.fit, recipe, (TRAIN, TEST), device=torch.device("cpu"), out=str(tmp_path),
                      progress=False, **kw)


def stop_at_evaluation(monkeypatch, n):
    """Make utils.test raise KeyboardInterrupt at its n-th call (an interrupted run); returns the real one."""
    real, calls = utils.test, []

    def evaluate_then_stop(*args, **kw):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kw)
    monkeypatch.setattr(utils, "test", evaluate_then_stop)
    return real


def test_one_seed_pairs_the_norms_same_weights_batches_augmentation_and_dropout_masks(tmp_path, monkeypatch):
    # What every norm's run sees, recorded through hooks on the model run() builds: the convolution weights it
    # starts from, the input of every step (order and augmentation), and the random-number state at every
    # dropout call (dropout draws its mask from it, with the same shape and probability in every norm).
    seen = {}

    def watched(norm, **kw):
        model = Net(norm, **kw)
        if next(model.parameters()).is_meta:  # a Recipe checking its settings
            return model
        log = seen.setdefault((norm, kw["groups"]), {"conv": [p.detach().clone() for p in model.parameters()
                                                            if p.ndim > 1], "x": [], "rng": []})
        model.register_forward_pre_hook(lambda m, args: log["x"].append(args[0].clone()) if m.training else None)
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.register_forward_pre_hook(
                    lambda m, args: log["rng"].append(torch.get_rng_state()) if m.training else None)
        return model

    monkeypatch.setattr(utils, "Net", watched)
    for recipe in experiment(seeds=(3,), epochs=2, batch_size=64, translate=0.1, scale=0.1, shear=5.0) \
            + [Recipe("GN", groups=g, epochs=2, batch_size=64, seed=3, translate=0.1, scale=0.1, shear=5.0)
               for g in (1, 5)]:
        runner.run(utils.fit, recipe, (TRAIN, TEST), device=torch.device("cpu"), out=str(tmp_path / recipe.name),
                  progress=False)
    (first, a), *others = seen.items()
    assert len(a["x"]) == 2 * 4 and len(a["rng"]) == 6 * len(a["x"])  # 4 steps per epoch, 6 dropout layers
    for key, b in others:
        assert all(torch.equal(p, q) for p, q in zip(a["conv"], b["conv"])), key
        assert all(torch.equal(p, q) for p, q in zip(a["x"], b["x"])), key
        assert len(b["rng"]) == len(a["rng"]) and all(torch.equal(p, q) for p, q in zip(a["rng"], b["rng"])), key


def test_gn_with_one_group_is_ln():
    torch.manual_seed(0)
    ln = Net("LN")
    torch.manual_seed(0)
    gn = Net("GN", groups=1)
    x = torch.randn(4, 1, 28, 28)
    assert all(torch.equal(p, q) for p, q in zip(ln.state_dict().values(), gn.state_dict().values()))
    assert torch.equal(ln.eval()(x), gn.eval()(x))


def test_same_seed_same_history_on_cpu(tmp_path):
    _, a = small_run(tmp_path / "a")
    _, b = small_run(tmp_path / "b")
    _, c = small_run(tmp_path / "c", replace(SMALL, seed=1))
    assert without_time(a["history"]) == without_time(b["history"])
    assert without_time(a["history"]) != without_time(c["history"])


def test_json_and_weights_are_written_and_a_finished_run_is_not_retrained(tmp_path):
    model, record = small_run(tmp_path)
    saved = json.load(open(tmp_path / "results" / "bn_l1_seed0.json"))
    assert saved == json.loads(json.dumps(record))
    assert [r["epoch"] for r in saved["history"]] == [1, 2]
    assert set(saved["history"][0]) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds",
                                        "grad_norm_median", "grad_norm_max"}
    assert 0 < saved["history"][0]["grad_norm_median"] <= saved["history"][0]["grad_norm_max"]
    config = saved["config"]
    assert Recipe.from_config(config) == SMALL
    assert config["threads"] == 1 and config["train_images"] == 256 and config["params"] == 7750
    assert config["cpu"] == machine.cpu_name()  # the vendor: pinned runs reproduce only on CPUs of the same one
    # The weights file holds the final model and its config, loadable as data only.
    loaded, weights_config = load_weights(tmp_path / "weights" / "bn_l1_seed0.pt")
    assert weights_config == config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert not os.path.exists(tmp_path / "checkpoints" / "bn_l1_seed0.pt")  # removed once finished
    mtime = os.path.getmtime(tmp_path / "results" / "bn_l1_seed0.json")
    again, record2 = small_run(tmp_path)
    assert record2 == saved and os.path.getmtime(tmp_path / "results" / "bn_l1_seed0.json") == mtime
    assert torch.equal(again.conv6.weight, model.conv6.weight)


def test_an_interrupted_run_resumes_to_the_same_history_and_weights(tmp_path, monkeypatch):
    recipe = replace(SMALL, epochs=4)
    _, whole = small_run(tmp_path / "whole", recipe)
    real_evaluate = stop_at_evaluation(monkeypatch, 3)  # stop during the third epoch's evaluation
    with pytest.raises(KeyboardInterrupt):
        small_run(tmp_path / "cut", recipe)
    saved = json.load(open(tmp_path / "cut" / "results" / "bn_l1_seed0.json"))
    assert [r["epoch"] for r in saved["history"]] == [1, 2]  # every finished epoch kept
    assert os.path.exists(tmp_path / "cut" / "checkpoints" / "bn_l1_seed0.pt")
    assert sorted(os.listdir(tmp_path / "cut" / "results")) == ["bn_l1_seed0.json"]  # no temporary files left
    monkeypatch.setattr(utils, "test", real_evaluate)
    _, resumed = small_run(tmp_path / "cut", recipe)
    assert without_time(resumed["history"]) == without_time(whole["history"])
    assert resumed["config"] == whole["config"]
    a = torch.load(tmp_path / "whole" / "weights" / "bn_l1_seed0.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "weights" / "bn_l1_seed0.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_resumed_on_another_kind_of_processor_records_which_epochs_ran_where(tmp_path, monkeypatch):
    recipe = replace(SMALL, epochs=3)
    real_evaluate = stop_at_evaluation(monkeypatch, 2)  # stop during the second epoch's evaluation
    with pytest.raises(KeyboardInterrupt):
        small_run(tmp_path, recipe)
    monkeypatch.setattr(utils, "test", real_evaluate)
    path = tmp_path / "checkpoints" / "bn_l1_seed0.pt"
    state = torch.load(path, weights_only=True)
    state["config"]["hardware"] = "CPU OTHER"
    state["config"]["cpu"] = "Other CPU (OtherVendor)"
    save_torch(str(path), state)
    _, record = small_run(tmp_path, recipe)
    here = hardware(torch.device("cpu"))
    assert len(record["history"]) == 3 and record["config"]["hardware"] == f"CPU OTHER until epoch 1, then {here}"
    assert record["config"]["cpu"] == f"Other CPU (OtherVendor) until epoch 1, then {machine.cpu_name()}"


def test_a_run_resumed_from_a_checkpoint_that_predates_the_cpu_record_says_the_first_epochs_are_unknown(
        tmp_path, monkeypatch):
    recipe = replace(SMALL, epochs=2)
    real_evaluate = stop_at_evaluation(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        small_run(tmp_path, recipe)
    monkeypatch.setattr(utils, "test", real_evaluate)
    path = tmp_path / "checkpoints" / "bn_l1_seed0.pt"
    state = torch.load(path, weights_only=True)
    del state["config"]["cpu"]
    save_torch(str(path), state)
    _, record = small_run(tmp_path, recipe)
    assert record["config"]["cpu"] == f"not recorded until epoch 1, then {machine.cpu_name()}"


def test_files_of_other_settings_are_never_mixed_in(tmp_path):
    small_run(tmp_path, replace(SMALL, epochs=1))
    with pytest.raises(SettingsClash, match=r"bn_l1_seed0.json was written with other settings "
                                                  r"\(epochs 1 there, 2 now\); .*--fresh"):
        small_run(tmp_path)
    # A checkpoint from a run with another thread count is not resumed either.
    state_path = tmp_path / "checkpoints" / "bn_l1_seed0.pt"
    _, record = small_run(tmp_path, fresh=True)  # --fresh starts over
    assert len(record["history"]) == 2
    os.makedirs(state_path.parent, exist_ok=True)
    os.remove(tmp_path / "weights" / "bn_l1_seed0.pt")
    cut = json.load(open(tmp_path / "results" / "bn_l1_seed0.json"))
    cut["history"] = cut["history"][:1]
    write_json(str(tmp_path / "results" / "bn_l1_seed0.json"), cut)
    save_torch(str(state_path), {"config": {**cut["config"], "threads": 99}, "history": cut["history"]})
    with pytest.raises(SettingsClash, match=r"checkpoints/bn_l1_seed0.pt was written with other settings "
                                                  r"\(threads 99 there, 1 now\)"):
        small_run(tmp_path)


def test_parallel_jobs_give_the_same_histories_as_one_process_with_one_thread(tmp_path):
    recipes = [replace(SMALL, norm=n, l1=0.0, epochs=1) for n in ("BN", "GN")]
    data = (TRAIN, TEST)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial, _ = utils.run_experiments(recipes, data, device=torch.device("cpu"), out=str(tmp_path / "a"),
                                          progress=False, jobs=1)
    finally:
        torch.set_num_threads(threads)
    parallel, models = utils.run_experiments(recipes, data, device=torch.device("cpu"), out=str(tmp_path / "b"),
                                             jobs=2)
    assert list(parallel) == ["bn", "gn"] and set(models) == {"bn", "gn"}
    for name in serial:
        assert without_time(serial[name][0]["history"]) == without_time(parallel[name][0]["history"])
        assert parallel[name][0]["config"]["threads"] == 1
    log_path = tmp_path / "b" / "results" / "epochs1" / "invocations.json"  # 1 epoch: not the defaults' folder
    (log,) = json.load(open(log_path))["invocations"]
    assert log["runs_trained"] == 2 and log["jobs"] == 2 and log["threads"] == 1 and log["wall_seconds"] > 0
    utils.run_experiments(recipes, data, device=torch.device("cpu"), out=str(tmp_path / "b"), jobs=2)
    assert len(json.load(open(log_path))["invocations"]) == 1  # nothing trained


def test_a_bad_setting_in_a_worker_is_raised_as_itself_without_the_pool_traceback(tmp_path):
    import traceback
    recipes = [replace(SMALL, norm=n, l1=0.0, epochs=1, val=1000) for n in ("BN", "GN")]  # 1000 > 256 images
    with pytest.raises(ValueError, match="validation size must be between 1 and 255, got 1000") as error:
        utils.run_experiments(recipes, (TRAIN, TEST), device=torch.device("cpu"), out=str(tmp_path), jobs=2)
    assert error.value.__cause__ is None and "RemoteTraceback" not in "".join(traceback.format_exception(error.value))


def test_a_cycle_shorter_than_the_run_anneals_by_its_end_and_then_holds_that_learning_rate(tmp_path):
    recipe = replace(SMALL, epochs=4, cycle_epochs=2, final_div=40, pct_start=0.25)
    _, record = small_run(tmp_path, recipe)
    lr = [e["lr"] for e in record["history"]]  # the rate at the start of each epoch
    assert lr[0] == pytest.approx(0.1 / 25) and lr[2] == lr[3] == pytest.approx(0.1 / 25 / 40, rel=1e-2)
    assert "the cycle spans epochs 1-2" in record["config"]["schedule"] and record["config"]["cycle_epochs"] == 2
    assert settings_folder(recipe) == "epochs4_pct_start0.25_cycle_epochs2_final_div40"


def test_with_ema_the_average_is_what_is_evaluated_saved_and_resumed_bit_identically(tmp_path):
    recipe = replace(SMALL, epochs=3, ema=0.9)
    model, whole = small_run(tmp_path / "whole", recipe)
    # The averaged weights (not the trained ones) are returned, saved, and give the recorded test accuracy.
    saved = torch.load(tmp_path / "whole" / "weights" / "bn_l1_seed0.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert evaluate(model, TEST) == (whole["history"][-1]["test_loss"], whole["history"][-1]["test_acc"])
    trained, _ = small_run(tmp_path / "plain", replace(recipe, ema=0.0))
    assert not torch.equal(trained.state_dict()["conv0.0.weight"], model.state_dict()["conv0.0.weight"])
    # Stopped after epoch 1 and resumed: the average comes back from the checkpoint, and the history is the same.
    small_run(tmp_path / "cut", recipe, study=runner.Study(stop_after=1))
    _, resumed = small_run(tmp_path / "cut", recipe)
    assert without_time(resumed["history"]) == without_time(whole["history"])


def test_runs_train_one_at_a_time_on_a_gpu_and_as_asked_on_a_cpu():
    # train.py prints what run_all does: on a GPU one run after another, whatever --jobs says
    assert runner.effective_jobs(torch.device("cuda"), 3, 3) == 1
    assert runner.effective_jobs(torch.device("cpu"), 3, 3) == 3
    with pytest.raises(ValueError, match="jobs must be a positive integer or None"):
        runner.effective_jobs(torch.device("cpu"), 0, 3)
