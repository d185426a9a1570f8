"""Proxy trials: what one search trial runs.

* :func:`train_proxy`: train a small model on the labelled split with a candidate policy or schedule (after
  the fixed crop+flip base augmentation, which can be switched off) and report validation accuracy every
  epoch; it can continue from a checkpoint (``resume``) and hand out checkpoints (``on_state``), which is
  what population-based training needs.
* :class:`DensityMatcher`: Fast AutoAugment's density matching (Lim et al. 2019). Train ``k`` fold models
  once without the policy; a policy's score is the mean accuracy of those models on their held-out folds
  augmented by it (policies that keep augmented images "in distribution" score high). Seconds per trial.

Both report the same metric (``val_acc``), so campaigns treat them alike. Training data lives as one uint8
tensor on the device; the policy runs through the batched :class:`~search_spaces.Augmenter` there.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from search_spaces import Augmenter, Policy, Schedule, ScheduledAugmenter, load_policy_or_schedule, make_augmenter

from .data import ImageData, Splits, stratified_kfold
from .engine import (
    EpochMetrics,
    FitResult,
    evaluate,
    fit,
    make_optimizer,
    mixing_loss,
    restore_checkpoint,
    select_device,
    state_dict_for_checkpoint,
)
from .models import build_seeded
from .settings import RunSettings, TrainingKnobs

__all__ = ["ProxyConfig", "ProxyData", "train_proxy", "build_augment", "AugmentPipeline", "DensityMatcher",
           "shared_checkpoint", "accuracy_se"]


class ProxyConfig(TrainingKnobs, RunSettings):
    """The proxy budget: model size, schedule and seed of one trial.

    Defaults: a 0.1M-parameter ProxyCNN for 8 epochs, about a minute on 4,000 CIFAR images on 2 CPU cores
    and about a second on a modern GPU; widen (``width=64``) and lengthen on a GPU.
    """

    eval_every: int = Field(1, ge=1)  # evaluate the validation split every this many epochs (and after the last)

    @classmethod
    def from_knobs(cls, knobs: TrainingKnobs, **run: Any) -> ProxyConfig:
        """``knobs`` (e.g. a campaign's proxy budget or target recipe; fields a subclass adds are not the
        trainer's) run with ``run``'s seed, threads and evaluation interval."""
        return cls(**{name: getattr(knobs, name) for name in TrainingKnobs.model_fields}, **run)

    def build(self, num_classes: int, in_channels: int) -> nn.Module:
        """The proxy model, initialised from ``seed`` without touching the global RNG."""
        kwargs = {"width": self.width, "depth": self.depth} if self.model == "proxy" else {}
        return build_seeded(self.model, num_classes, in_channels, kwargs, self.seed)


@dataclass
class ProxyData:
    """Labelled train and validation tensors (uint8 images, int64 labels, CPU) for proxy trials."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @classmethod
    def from_dataset(cls, data: ImageData, splits: Splits) -> ProxyData:
        """Slice ``data`` by ``splits.train`` and ``splits.val``."""
        train, val = torch.as_tensor(splits.train), torch.as_tensor(splits.val)
        return cls(data.images[train].contiguous(), data.labels[train].contiguous(),
                   data.images[val].contiguous(), data.labels[val].contiguous(), tuple(data.classes))


class AugmentPipeline:
    """Stages run in order on a float [0, 1] batch; ``set_epoch`` reaches the stages that follow a schedule."""

    def __init__(self, stages: list[Augmenter | ScheduledAugmenter],
                 policy_stage: Augmenter | ScheduledAugmenter | None = None) -> None:
        self.stages = stages
        self.policy_stage = policy_stage  # the policy's (or schedule's) stage, after the base augmentation

    def set_epoch(self, epoch: int) -> None:
        """Switch scheduled stages to 0-based ``epoch`` (``trainers.engine.fit`` calls this every epoch)."""
        for stage in self.stages:
            if isinstance(stage, ScheduledAugmenter):
                stage.set_epoch(epoch)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x, generator=generator)
        return x


def build_augment(policy: Policy | Schedule | str | None, base: bool = True,
                  epochs: int | None = None) -> AugmentPipeline | None:
    """The per-batch augmentation: crop+flip (if ``base``), then ``policy``; None when there is neither.

    ``policy`` is a :class:`Policy`, a :class:`Schedule`, a preset name or a policy/schedule file. A schedule
    follows the epoch that ``trainers.engine.fit`` sets (``set_epoch``); ``epochs`` (the run's length)
    stretches it to the run, None maps epochs one to one.
    """
    stage = make_augmenter(policy, epochs) if policy is not None else None
    stages = ([Augmenter("crop_flip")] if base else []) + ([stage] if stage is not None else [])
    return AugmentPipeline(stages, stage) if stages else None


def _has_batch_ops(source: Policy | Schedule) -> bool:
    segments = source.segments if isinstance(source, Schedule) else ((0, 1, source),)
    return any(seg[2].batch_ops for seg in segments)


StateFn = Callable[[], dict[str, Any]]


def train_proxy(policy: Policy | Schedule | str | None, data: ProxyData, config: ProxyConfig, *,
                device: torch.device | None = None,
                on_epoch: Callable[[EpochMetrics], bool | None] | None = None,
                resume: Mapping[str, Any] | None = None,
                on_state: Callable[[EpochMetrics, StateFn], bool | None] | None = None) -> FitResult:
    """Train the proxy model with ``policy`` on ``data.train_*`` and evaluate on ``data.val_*`` each epoch.

    ``policy`` is a policy, a schedule (the policy of each epoch; stretched to ``config.epochs``), a preset
    name, a policy/schedule file or None. ``on_epoch`` gets each epoch's metrics (Ray Tune reports from it)
    and may return True to stop. ``resume`` is a checkpoint (``trainers.engine.state_dict_for_checkpoint``:
    model, optimizer, epoch) to continue from. ``on_state(metrics, snapshot)`` is called after ``on_epoch``;
    ``snapshot()`` returns such a checkpoint of this epoch (CPU copies), taken only when called.
    Raises :class:`~trainers.engine.TrainingDiverged` on a NaN loss.
    """
    source = load_policy_or_schedule(policy) if policy is not None else None
    device = device or select_device()
    model = config.build(data.num_classes, data.channels)
    train_config = config.train_config()
    optimizer = make_optimizer(model, train_config)
    # a deep copy: the optimizer would otherwise adopt the checkpoint's momentum tensors and update them in
    # place, and the next trial continuing the same shared checkpoint would start from a different state
    start_epoch = restore_checkpoint(copy.deepcopy(dict(resume)), model, optimizer) if resume is not None else 0
    augment = build_augment(source, config.base_augment, epochs=config.epochs)
    loss_fn = None
    if source is not None and _has_batch_ops(source):
        loss_fn = mixing_loss(augment.policy_stage, data.num_classes, config.label_smoothing)

    def callback(m: EpochMetrics) -> bool | None:
        stop = on_epoch(m) if on_epoch is not None else None
        if on_state is not None:
            stop = on_state(m, lambda: state_dict_for_checkpoint(model, optimizer, m.epoch)) or stop
        return stop

    return fit(model, data.train_x, data.train_y, val_x=data.val_x, val_y=data.val_y, config=train_config,
               device=device, augment=augment, loss_fn=loss_fn,
               on_epoch=callback if on_epoch is not None or on_state is not None else None,
               start_epoch=start_epoch, optimizer=optimizer)


def shared_checkpoint(data: ProxyData, config: ProxyConfig, epochs: int, *,
                      device: torch.device | None = None) -> dict[str, Any]:
    """The late-phase objective's shared start: train ``config`` (its full schedule: the learning rate at each
    step is that of a ``config.epochs`` run) with the base augmentation only, stop after ``epochs`` epochs and
    return the CPU checkpoint (model, optimizer, epoch; ``train_proxy(..., resume=...)`` continues from it).

    Every trial continuing from it shares initial weights, data order and augmentation seeds of the remaining
    epochs (they depend on ``(seed, epoch)`` only), so two trials differ only by their policy.
    """
    if not 1 <= epochs < config.epochs:
        raise ValueError(f"shared epochs must be in [1, {config.epochs - 1}], got {epochs}")
    held: dict[str, Any] = {}

    def on_state(m: EpochMetrics, snapshot: StateFn) -> bool:
        if m.epoch >= epochs:
            held["state"] = snapshot()
            return True
        return False

    train_proxy(None, data, config.model_copy(update={"eval_every": config.epochs}), device=device, on_state=on_state)
    return held["state"]


def accuracy_se(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` images."""
    return float(np.sqrt(max(acc * (1 - acc), 0.0) / max(n, 1)))


class DensityMatcher:
    """Fast AutoAugment's density matching: ``k`` fold models trained once, then cheap policy scores.

    Picklable (state dicts and tensors only), so one instance ships to every trial through Ray's object store.
    """

    def __init__(self, config: ProxyConfig, classes: tuple[str, ...], folds: list[dict[str, Any]]) -> None:
        self.config, self.classes, self.folds = config, classes, folds
        self._models: dict[str, list[nn.Module]] = {}

    @classmethod
    def fit(cls, data: ProxyData, config: ProxyConfig, k: int = 2, device: torch.device | None = None,
            on_fold: Callable[[int, FitResult], None] | None = None) -> DensityMatcher:
        """Train one model per fold on the other folds of ``data.train_*`` (base augmentation only)."""
        device = device or select_device()
        labels = data.train_y.numpy()
        folds = []
        for i, (fit_idx, held_idx) in enumerate(stratified_kfold(np.arange(len(labels)), labels, k, config.seed)):
            fit_idx, held_idx = torch.as_tensor(fit_idx), torch.as_tensor(held_idx)
            fold = ProxyData(data.train_x[fit_idx], data.train_y[fit_idx], data.train_x[held_idx],
                             data.train_y[held_idx], data.classes)
            model = config.build(data.num_classes, data.channels)
            result = fit(model, fold.train_x, fold.train_y, val_x=fold.val_x, val_y=fold.val_y,
                         config=config.train_config(), device=device, augment=build_augment(None, config.base_augment))
            if on_fold is not None:
                on_fold(i, result)
            folds.append({"state": {k: v.cpu() for k, v in model.state_dict().items()},
                          "x": fold.val_x, "y": fold.val_y, "mean": result.mean, "std": result.std,
                          "clean_acc": result.final_val_acc})
        return cls(config, data.classes, folds)

    @property
    def clean_accuracy(self) -> float:
        """Mean held-out accuracy without any policy (the reference a policy's score is read against)."""
        return float(np.mean([f["clean_acc"] for f in self.folds]))

    def _fold_models(self, device: torch.device) -> list[nn.Module]:
        key = str(device)
        if key not in self._models:
            models = []
            for f in self.folds:
                model = self.config.build(len(self.classes), int(f["x"].shape[1]))
                model.load_state_dict(f["state"])
                models.append(model.to(device).eval())
            self._models[key] = models
        return self._models[key]

    def score(self, policy: Policy | str, seed: int = 0, device: torch.device | None = None) -> float:
        """Mean accuracy of the fold models on their held-out folds augmented by ``policy``."""
        device = device or select_device()
        augmenter = Augmenter(policy)
        generator = torch.Generator().manual_seed(seed)
        accuracies = []
        for f, model in zip(self.folds, self._fold_models(device), strict=True):
            x = augmenter(f["x"], generator=generator)
            acc, _ = evaluate(model, x, f["y"], device=device, mean=f["mean"], std=f["std"])
            accuracies.append(acc)
        return float(np.mean(accuracies))

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "classes": self.classes, "folds": self.folds, "_models": {}}
