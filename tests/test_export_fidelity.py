"""Fidelity is measured, not declared: per-op pixel agreement with the Augmenter on real images, per-policy draw
distributions over >= 10,000 samples (chi-square / KS), and a report that names every approximation."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import scipy.stats
import torch

from search_spaces import Magnitude, OpConfig, Policy, preset
from search_spaces.export import fidelity_report
from search_spaces.exports.fidelity import (
    MEASURED,
    chi_square,
    distribution_test,
    draws,
    ks_2samp,
    measure_ops,
    op_agreement,
)
from trainers.data import load_dataset

warnings.filterwarnings("ignore", category=UserWarning)
N = 10_000


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_dataset("sample").images[:8]


def test_stored_table_matches_a_fresh_measurement(images):
    ops = ["rotate", "shear_y", "translate_y", "color", "posterize", "equalize", "cutout", "pad_crop", "solarize_add"]
    fresh = measure_ops(images, ("torchvision", "kornia"), ops=ops)
    for target, rows in fresh.items():
        for op, row in rows.items():
            assert row["level"] == MEASURED[target][op]["level"], (target, op, row)
    alb = measure_ops(images, ("albumentations",), ops=["rotate", "equalize", "solarize_add"])["albumentations"]
    assert [alb[o]["level"] for o in ("rotate", "equalize", "solarize_add")] == ["exact", "approximate", "unsupported"]
    assert alb["equalize"]["agreement"] < 0.9  # albumentations' "pil" equalize really bins differently


def test_per_op_agreement_is_a_pixel_comparison(images):
    exact = op_agreement("kornia", "rotate", 9.0, images, "bilinear")
    assert exact["agreement"] == 1.0 and exact["max_diff"] <= 1
    off = op_agreement("albumentations", "shear_x", 0.27, images, "bilinear")  # centre shear + rounded shift
    assert off["agreement"] < 0.99 and off["max_diff"] > 10


def test_measured_table_covers_every_target_and_op():
    assert set(MEASURED) == {"torchvision", "kornia", "albumentations", "timm"}
    assert all(row["level"] == "exact" for row in MEASURED["torchvision"].values())
    assert MEASURED["kornia"]["solarize_add"]["level"] == "unsupported"
    assert MEASURED["timm"]["rotate"]["level"] == "approximate"  # timm fills with the dataset mean


SMALL_RA = Policy("rand_augment", num_ops=2, ops=(
    OpConfig("rotate", 0.8, Magnitude(low=0.0, high=30.0, random_sign=True)),
    OpConfig("posterize", 0.5, Magnitude(low=4, high=8)),
    OpConfig("equalize", 0.6, weight=2.0), OpConfig("identity", 1.0)))


@pytest.mark.parametrize(("target", "policy"), [
    ("kornia", preset("autoaugment_cifar10")), ("kornia", preset("trivialaugment_wide")),
    ("torchvision", SMALL_RA), ("albumentations", preset("crop_flip_cutout")),
])
def test_export_draws_match_the_policy_over_10000_samples(target, policy):
    result = distribution_test(policy, target, n=N)
    assert result["n"] >= 10_000 and result["passed"], result
    assert result["magnitudes"] or all(o.magnitude is None for o in policy.all_ops())


def test_timm_draws_differ_from_the_policy():
    result = distribution_test(preset("randaugment"), "timm", n=N)
    assert not result["passed"] and result["ops_p"] < 1e-6  # timm's op set adds Invert/SolarizeAdd


def test_the_distribution_test_detects_a_changed_probability():
    changed = Policy("rand_augment", num_ops=2, ops=(SMALL_RA.ops[0], SMALL_RA.ops[1],
                                                     OpConfig("equalize", 0.75, weight=2.0), SMALL_RA.ops[3]))
    ours, theirs = draws("augmenter", SMALL_RA, N), draws("kornia", changed, N, seed=1)
    seq = lambda ds: Counter(tuple(op for op, _ in d) for d in ds)  # noqa: E731
    assert chi_square(seq(ours), seq(theirs))[2] < 1e-3


def test_statistics_agree_with_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=500), rng.normal(0.1, 1.0, size=700)
    d, p = ks_2samp(a, b)
    ref = scipy.stats.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue, rel=0.05)
    ca, cb = Counter({"x": 120, "y": 80, "z": 50}), Counter({"x": 100, "y": 100, "z": 60})
    stat, dof, p = chi_square(ca, cb)
    ref = scipy.stats.chi2_contingency(np.array([[120, 80, 50], [100, 100, 60]]), correction=False)
    assert stat == pytest.approx(ref.statistic) and dof == ref.dof and p == pytest.approx(ref.pvalue)


def test_report_levels_and_named_approximations():
    policy = Policy("sequential", ops=(OpConfig("rotate", 0.5, Magnitude(9.0, random_sign=True)),
                                       OpConfig("equalize", 0.5)))
    report = fidelity_report(policy)
    assert report["torchvision"]["fidelity"] == report["kornia"]["fidelity"] == "exact"
    alb = report["albumentations"]
    assert alb["fidelity"] == "approximate" and alb["ops"] == {"rotate": "exact", "equalize": "approximate"}
    assert any(n.startswith("equalize: approximate (pixel agreement") and "Equalize(mode='pil')" in n
               for n in alb["notes"])
    assert report["timm"]["fidelity"] == "unsupported"
    solar = fidelity_report(Policy("sequential", ops=(OpConfig("solarize_add", 1.0, Magnitude(0.2)),)))
    assert solar["kornia"]["fidelity"] == "unsupported" and "solarize_add" in solar["kornia"]["notes"][0]


def test_report_with_samples_runs_the_distribution_test():
    report = fidelity_report(SMALL_RA, samples=N, targets=("kornia", "timm"))
    assert report["kornia"]["distribution"]["passed"] and report["kornia"]["fidelity"] == "exact"
    assert report["timm"]["fidelity"] == "unsupported"  # weights and per-op probabilities: no timm string
