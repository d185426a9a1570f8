"""Proxy trials on real CIFAR-10 images from the bundled sample: learning, seeding, density matching."""

from __future__ import annotations

import pickle

import pytest
import torch

from search_spaces import BatchOp, Policy, preset
from trainers.data import load_dataset, make_splits
from trainers.engine import TrainingDiverged
from trainers.proxy import DensityMatcher, ProxyConfig, ProxyData, build_augment, train_proxy

TINY = ProxyConfig(width=8, epochs=2, batch_size=64, num_threads=2)


@pytest.fixture(scope="module")
def data() -> ProxyData:
    sample = load_dataset("sample")
    splits = make_splits(sample.labels.numpy(), train_size=1000, val_size=500, seed=0)
    return ProxyData.from_dataset(sample, splits)


def test_proxy_learns_above_chance_and_reports_every_epoch(data):
    seen = []
    result = train_proxy("crop_flip", data, ProxyConfig(width=16, epochs=4, batch_size=64), on_epoch=seen.append)
    assert [m.epoch for m in seen] == [1, 2, 3, 4]
    assert result.final_val_acc > 0.2  # chance is 0.1


def test_same_seed_same_result_on_cpu(data):
    a = train_proxy("randaugment", data, TINY).history
    b = train_proxy("randaugment", data, TINY).history
    assert [(m.train_loss, m.val_acc) for m in a] == [(m.train_loss, m.val_acc) for m in b]


def test_batch_ops_and_no_base_augmentation(data):
    mixing = (BatchOp("cutmix", 0.5), BatchOp("mixup", 0.5))
    policy = Policy("sequential", ops=preset("crop_flip").ops, batch_ops=mixing)
    result = train_proxy(policy, data, ProxyConfig(width=8, epochs=1, batch_size=64, base_augment=False))
    assert result.final_val_acc is not None
    assert build_augment(None, base=False) is None


def test_divergence_is_reported(data):
    with pytest.raises(TrainingDiverged, match="non-finite"):
        train_proxy(None, data, ProxyConfig(width=8, epochs=1, batch_size=64, lr=1e30))


def test_density_matcher_scores_policies_and_pickles(data):
    matcher = DensityMatcher.fit(data, TINY, k=2)
    assert len(matcher.folds) == 2
    held = torch.cat([f["y"] for f in matcher.folds])
    assert sorted(held.tolist()) == sorted(data.train_y.tolist())  # every train image held out once
    clone = pickle.loads(pickle.dumps(matcher))
    assert clone.score("none") == pytest.approx(matcher.clean_accuracy)
    assert clone.score("randaugment", seed=1) == clone.score("randaugment", seed=1)
    assert 0.0 <= clone.score("autoaugment_cifar10") <= 1.0
