"""The Augmenter: per-sample randomness that follows the policy's probabilities, seeding, dtypes, mixing."""

from __future__ import annotations

import math

import pytest
import torch

from search_spaces import OPS, Augmenter, BatchOp, Magnitude, OpConfig, Policy, preset
from search_spaces.augment import OP_NAMES

N = 20_000


def within(observed: float, p: float, n: int = N, sigmas: float = 5.0) -> bool:
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n) + 1e-9


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_subpolicy_choice_follows_weights_and_probabilities():
    sub_a = (OpConfig("invert", 0.3), OpConfig("rotate", 1.0, Magnitude(10.0, random_sign=True)))
    sub_b = (OpConfig("equalize", 0.8),)
    aug = Augmenter(Policy("subpolicy_choice", subpolicies=(sub_a, sub_b), weights=(1.0, 3.0)))
    plan = aug.sample(N, gen())
    names = plan.op_names()
    stage0, stage1 = names
    assert within(sum(n == "invert" for n in stage0) / N, 0.25 * 0.3)
    assert within(sum(n == "equalize" for n in stage0) / N, 0.75 * 0.8)
    rotated = [i for i, n in enumerate(stage1) if n == "rotate"]
    assert within(len(rotated) / N, 0.25)  # sub-policy b has no second op
    angles = plan.values[1, rotated]
    assert set(angles.abs().tolist()) == {10.0} and within(float((angles < 0).float().mean()), 0.5, len(rotated))


def test_rand_augment_draws_ops_uniformly_per_sample_with_replacement():
    aug = Augmenter(preset("randaugment"))
    plan = aug.sample(N, gen(1))
    k = len(aug.policy.ops)
    assert plan.ops.shape == (2, N)
    for op in ("rotate", "solarize", "posterize"):
        idx = OP_NAMES.index(op)
        assert within(float((plan.ops == idx).float().mean()), 1 / k)
    assert within(float((plan.ops == -1).float().mean()), 1 / k)  # identity draws
    same = (plan.ops[0] == plan.ops[1]) & (plan.ops[0] >= 0)
    assert same.any()  # with replacement


def test_rand_augment_weights():
    ops = (OpConfig("invert", weight=3.0), OpConfig("hflip", weight=1.0))
    plan = Augmenter(Policy("rand_augment", ops=ops, num_ops=1)).sample(N, gen(2))
    assert within(float((plan.ops == OP_NAMES.index("invert")).float().mean()), 0.75)


def test_uniform_and_integer_magnitudes():
    ops = (OpConfig("rotate", 1.0, Magnitude(low=5.0, high=15.0, random_sign=False)),)
    values = Augmenter(Policy("sequential", ops=ops)).sample(N, gen(3)).values[0]
    assert values.min() >= 5.0 and values.max() <= 15.0 and abs(values.mean() - 10.0) < 0.1
    ops = (OpConfig("posterize", 1.0, Magnitude(low=2, high=8)),)
    bits = Augmenter(Policy("sequential", ops=ops)).sample(N, gen(4)).values[0]
    counts = torch.bincount(bits.long(), minlength=9)[2:]
    assert counts.min() > 0 and all(within(c / N, 1 / 7) for c in counts.tolist())


def test_normal_magnitude_is_clipped_to_bounds():
    ops = (OpConfig("solarize", 1.0, Magnitude(value=0.9, std=0.5)),)
    values = Augmenter(Policy("sequential", ops=ops)).sample(N, gen(5)).values[0]
    assert values.max() <= 1.0 and values.min() >= 0.0 and values.std() > 0.1


def test_random_sign_reflects_around_identity():
    ops = (OpConfig("brightness", 1.0, Magnitude(1.3, random_sign=True)),)
    values = Augmenter(Policy("sequential", ops=ops)).sample(N, gen(6)).values[0]
    assert set(torch.round(values * 1000).unique().tolist()) == {700.0, 1300.0}


def test_per_sample_randomness_within_one_batch(cifar_images):
    aug = Augmenter(preset("trivialaugment_wide"))
    plan = aug.sample(64, gen(7))
    assert len(set(plan.ops[0].tolist())) > 5
    out = aug.apply(cifar_images, plan)
    changed = (out != cifar_images).flatten(1).any(dim=1)
    assert changed.float().mean() > 0.5


def test_seeded_runs_reproduce_and_differ(cifar_images):
    aug = Augmenter(preset("autoaugment_cifar10"))
    a = aug(cifar_images, generator=gen(11))
    b = aug(cifar_images, generator=gen(11))
    c = aug(cifar_images, generator=gen(12))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", ["randaugment", "trivialaugment_wide", "autoaugment_cifar10", "crop_flip_cutout"])
def test_dtypes_channels_and_odd_sizes(cifar_images, name):
    aug = Augmenter(name)
    x8 = cifar_images[:8]
    out8 = aug(x8, generator=gen())
    assert out8.dtype == torch.uint8 and out8.shape == x8.shape
    xf = x8.float() / 255
    outf = aug(xf, generator=gen())
    assert outf.dtype == torch.float32 and outf.min() >= 0 and outf.max() <= 1
    assert torch.equal(xf, x8.float() / 255)  # input untouched
    gray = aug(x8[:, :1], generator=gen())
    assert gray.shape == (8, 1, 32, 32)
    odd = torch.nn.functional.interpolate(xf, size=(24, 40), mode="bilinear")
    assert aug(odd, generator=gen()).shape == (8, 3, 24, 40)


def test_plan_replay_gives_identical_views(cifar_images):
    """Distillation: teacher and student see the same augmented view of a batch."""
    aug = Augmenter("randaugment")
    plan = aug.sample(len(cifar_images), gen(3))
    assert torch.equal(aug.apply(cifar_images, plan, gen(9)), aug.apply(cifar_images, plan, gen(9)))


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="C = 1 or 3"):
        Augmenter("randaugment")(torch.zeros(2, 4, 8, 8))


def test_every_op_runs_on_uint8_and_float(cifar_images):
    """uint8 in, uint8 out; float in [0, 1] in, float out; the same seed gives the same pixels (up to rounding)."""
    x8 = cifar_images[:8]
    xf = x8.float() / 255
    policies = [Policy("sequential", ops=(OpConfig(name, 1.0, Magnitude(spec.level_to_value(0.5))
                                                   if spec.has_magnitude else None),))
                for name, spec in OPS.items()]
    for policy in [*policies, preset("randaugment"), preset("autoaugment_cifar10")]:
        aug = Augmenter(policy)
        out8, outf = aug(x8, generator=gen(4)), aug(xf, generator=gen(4))
        assert out8.dtype == torch.uint8 and outf.dtype == torch.float32
        assert out8.shape == outf.shape == (8, 3, 32, 32)
        assert 0.0 <= float(outf.min()) and float(outf.max()) <= 1.0
        # the uint8 path runs the float kernels on x / 255 and rounds: exactly the float result, rounded
        assert torch.equal(out8, outf.mul(255).round().to(torch.uint8)), policy.name or policy.all_ops()[0].op


def _mixing_policy(op: str) -> Augmenter:
    return Augmenter(Policy("sequential", ops=(OpConfig("identity"),), batch_ops=(BatchOp(op, 1.0, 1.0),)))


def test_mixup_lambda_is_the_weight_of_the_original(cifar_images):
    x = cifar_images[:10].float() / 255
    y = torch.arange(10)
    mixed, soft = _mixing_policy("mixup").mix(x, y, 10, gen(1))
    assert torch.allclose(soft.sum(1), torch.ones(10))
    for i in range(10):
        lam = soft[i, i]
        partner = int(torch.argmax(soft[i] - torch.eye(10)[i] * 2))
        expected = lam * x[i] + (1 - lam) * x[partner] if lam < 1 else x[i]
        assert torch.allclose(mixed[i], expected, atol=1e-5)


def test_cutmix_lambda_matches_the_pasted_area(cifar_images):
    x = cifar_images[:10].float() / 255
    mixed, soft = _mixing_policy("cutmix").mix(x, torch.arange(10), 10, gen(2))
    for i in range(10):
        own = (mixed[i] == x[i]).all(dim=0).float().mean()
        assert abs(float(own) - float(soft[i, i])) < 0.02  # identical pixels in the partner are rare


def test_mix_without_batch_ops_gives_one_hot(cifar_images):
    x = cifar_images[:4].float() / 255
    out, soft = Augmenter("crop_flip").mix(x, torch.tensor([0, 1, 2, 3]), 5)
    assert out is x and torch.equal(soft, torch.eye(5)[:4])
