"""The recipe searches: their grids, the rules that pick a setting, and tiny stress and guard searches end to end."""
import os

import pytest
import torch

from conftest import synthetic
from mnist_norms.recipe import L1, Recipe, experiment
from mnist_norms.records import load_records
from studies import recipe_search as rs
from studies import search, stats


def fake(scores_by_setting):
    """Records as load_records returns them: {setting id: {seed: final accuracy of each of the three norms}}."""
    records = {}
    for sid, seeds in scores_by_setting.items():
        for seed, acc in seeds.items():
            for norm in ("bn_l1", "ln", "gn"):
                records.setdefault(f"{norm}_{sid}", []).append(
                    {"config": {"seed": seed, "epochs": 1}, "history": [{"test_acc": acc, "seconds": 1.0}]})
    return records


IDS = [rs.setting_id(s) for s in rs.settings()]


def test_the_grid_is_every_combination():
    assert len(IDS) == len(set(IDS)) == 8
    assert {rs.setting_id(s) for s in rs.settings()} == {
        f"{aug}_dropout{d:g}_bs{b}" for aug in rs.AUGMENTATIONS for d in (0, 0.05) for b in (64, 128)}


def test_the_rule_waits_for_every_seed_it_needs():
    partial = fake({sid: {0: 99.0} for sid in IDS[:-1]})
    assert rs.second_seeds(rs.scores(partial)) is None and rs.choose(rs.scores(partial)) is None
    table = rs.scores(fake({sid: {0: 99.0 + 0.01 * i} for i, sid in enumerate(IDS)}))
    assert rs.choose(table) is None  # the close settings have no second seed yet


def test_close_settings_get_a_second_seed_and_ties_go_to_the_cheapest():
    seed0 = {sid: 99.0 for sid in IDS}
    best, close, far = "affine_dropout0.05_bs64", "rotate_dropout0_bs128", "affine_dropout0_bs64"
    seed0.update({best: 99.60, close: 99.52, far: 99.49})
    table = rs.scores(fake({sid: {0: acc} for sid, acc in seed0.items()}))
    assert sorted(rs.second_seeds(table)) == sorted([best, close])  # 99.49 is more than 0.10 below
    # Seed 1: the best stays best by 0.06 on the mean -> no tie, it wins although it costs more.
    done = fake({**{sid: {0: acc} for sid, acc in seed0.items()}, best: {0: 99.60, 1: 99.50},
                 close: {0: 99.52, 1: 99.46}})
    chosen, tied = rs.choose(rs.scores(done))
    assert (chosen, tied) == (best, [best])
    # Within 0.05: tied, and the tie goes to no dropout and batch 128.
    done = fake({**{sid: {0: acc} for sid, acc in seed0.items()}, best: {0: 99.60, 1: 99.50},
                 close: {0: 99.52, 1: 99.50}})
    chosen, tied = rs.choose(rs.scores(done))
    assert chosen == close and sorted(tied) == sorted([best, close])


def test_cost_orders_dropout_then_batch_then_augmentation():
    order = sorted(rs.settings(), key=rs.cost)
    assert [rs.setting_id(s) for s in order[:3]] == ["rotate_dropout0_bs128", "affine_dropout0_bs128",
                                                       "rotate_dropout0_bs64"]
    assert rs.setting_id(order[-1]) == "affine_dropout0.05_bs64"


def test_the_search_has_no_option_to_score_on_the_test_set(capsys):
    # The validation split is fixed in the code; an option for it is rejected, not taken for another one.
    with pytest.raises(SystemExit) as exit:
        search.parse_args(["--val", "0"])
    assert exit.value.code == 2 and "unrecognized arguments: --val 0" in capsys.readouterr().err


def test_the_recipe_defaults_are_the_setting_the_search_chose():
    # Recipe's defaults (and model.Net's dropout) are what the rule chose from the committed results/tune/ runs.
    from model import Net
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    table = rs.scores(load_records(os.path.join(root, "results", rs.FOLDER)))
    chosen = rs.choose(table)
    assert chosen is not None, "the committed search has not decided yet"
    setting, default = table[chosen[0]]["setting"], Recipe()
    assert (default.dropout, default.batch_size) == (setting["dropout"], setting["batch_size"])
    assert {k: getattr(default, k) for k in rs.AUGMENTATIONS[setting["augmentation"]]} == \
        rs.AUGMENTATIONS[setting["augmentation"]]
    assert Net().dropout == default.dropout


def test_a_run_settles_at_the_first_epoch_from_which_it_stays_near_its_final_accuracy():
    history = lambda *accs: [{"test_acc": a} for a in accs]
    assert rs.settle_epoch(history(98.0, 99.35, 99.0, 99.35, 99.42, 99.40)) == 4  # 99.0 at epoch 3 is 0.4 off
    assert rs.settle_epoch(history(99.4, 99.4)) == 1 and rs.settle_epoch(history(97.0)) == 1
    assert rs.settle_epoch(history(99.55, 99.30, 99.40)) == 2  # 0.15 above the final is not within 0.1 either


def schedule_fake(finals, settles):
    """Records of the schedule search: {sid: {seed: final}}, each run at 98% until its settle epoch, then at its
    final."""
    records = {}
    for sid, seeds in finals.items():
        for seed, acc in seeds.items():
            for norm in ("bn_l1", "ln", "gn"):
                history = [{"test_acc": 98.0 if e < settles[sid] else acc, "seconds": 1.0} for e in range(1, 21)]
                records.setdefault(f"{norm}_{sid}", []).append({"config": {"seed": seed, "epochs": 20},
                                                                "history": history})
    return records


def test_the_schedule_rule_breaks_accuracy_ties_by_the_earliest_settling_then_the_cheapest():
    finals = {sid: {0: 99.0} for sid in rs.SCHEDULES}
    finals.update(today={0: 99.40, 1: 99.40}, cycle14={0: 99.42}, cycle14_ema={0: 99.38}, ema={0: 99.45})
    settles = {sid: 18 for sid in rs.SCHEDULES}
    settles.update(today=16, cycle14=11, cycle14_ema=10, ema=15)
    table = rs.scores(schedule_fake(finals, settles), rs.SCHEDULES)
    assert sorted(rs.second_seeds(table, len(rs.SCHEDULES))) == ["cycle14", "cycle14_ema", "ema", "today"]
    assert rs.schedule_choose(table) is None  # their second seeds are missing
    finals.update(cycle14={0: 99.42, 1: 99.40}, cycle14_ema={0: 99.38, 1: 99.40}, ema={0: 99.45, 1: 99.47})
    table = rs.scores(schedule_fake(finals, settles), rs.SCHEDULES)
    # Within 0.05 of the best (ema, 99.46): cycle14 (99.41) and today (99.40 is 0.06 below: out); cycle14_ema (99.39)
    # out
    chosen, tied, settled = rs.schedule_choose(table)
    assert sorted(tied) == ["cycle14", "ema"] and settled == ["cycle14"] and chosen == "cycle14"
    # Settling within an epoch of the earliest is a tie, which goes to the cheaper: no average before the average.
    settles.update(ema=12)
    chosen, tied, settled = rs.schedule_choose(rs.scores(schedule_fake(finals, settles), rs.SCHEDULES))
    assert sorted(settled) == ["cycle14", "ema"] and chosen == "cycle14"
    # Today's recipe wins every tie it is in: then it and its runs stay.
    finals.update(today={0: 99.44, 1: 99.44}, cycle14={0: 99.44, 1: 99.44})
    settles.update(today=11, cycle14=11)
    assert rs.schedule_choose(rs.scores(schedule_fake(finals, settles), rs.SCHEDULES))[0] == "today"


def test_today_in_the_schedule_search_is_the_augmentation_searchs_choice_with_the_first_schedule():
    from dataclasses import replace
    FIRST_SCHEDULE = rs.FIRST_SCHEDULE
    assert rs.SCHEDULES["today"] == FIRST_SCHEDULE and rs.setting_id(
        {"augmentation": "affine", "dropout": Recipe().dropout, "batch_size": Recipe().batch_size}) == rs.INCUMBENT
    for sid, changes in rs.SCHEDULES.items():  # every setting is a valid recipe on the validation split
        assert all(r.val == rs.VAL and r.epochs == 20 for r in experiment(val=rs.VAL, **changes)), sid
    # Every setting names the whole schedule, so it means the same whatever Recipe's defaults; the choice is them.
    assert all(set(FIRST_SCHEDULE) <= set(changes) for changes in rs.SCHEDULES.values())
    assert replace(Recipe(), **rs.SCHEDULES["peak15_ema"]) == Recipe()


def stress_record(peak, clip, seed, accs, norms):
    return {"config": {"seed": seed, "lr": peak, "clip": clip, "epochs": 20},
            "history": [{"test_acc": a, "grad_norm_median": g, "grad_norm_max": 2 * g} for a, g in zip(accs, norms)]}


def test_a_run_diverges_when_its_accuracy_falls_by_ten_points_in_one_epoch():
    h = lambda *accs: [{"test_acc": a} for a in accs]
    assert stats.diverged(h(98.9, 98.95, 88.9)) and stats.diverged(h(98.0, 88.0, 97.0))
    assert not stats.diverged(h(10.0, 50.0, 97.0, 98.0)) and not stats.diverged(h(98.0, 88.01))


def test_the_stress_tests_clip_is_twice_the_typical_norm_of_the_healthy_runs_at_todays_peak():
    low, high = search.STRESS_PEAKS
    records = {search.stress_name(high, 0): [stress_record(high, 0, s, [97.0] * 6, [9.0] * 6)
                                            for s in search.STRESS_SEEDS]}
    healthy = [stress_record(low, 0, s, [97.0, 98.0, 98.5, 98.6, 98.7, 98.8], [50.0] + [1.0 + 0.01 * s] * 5)
               for s in search.STRESS_SEEDS[:-1]]
    sick = stress_record(low, 0, search.STRESS_SEEDS[-1], [97.0, 98.0, 20.0, 50.0, 80.0, 90.0], [100.0] * 6)
    records[search.stress_name(low, 0)] = healthy[:-1]
    assert search.stress_clip(records) is None  # stage 1 is not complete
    records[search.stress_name(low, 0)] = healthy + [sick]
    # epochs 2 to 6 of the 19 healthy runs: medians 1.00 to 1.18, whose median is 1.09; times 2, two figures: 2.2
    # (epoch 1's 50 and the diverged run's 100 are left out)
    assert search.stress_clip(records) == 2.2
    table = search.stress_table(records)
    assert table[search.stress_name(low, 0)]["diverged"] == [search.STRESS_SEEDS[-1]]
    assert table[search.stress_name(high, 0)]["diverged"] == []


def test_a_tiny_stress_test_runs_stage_1_then_stage_2_with_the_clip_it_set(tmp_path, monkeypatch):
    monkeypatch.setattr(search, "STRESS_SEEDS", (0, 1))
    monkeypatch.setattr(search, "STRESS_EPOCHS", 2)
    data = (synthetic(160), synthetic(16, seed=1))
    records = search.run_stress(data, device=torch.device("cpu"), out=str(tmp_path), jobs=1, progress=False, epochs=3,
                              val=32)
    clip = search.stress_clip(records)
    assert clip is not None and clip > 0
    arms = {search.stress_name(p, c) for p in search.STRESS_PEAKS for c in (0, clip)}
    assert set(records) == arms
    for name, recs in records.items():  # every run stopped after STRESS_EPOCHS of its 3 epochs, warmed-up average
        assert [r["config"]["seed"] for r in recs] == [0, 1]
        assert all(len(r["history"]) == 2 and r["config"]["ema_warmup"] == search.STRESS_WARMUP and
                   r["config"]["norm"] == "LN" for r in recs), name
    assert {r["config"]["clip"] for r in records[search.stress_name(search.STRESS_PEAKS[1], clip)]} == {clip}
    # A clone holds the results but not the checkpoints (git ignores them): the runs are loaded, not trained again
    import shutil
    shutil.rmtree(tmp_path / "checkpoints")
    again = search.run_stress(data, device=torch.device("cpu"), out=str(tmp_path), jobs=1, progress=False, epochs=3,
                            val=32)
    assert again == records


def guard_fake(finals, settles, sick=()):
    """Records of the guard search: {cid: {seed: final}}, each run at 98% until its settle epoch, then at its final;
    the runs named in `sick` ("ln_guard_ls_seed0") fall to 10% at epoch 4 and climb back."""
    records = {}
    for cid, seeds in finals.items():
        for seed, acc in seeds.items():
            for norm in ("bn_l1", "ln", "gn"):
                history = [{"test_acc": 98.0 if e < settles[cid] else acc, "seconds": 1.0} for e in range(1, 21)]
                if f"{norm}_{cid}_seed{seed}" in sick:
                    history[3]["test_acc"] = 10.0
                records.setdefault(f"{norm}_{cid}", []).append({"config": {"seed": seed, "epochs": 20},
                                                                "history": history})
    return records


def test_the_guard_rule_drops_diverging_candidates_then_ties_go_by_settling_and_the_stress_tests_preference():
    order_guard, order_warmup = ["guard", "warmup", "guard_ls", "guard_wd"], ["warmup", "guard", "guard_ls", "guard_wd"]
    finals = {"warmup": {0: 99.40}, "guard": {0: 99.42}, "guard_ls": {0: 99.55}, "guard_wd": {0: 99.20}}
    settles = {"warmup": 10, "guard": 10, "guard_ls": 10, "guard_wd": 10}
    # guard_ls, the best, diverged once: it is out, and the close ones are measured against the best still in (99.42)
    table = search.guard_table(guard_fake(finals, settles, sick={"ln_guard_ls_seed0"}))
    assert table["guard_ls"]["diverged"] == ["ln_guard_ls_seed0"] and table["guard"]["diverged"] == []
    assert search.guard_choose(table, order_guard) is None  # seeds 1 of warmup and guard are missing
    finals.update(warmup={0: 99.40, 1: 99.40}, guard={0: 99.42, 1: 99.40})
    table = search.guard_table(guard_fake(finals, settles, sick={"ln_guard_ls_seed0"}))
    assert search.guard_choose(table, None) is None  # the stress test's stage 2 is not complete
    chosen, tied, settled = search.guard_choose(table, order_guard)
    assert (chosen, sorted(tied), sorted(settled)) == ("guard", ["guard", "warmup"], ["guard", "warmup"])
    assert search.guard_choose(table, order_warmup)[0] == "warmup"
    # Settling more than an epoch earlier wins the accuracy tie whatever the preference
    settles.update(warmup=8)
    assert search.guard_choose(search.guard_table(guard_fake(finals, settles, sick={"ln_guard_ls_seed0"})),
                              order_guard)[0] == "warmup"
    # Without the divergence guard_ls is best by more than TIE and wins once it has both seeds
    finals.update(guard_ls={0: 99.55, 1: 99.55})
    chosen = search.guard_choose(search.guard_table(guard_fake(finals, settles)), order_guard)
    assert chosen[:2] == ("guard_ls", ["guard_ls"])


def test_the_stress_tests_stage_2_sets_the_guard_rules_preference():
    low, high = search.STRESS_PEAKS
    runs = lambda peak, clip, bad: [stress_record(peak, clip, s,
                                                  [90.0] * 3 + ([10.0] if s in bad else [95.0]) + [96.0] * 2,
                                                  [1.0] * 6) for s in search.STRESS_SEEDS]
    records = {search.stress_name(low, 0): runs(low, 0, {3}), search.stress_name(high, 0): runs(high, 0, set())}
    clip = search.stress_clip(records)
    assert clip == 2.0 and search.preference(records) is None  # stage 2 not run
    records[search.stress_name(low, clip)] = runs(low, clip, set())
    assert search.preference(records) == ["guard", "warmup", "guard_ls", "guard_wd"]
    records[search.stress_name(low, clip)] = runs(low, clip, {5})  # as many diverged with the clip as without
    assert search.preference(records) == ["warmup", "guard", "guard_ls", "guard_wd"]


def test_every_guard_candidate_spells_out_what_it_changes_and_is_a_valid_recipe():
    from dataclasses import replace
    for cid in search.CANDIDATES:
        fields = search.candidate(cid, 0.9)
        assert {"ema_warmup", "clip", "label_smoothing", "weight_decay", "pct_start", "ema"} <= set(fields)
        bn, ln, gn = experiment(val=rs.VAL, **fields)
        assert (bn.l1, ln.l1, gn.l1, bn.epochs, bn.ema_warmup) == (L1, 0, 0, 20, search.STRESS_WARMUP)
    assert search.candidate("warmup", 0.9)["clip"] == 0 and search.candidate("guard", 0.9)["clip"] == 0.9
    assert search.candidate("guard_ls", 0.9)["label_smoothing"] == search.LABEL_SMOOTHING
    assert search.candidate("guard_wd", 0.9)["weight_decay"] == search.WEIGHT_DECAY
    # warmup is Recipe's defaults: the schedule search's choice with the average warmed up, nothing else
    assert replace(Recipe(), **search.candidate("warmup", 0)) == Recipe()


def test_a_tiny_guard_search_needs_the_stress_tests_clip_then_trains_its_candidates(tmp_path, monkeypatch):
    data = (synthetic(96), synthetic(16, seed=1))
    kw = dict(device=torch.device("cpu"), out=str(tmp_path), jobs=1, progress=False, epochs=2, val=32)
    with pytest.raises(ValueError,
                       match="needs the stress test's clip: run python -m studies.search --search stress first"):
        search.run_guard_search(data, **kw)
    monkeypatch.setattr(search, "STRESS_SEEDS", (0,))
    monkeypatch.setattr(search, "STRESS_EPOCHS", 2)
    monkeypatch.setattr(search, "CANDIDATES", ("warmup", "guard_ls"))
    stress = search.run_stress(data, **kw)
    clip = search.stress_clip(stress)
    records = search.run_guard_search(data, **kw)
    assert sorted(records) == ["bn_l1_guard_ls", "bn_l1_warmup", "gn_guard_ls", "gn_warmup", "ln_guard_ls", "ln_warmup"]
    assert all(r["config"]["clip"] == clip and r["config"]["label_smoothing"] == search.LABEL_SMOOTHING
               for r in records["ln_guard_ls"])
    assert all(r["config"]["clip"] == 0 and r["config"]["ema_warmup"] == search.STRESS_WARMUP
               for r in records["gn_warmup"])
    table = search.guard_table(records)
    assert sorted(table) == ["guard_ls", "warmup"]


def test_the_recipe_defaults_are_the_guard_searchs_choice():
    # Recipe's defaults are the candidate the guard rule chose from the committed results/tune/guard/ runs, with the
    # committed stress test's clip and preference: the schedule, the average and its warm-up, the clip and the loss.
    results = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")
    stress = search.stress_records(results)
    choice = search.guard_choose(search.guard_table(load_records(os.path.join(results, search.GUARD_FOLDER))),
                               search.preference(stress))
    assert choice is not None, "the committed guard search has not decided yet"
    chosen = search.candidate(choice[0], search.stress_clip(stress))
    assert {k: getattr(Recipe(), k) for k in chosen} == chosen
