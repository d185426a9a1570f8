"""Search quality, fast parts: the target recipe and race settings, the randaugment_plus space, the late-phase
checkpoint, the objectives' reports, the race statistics and verdicts, the noise warning."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from policy_search.config import ConfigError, load_config
from policy_search.objectives import FinetuneObjective, FullObjective, make_objective
from policy_search.race import Entry, RaceResult, paired_interval, race_entries, race_seeds, race_table
from policy_search.results import noise_warning
from search_spaces import Augmenter, Policy, Schedule, preset
from search_spaces.spaces import RAMP_STEPS, baseline_params, policy_from_params, randaugment_plus
from trainers.data import load_dataset, make_splits
from trainers.proxy import ProxyConfig, ProxyData, accuracy_se, shared_checkpoint, train_proxy


@pytest.fixture(scope="module")
def small() -> ProxyData:
    data = load_dataset("sample")
    return ProxyData.from_dataset(data, make_splits(data.labels, train_size=256, val_size=200, seed=0))


# -- configuration -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    ({"finetune.fraction": 1.0}, "finetune.fraction: must be in (0, 1), got 1.0"),
    ({"finetune.fraction": 0.01}, "finetune.fraction: 0.01 of target.epochs (15) leaves 0 shared epochs"),
    ({"race.seeds": 21}, "race.seeds: must be in [1, 20], got 21"),
    ({"race.seeds": 0}, "race.seeds: must be in [1, 20], got 0"),
    ({"race.baselines": ["randaugment", "no-such-recipe"]}, "race.baselines[1]: no-such-recipe: no such policy file"),
    ({"target.epochs": 1}, "target.epochs: must be >= 2, got 1"),
    ({"target.base_augment": False}, "target.base_augment: the finetune objective needs the base augmentation"),
    ({"space_options": {"ramp": "yes"}}, "space_options.ramp: must be true or false, got 'yes'"),
    ({"objective": "late"}, "objective: must be one of 'finetune', 'full', 'proxy' or 'density'"),
])
def test_bad_search_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    assert "\n" not in str(info.value) and str(info.value).startswith(message), str(info.value)


def test_target_recipe_drives_every_objective_budget():
    cfg = load_config(overrides={"target.epochs": 20, "target.width": 24, "finetune.fraction": 0.75})
    fine, full = make_objective(cfg, "finetune"), make_objective(cfg, "full")
    assert isinstance(fine, FinetuneObjective) and (fine.shared_epochs, fine.max_t) == (15, 20)
    assert fine.target.width == full.target.width == 24 and fine.target.seed == full.target.seed == cfg.seed
    assert isinstance(full, FullObjective) and full.max_t == 20
    assert full.scheduler() is not None and full.grace_period == 12  # stops trials only from 60% of the schedule on
    assert full.eval_every == 4 and full.grace_period % full.eval_every == 0  # ASHA's rung is a validation point
    assert race_seeds(cfg) == [cfg.seed + 1, cfg.seed + 2]  # disjoint from the search seed, shared by all


def test_val_size_defaults_to_the_rest_of_the_data_up_to_10000():
    cfg = load_config(overrides={"train_size": 4000})
    assert cfg.resolved_val_size(50_000) == 10_000 and cfg.resolved_val_size(6_000) == 2_000
    assert load_config(overrides={"val_size": 300}).resolved_val_size(50_000) == 300


# -- the randaugment_plus space ---------------------------------------------------------------------------


def test_randaugment_plus_replays_randaugment_2_9_exactly(cifar_images):
    policy = policy_from_params("randaugment_plus", baseline_params("randaugment_plus", "randaugment"))
    ref = preset("randaugment")
    assert policy.num_ops == ref.num_ops == 2
    assert [(o.op, o.magnitude) for o in policy.ops] == [(o.op, o.magnitude) for o in ref.ops]
    x = cifar_images[:32]
    a = Augmenter(policy)(x, generator=torch.Generator().manual_seed(3))
    b = Augmenter(ref)(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_randaugment_plus_weights_ramp_and_cutmix():
    ops = ("identity", "rotate", "solarize")
    params = {"num_ops": 1, "magnitude": 27, "w_identity": 0.0, "w_rotate": 0.75, "w_solarize": 0.25,
              "ramp": True, "cutmix_p": 0.3}
    sched = policy_from_params("randaugment_plus", params, ops=ops, mix=True)
    assert isinstance(sched, Schedule) and len(sched.segments) == RAMP_STEPS
    first, last = sched.segments[0].policy, sched.segments[-1].policy
    assert [o.op for o in last.ops] == ["rotate", "solarize"]  # weight 0 drops the op
    assert [o.weight for o in last.ops] == [0.75, 0.25]
    assert last.ops[0].magnitude.value == pytest.approx(27 / 30 * 30.0)  # bin 27 of 30: 27 degrees
    assert first.ops[0].magnitude.value == 0.0  # the ramp starts at magnitude 0
    mags = [s.policy.ops[0].magnitude.value for s in sched.segments]
    assert mags == sorted(mags)
    assert [(b.op, b.prob) for b in last.batch_ops] == [("cutmix", 0.3)]
    assert sched.policy_at(29, total_epochs=30) == last and sched.policy_at(0, total_epochs=30) == first
    flat = policy_from_params("randaugment_plus", {**params, "ramp": False}, ops=ops)
    assert isinstance(flat, Policy) and not flat.batch_ops  # mix off: cutmix_p is not part of the space


def test_randaugment_plus_suggests_what_it_reads():
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        randaugment_plus(trial, mix=True)
        policy = policy_from_params("randaugment_plus", trial.params, mix=True)
        assert isinstance(policy, Policy | Schedule)
        study.tell(trial, 0.0)
    assert {"num_ops", "magnitude", "ramp", "cutmix_p", "w_rotate"} <= set(study.trials[0].params)


# -- late-phase scoring -------------------------------------------------------------------------------------


def test_continuing_the_shared_checkpoint_equals_one_uninterrupted_training(small):
    cfg = ProxyConfig(width=8, epochs=4, batch_size=64, seed=5, num_threads=1, eval_every=4)
    whole = train_proxy(None, small, cfg)
    state = shared_checkpoint(small, cfg, epochs=3)
    assert state["epoch"] == 3
    resumed = train_proxy(None, small, cfg, resume=state)
    assert [h.epoch for h in resumed.history] == [4]
    assert resumed.final_val_acc == whole.final_val_acc  # same weights, order, LR schedule: bit for bit on CPU
    assert resumed.history[-1].train_loss == pytest.approx(whole.history[-1].train_loss, rel=0, abs=0)


def test_finetune_objective_reports_once_at_the_end_with_its_standard_error(small):
    cfg = load_config(overrides={"target.width": 8, "target.epochs": 3, "target.batch_size": 64,
                                 "finetune.fraction": 0.67, "resources.cpu": 1})
    objective = make_objective(cfg)
    shared = objective.prepare(small)
    reports = []
    objective.run(preset("randaugment"), shared, reports.append)
    assert len(reports) == 1 and reports[0]["epoch"] == objective.max_t == 3
    acc = reports[0]["val_acc"]
    assert reports[0]["val_se"] == pytest.approx(math.sqrt(acc * (1 - acc) / 200))
    again = []
    objective.run(preset("randaugment"), shared, again.append)  # common random numbers: a trial replays exactly
    assert again[0]["val_acc"] == acc


def test_accuracy_standard_error_matches_the_binomial_formula():
    assert accuracy_se(0.7, 10_000) == pytest.approx(0.00458, abs=1e-5)
    assert accuracy_se(0.7, 1_000) == pytest.approx(0.01449, abs=1e-5)


# -- race statistics ----------------------------------------------------------------------------------------


def test_paired_interval_is_the_t_interval_of_the_differences():
    d = [0.01, 0.02, 0.015, 0.03]
    mean, lo, hi = paired_interval(d)
    half = stats.t.ppf(0.975, 3) * np.std(d, ddof=1) / 2
    assert mean == pytest.approx(0.01875) and (lo, hi) == pytest.approx((mean - half, mean + half))
    assert math.isnan(paired_interval([0.01])[1])


def _runs(values: dict[int, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"entry": e, "seed": s, "val_acc": v, "val_se": 0.005}
                         for e, vals in values.items() for s, v in enumerate(vals, start=1)])


ENTRIES = [Entry("rank1", "searched", "rank1", preset("randaugment")),
           Entry("crop+flip", "baseline", "crop_flip", None),
           Entry("RandAugment(2, 9)", "baseline", "randaugment", preset("randaugment"))]


def test_race_table_pairs_by_seed_against_the_best_baseline():
    runs = _runs({0: [0.72, 0.74, 0.73], 1: [0.70, 0.71, 0.69], 2: [0.71, 0.725, 0.72]})
    table = race_table(runs, ENTRIES)
    assert list(table["label"]) == ["rank1", "RandAugment(2, 9)", "crop+flip"]
    top = table.iloc[0]
    assert top["best_baseline"] == "RandAugment(2, 9)"
    assert top["vs_best_baseline"] == pytest.approx(np.mean([0.01, 0.015, 0.01]))
    result = RaceResult(ENTRIES, runs, table, [1, 2, 3])
    assert result.winner.label == "rank1"
    assert "rank1 (searched) won" in result.verdict() and "above zero" in result.verdict()


def test_a_baseline_that_wins_is_named_in_plain_words():
    runs = _runs({0: [0.70, 0.71, 0.70], 1: [0.69, 0.70, 0.69], 2: [0.72, 0.73, 0.72]})
    result = RaceResult(ENTRIES, runs, race_table(runs, ENTRIES), [1, 2, 3])
    assert result.winner.label == "RandAugment(2, 9)" and result.winner.kind == "baseline"
    assert result.verdict().startswith("the baseline RandAugment(2, 9) won the confirmation race")
    assert "no searched policy beat the fixed recipes" in result.verdict()


def test_race_entries_drop_searched_policies_that_replay_a_baseline():
    cfg = load_config(overrides={"race.baselines": ["crop_flip", "randaugment"]})
    ra29 = policy_from_params("randaugment_plus", baseline_params("randaugment_plus", "randaugment"))
    other = policy_from_params("randaugment_plus", {**baseline_params("randaugment_plus", "randaugment"),
                                                    "magnitude": 20})
    entries = race_entries(cfg, [("rank1", other), ("rank2", ra29)])
    assert [e.label for e in entries] == ["rank1", "crop+flip", "RandAugment(2, 9)"]
    assert entries[1].policy is None  # crop+flip is the base augmentation alone


def test_noise_warning_when_the_standard_error_exceeds_the_spread():
    quiet = pd.DataFrame({"status": ["COMPLETE"] * 4, "val_acc": [0.70, 0.71, 0.705, 0.702],
                          "val_se": [0.015] * 4})
    assert "larger than the spread" in noise_warning(quiet)
    loud = quiet.assign(val_acc=[0.60, 0.70, 0.65, 0.72], val_se=[0.005] * 4)
    assert noise_warning(loud) is None


def test_a_resumed_cutmix_run_replays_its_mixing_draws(small):
    """The one mixing loss draws from the engine's per-epoch RNG: a run resumed mid-schedule equals the
    uninterrupted run (the proxy's old mixing loss seeded its generator once per call and drifted)."""
    policy = policy_from_params("randaugment_plus", {"num_ops": 1, "magnitude": 5, "cutmix_p": 0.5},
                                weights=False, ramp=False, mix=True)
    assert [b.op for b in policy.batch_ops] == ["cutmix"]
    cfg = ProxyConfig(width=8, epochs=3, batch_size=64, seed=2, num_threads=1, eval_every=3)
    whole = train_proxy(policy, small, cfg)
    held = {}
    train_proxy(policy, small, cfg, on_state=lambda m, snap: bool(held.setdefault("s", snap())))  # stop after 1
    resumed = train_proxy(policy, small, cfg, resume=held["s"])
    assert held["s"]["epoch"] == 1 and [h.epoch for h in resumed.history] == [2, 3]
    assert resumed.final_val_acc == whole.final_val_acc
    assert resumed.history[-1].train_loss == whole.history[-1].train_loss


# -- K-fold validation ---------------------------------------------------------------------------------------


def test_folds_validate_every_pooled_image_exactly_once_stratified(small):
    from policy_search.objectives import make_folds

    folds = make_folds(small, 4, seed=0)
    pool = torch.cat([small.train_x, small.val_x]).flatten(1)
    val = torch.cat([f.val_x for f in folds]).flatten(1)
    assert len(val) == len(pool) == 456
    assert torch.equal(val.sum(0), pool.sum(0)) and torch.equal(torch.cat([f.val_y for f in folds]).sort().values,
                                                                torch.cat([small.train_y, small.val_y]).sort().values)
    for f in folds:
        assert len(f.train_y) + len(f.val_y) == 456 and len(f.val_y) in (114, 115)
        counts = torch.bincount(f.val_y, minlength=small.num_classes)
        pooled = torch.bincount(torch.cat([small.train_y, small.val_y]), minlength=small.num_classes)
        assert ((counts - pooled / 4).abs() <= 1).all()  # stratified: each class split evenly over the folds
    again = make_folds(small, 4, seed=0)  # seeded: the same folds every time
    assert all(torch.equal(a.val_y, b.val_y) for a, b in zip(folds, again, strict=True))


def test_val_folds_score_every_fold_and_report_the_pooled_accuracy(small):
    cfg = load_config(overrides={"target.width": 8, "target.epochs": 2, "target.batch_size": 64,
                                 "finetune.fraction": 0.5, "resources.cpu": 1, "val_folds": 2})
    objective = make_objective(cfg)
    assert objective.name == "finetune" and objective.max_t == 2 and objective.scheduler() is None
    reports = []
    objective.run(preset("randaugment"), objective.prepare(small), reports.append)
    assert len(reports) == 1 and reports[0]["epoch"] == 2 and len(reports[0]["fold_val_acc"]) == 2
    acc = reports[0]["val_acc"]
    assert acc == pytest.approx(sum(reports[0]["fold_val_acc"]) / 2, abs=1e-6)  # two folds of 228 images each
    assert reports[0]["val_se"] == pytest.approx(math.sqrt(acc * (1 - acc) / 456))  # the whole pool validated
    with pytest.raises(ConfigError, match="val_folds: the density objective"):
        load_config(overrides={"objective": "density", "val_folds": 3})
