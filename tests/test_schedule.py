"""Schedules (``augschedule/1.0``): format, validator, replay by the augmenter and trainers; the PBA space."""

from __future__ import annotations

import json
import random

import pytest
import torch

from search_spaces import (
    Augmenter,
    Policy,
    PolicyError,
    Schedule,
    ScheduledAugmenter,
    Segment,
    dumps,
    load_policy,
    load_policy_or_schedule,
    load_schedule,
    loads,
    loads_any,
    make_augmenter,
    preset,
    save_policy,
)
from search_spaces.pba import (
    PBA_OPS,
    expected_ops,
    explore,
    param_names,
    pba_policy,
    random_params,
    zero_params,
)
from trainers.data import load_dataset, make_splits
from trainers.engine import fit
from trainers.proxy import ProxyConfig, ProxyData, build_augment, train_proxy


def _schedule() -> Schedule:
    return Schedule((Segment(0, 2, preset("none")), Segment(2, 3, preset("crop_flip_cutout")),
                     Segment(3, 6, preset("randaugment"))), name="three", provenance={"source": "test"})


def _doc(*ranges: tuple[int, int]) -> str:
    policy = json.loads(dumps(preset("none")))
    return json.dumps({"schema": "augschedule/1.0", "segments": [
        {"start_epoch": a, "end_epoch": b, "policy": policy} for a, b in ranges]})


def test_save_load_save_is_byte_identical(tmp_path):
    schedule = _schedule()
    first = save_policy(schedule, tmp_path / "a.json").read_bytes()
    loaded = load_policy_or_schedule(tmp_path / "a.json")
    assert isinstance(loaded, Schedule) and loaded == schedule
    assert save_policy(loaded, tmp_path / "b.json").read_bytes() == first
    doc = json.loads(first)
    doc["x-vendor"] = {"kept": True}
    again = loads_any(json.dumps(doc))
    assert json.loads(dumps(again))["x-vendor"] == {"kept": True} and dumps(loads_any(dumps(again))) == dumps(again)


def test_policy_at_and_stretching():
    schedule = _schedule()
    assert schedule.epochs == 6
    names = [schedule.policy_at(e).name for e in range(6)]
    assert names == ["none", "none", "crop-flip-cutout"] + ["randaugment-n2-m9"] * 3
    # a 12-epoch run replays each schedule epoch twice (PBA's stretching)
    assert [schedule.segment_index(e, total_epochs=12) for e in range(12)] == [0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2]
    with pytest.raises(PolicyError, match=r"^epoch: 6 is outside the schedule's epochs \[0, 6\)"):
        schedule.policy_at(6)


@pytest.mark.parametrize(("ranges", "message"), [
    ([(0, 2), (1, 4)], r"^segments\[1\]\.start_epoch: overlap: epochs 1\.\.1 are already covered by segments\[0\]"),
    ([(0, 2), (3, 4)], r"^segments\[1\]\.start_epoch: gap: epochs 2\.\.2 are not covered \(segments\[0\] ends at 2\)"),
    ([(1, 3)], r"^segments\[0\]\.start_epoch: gap: epochs 0\.\.0 are not covered \(a schedule starts at epoch 0\)"),
    ([(0, 2), (2, 2)], r"^segments\[1\]\.end_epoch: must be > start_epoch 2"),
    ([(0, 3), (0, 3)], r"^segments\[1\]\.start_epoch: overlap: epochs 0\.\.2"),
    ([], r"^segments: needs at least one segment"),
])
def test_validator_rejects_overlaps_and_gaps_with_one_line(ranges, message):
    with pytest.raises(PolicyError, match=message) as info:
        loads_any(_doc(*ranges))
    assert "\n" not in str(info.value)
    with pytest.raises(PolicyError, match=message):  # the constructor runs the same checks
        Schedule(tuple(Segment(a, b, preset("none")) for a, b in ranges))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["segments"][0].update(start_epoch=0.0), r"^segments\[0\]\.start_epoch: expected a whole number"),
    (lambda d: d["segments"][0].update(end_epoch=True), r"^segments\[0\]\.end_epoch: expected a whole number"),
    (lambda d: d["segments"][0].pop("policy"), r"^segments\[0\]\.policy: missing required field"),
    (lambda d: d["segments"][0].update(note=1), r"^segments\[0\]\.note: unknown field"),
    (lambda d: d["segments"][0]["policy"]["policy"]["ops"][0].update(op="spin"),
     r"^segments\[0\]\.policy: policy\.ops\[0\]\.op: unknown op 'spin'"),
    (lambda d: d.update(schema="augschedule/9"), r"^schema: unsupported schema version 'augschedule/9'"),
    (lambda d: d.update(extra=1), r"^extra: unknown field"),
])
def test_loader_is_strict_and_names_the_field(edit, message):
    doc = json.loads(_doc((0, 2)))
    edit(doc)
    with pytest.raises(PolicyError, match=message):
        loads_any(json.dumps(doc))


def test_single_policy_loaders_refuse_a_schedule(tmp_path):
    path = save_policy(_schedule(), tmp_path / "s.json")
    with pytest.raises(PolicyError, match=r"^s\.json: schema: this is a schedule \(\"augschedule/1\.0\"\)"):
        load_policy(path)
    with pytest.raises(PolicyError, match="this is a schedule"):
        loads(path.read_text())
    with pytest.raises(PolicyError, match="expected a single policy, got a schedule"):
        load_policy(_schedule())
    assert isinstance(load_policy_or_schedule("randaugment"), Policy)  # presets still work
    constant = load_schedule("crop_flip", epochs=5)
    assert constant.segments == (Segment(0, 5, preset("crop_flip")),)
    with pytest.raises(PolicyError, match="pass epochs to use it as a constant schedule"):
        load_schedule("crop_flip")


def test_scheduled_augmenter_switches_policy_per_epoch(cifar_images):
    schedule = _schedule()
    aug = make_augmenter(schedule)
    assert isinstance(aug, ScheduledAugmenter) and isinstance(make_augmenter("crop_flip"), Augmenter)
    x = cifar_images[:32]
    for epoch, reference in [(0, "none"), (2, "crop_flip_cutout"), (4, "randaugment"), (1, "none")]:
        aug.set_epoch(epoch)
        expected = Augmenter(preset(reference))(x, generator=torch.Generator().manual_seed(epoch))
        assert torch.equal(aug(x, generator=torch.Generator().manual_seed(epoch)), expected)
    assert sorted(aug._cache) == [0, 1, 2]  # one cached Augmenter per segment used
    assert torch.equal(aug(x, generator=torch.Generator().manual_seed(0)), x)  # back on 'none'


@pytest.fixture(scope="module")
def data() -> ProxyData:
    sample = load_dataset("sample")
    splits = make_splits(sample.labels.numpy(), train_size=256, val_size=128, seed=0)
    return ProxyData.from_dataset(sample, splits)


def test_fit_sets_the_epoch_of_a_scheduled_pipeline(data):
    schedule = Schedule((Segment(0, 1, preset("none")), Segment(1, 2, preset("crop_flip_cutout"))))
    augment = build_augment(schedule, base=True, epochs=4)  # stretched: 2 schedule epochs over 4
    seen = []
    config = ProxyConfig(width=8, epochs=4, batch_size=64, num_threads=2)
    model = config.build(data.num_classes, data.channels)
    fit(model, data.train_x, data.train_y, config=config.train_config(), device=torch.device("cpu"),
        augment=augment, on_epoch=lambda m: seen.append((m.epoch, augment.policy_stage.policy.name)))
    assert seen == [(1, "none"), (2, "none"), (3, "crop-flip-cutout"), (4, "crop-flip-cutout")]


def test_train_proxy_replays_a_schedule_file_and_resumes_exactly(data, tmp_path):
    path = save_policy(Schedule((Segment(0, 1, preset("none")), Segment(1, 2, preset("randaugment")))),
                       tmp_path / "s.json")
    config = ProxyConfig(width=8, epochs=2, batch_size=64, num_threads=2)
    full = train_proxy(path, data, config)
    assert [m.epoch for m in full.history] == [1, 2]
    states = []
    train_proxy(path, data, config, on_state=lambda m, snapshot: states.append(snapshot()) or True)  # stop after 1
    assert len(states) == 1 and states[0]["epoch"] == 1
    resumed = train_proxy(path, data, config, resume=states[0])
    assert [m.epoch for m in resumed.history] == [2]
    assert resumed.final_val_acc == full.final_val_acc  # model, optimizer and schedule continue bit-exactly on CPU


def test_pba_space_mapping_keeps_pba_mean_op_count():
    rng = random.Random(0)
    params = random_params(rng)
    assert len(params) == 60 and list(params) == param_names(PBA_OPS, 2)
    policy = pba_policy(params)
    probs = [params[f"p_{o}_{k}"] / 10 for o in PBA_OPS for k in range(2) if params[f"p_{o}_{k}"]]
    plan = Augmenter(policy).sample(20000, torch.Generator().manual_seed(0))
    assert (plan.ops >= 0).sum(0).float().mean().item() == pytest.approx(expected_ops(probs), abs=0.03)
    assert expected_ops([1.0] * 30) == pytest.approx(0.3 + 2 * 0.5)  # count 0/1/2 w.p. 0.2/0.3/0.5
    assert dumps(loads(dumps(policy))) == dumps(policy) and policy.provenance["pba_params"] == params
    assert pba_policy(zero_params()).all_ops() == (policy.ops[0].__class__("identity"),)
    moved = explore(params, rng)
    assert moved != params and all(0 <= moved[k] <= (10 if k.startswith("p_") else 9) for k in moved)
    with pytest.raises(PolicyError, match=r"^params\.m_rotate_0: missing"):
        pba_policy({"p_rotate_0": 1})
