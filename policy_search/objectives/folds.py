"""``val_folds: K``: K-fold validation for sources too small for a large validation split.

A 1-point difference needs about 10,000 validation images to separate (binomial standard error 0.46 points at
70% accuracy). When the source has fewer, the campaign pools its training and validation images, splits the
pool into ``K`` stratified folds (seeded) and scores every candidate ``K`` times: fold ``k`` validates a model
trained on the other ``K - 1`` folds. The trial reports the accuracy over the whole pool (every image validated
once), so its standard error is that of ``train_size + val_size`` images, at ``K`` times the cost. Fast
AutoAugment scores its candidates the same way (K = 5).

Each fold trains on ``(K - 1) / K`` of the pool: with ``val_size = train_size / (K - 1)`` a fold trains on
exactly ``train_size`` images (e.g. 4,000 + 1,000 images and ``K = 5``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray.tune.schedulers import TrialScheduler

from search_spaces import Policy, Schedule
from trainers.proxy import ProxyData, accuracy_se

from .base import Objective, Report

__all__ = ["FoldedObjective", "make_folds"]


def make_folds(data: ProxyData, k: int, seed: int) -> list[ProxyData]:
    """The pool ``train + val`` of ``data`` in ``k`` stratified folds (seeded): fold ``i`` validates on part
    ``i`` and trains on the rest. Every image is in exactly one validation part."""
    if k < 2:
        raise ValueError(f"val_folds: need at least 2 folds to rotate, got {k}")
    x = torch.cat([data.train_x, data.val_x])
    y = torch.cat([data.train_y, data.val_y])
    rng = np.random.default_rng(seed)
    part = np.empty(len(y), dtype=np.int64)
    offset = 0
    for c in np.unique(y.numpy()):  # deal each class round-robin over the folds (continuing across classes)
        idx = rng.permutation(np.flatnonzero(y.numpy() == c))
        part[idx] = (offset + np.arange(len(idx))) % k
        offset += len(idx)
    smallest = int(np.bincount(part, minlength=k).min())
    if smallest < 1:
        raise ValueError(f"val_folds: {k} folds of {len(y)} images leave a fold empty")
    folds = []
    for i in range(k):
        val, train = torch.as_tensor(np.flatnonzero(part == i)), torch.as_tensor(np.flatnonzero(part != i))
        folds.append(ProxyData(x[train].contiguous(), y[train].contiguous(), x[val].contiguous(),
                               y[val].contiguous(), data.classes))
    return folds


@dataclass(frozen=True)
class FoldedObjective:
    """``inner`` scored on every fold; one report at the end: the pooled validation accuracy."""

    inner: Objective
    folds: int
    seed: int = 0

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def max_t(self) -> int:
        return self.inner.max_t

    def prepare(self, data: ProxyData) -> list[Any]:
        return [self.inner.prepare(fold) for fold in make_folds(data, self.folds, self.seed)]

    def run(self, policy: Policy | Schedule, shared: list[Any], report: Report) -> None:
        correct, seen, fold_accs, last = 0.0, 0, [], {}
        for payload in shared:
            final: dict[str, Any] = {}
            self.inner.run(policy, payload, final.update)  # keep the fold's last report
            n = _num_val(payload)
            fold_accs.append(float(final["val_acc"]))
            correct += final["val_acc"] * n
            seen += n
            last = final
        acc = correct / seen
        report({**{k: v for k, v in last.items() if k not in ("val_acc", "val_se", "val_loss")},
                "val_acc": acc, "val_se": accuracy_se(acc, seen), "epoch": self.max_t,
                "fold_val_acc": fold_accs, "folds": self.folds})

    def scheduler(self) -> TrialScheduler | None:
        return None  # one report per trial, after the last fold

    def describe(self) -> dict[str, Any]:
        inner = self.inner.describe() if hasattr(self.inner, "describe") else {"objective": self.inner.name}
        return {**inner, "val_folds": self.folds}


def _num_val(payload: Any) -> int:
    """Validation images of one fold's prepared state (ProxyData, or a dict holding it as ``data``)."""
    data = payload["data"] if isinstance(payload, dict) else payload
    return len(data.val_y)
