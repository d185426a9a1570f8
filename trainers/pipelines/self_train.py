"""Noisy-Student self-training (Xie et al. 2020) on the shared engine.

Stages of a run: ``teacher`` (trained on the labelled split with the policy and dropout), then for each
iteration i = 1..``iterations``: the current teacher labels the unlabelled pool *without noise* (eval mode,
no augmentation), the labels are thresholded and balanced per class (:func:`pseudo_label`, cached as
``arrays/pseudo-<i>.npz``), and stage ``student-<i>`` trains an equal-or-larger student from scratch on
labelled + pseudo-labelled images *with noise* (the policy, dropout, stochastic depth); it becomes the next
teacher. Labelled rows are one-hot targets smoothed by ``label_smoothing`` (so are hard pseudo-labels;
soft pseudo-labels are the teacher's softmax at ``temperature``, unsmoothed), all in one (N, K) tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from search_spaces import Augmenter

from ..engine import channel_stats, evaluate, mixing_loss, predict_logits, select_device
from ..models import build_seeded
from ..proxy import build_augment
from .common import PipelineError, Reporter, Run, load_policy_arg, run_name
from .teacher import ModelSpec, TeacherStudentConfig, check_model, save_model

__all__ = ["PseudoLabels", "SelfTrainConfig", "pseudo_label", "run_self_train"]


class SelfTrainConfig(TeacherStudentConfig):
    """A Noisy-Student run. Defaults run on the bundled sample in about a minute on 2 CPU cores; the natural
    setting is ``dataset="cifar10-jpeg", train_size=4000`` with the rest as the unlabelled pool.

    ``policy`` is the student's input noise (after ``base_augment``), also used for the teacher; the student
    must be equal or larger than the teacher (parameter count); ``epochs`` are per student."""

    unlabeled_size: int | None = Field(None, ge=1)  # None: every image outside train/val/test
    iterations: int = Field(2, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)  # before the final layer, teacher and students (the paper's 0.5)
    stochastic_depth: float = Field(0.0, ge=0, lt=1)  # students only; residual models only (resnet18: 0.2)
    soft: bool = True  # soft pseudo-labels (teacher softmax); False: hard (one-hot, label-smoothed)
    temperature: float = Field(1.0, gt=0)  # of the soft pseudo-labels
    threshold: float = Field(0.3, ge=0, le=1)  # keep pool images whose max teacher probability is >= this
    balance: bool = True  # cap/duplicate to per_class pseudo-labels per class
    per_class: int | None = Field(None, ge=1)  # None: pool size // classes

    @model_validator(mode="after")
    def _student_not_smaller(self) -> SelfTrainConfig:
        t_params = check_model("teacher", self.teacher_model, self.teacher_kwargs, dropout=self.dropout)
        s_params = check_model("student", self.student_model, self.student_kwargs, dropout=self.dropout,
                               stochastic_depth=self.stochastic_depth)
        if s_params < t_params:
            raise ValueError(f"student_model: the student must be equal or larger than the teacher: "
                             f"{self.student_model}({self.student_kwargs}) has {s_params:,} parameters, "
                             f"{self.teacher_model}({self.teacher_kwargs}) {t_params:,}")
        return self


@dataclass
class PseudoLabels:
    """Pseudo-labels of an unlabelled pool of N images.

    ``index`` (M,): pool rows to train on, after thresholding and balancing (a row may repeat); ``targets``
    (M, K) float32: their targets; ``predicted``/``confidence`` (N,): the teacher's argmax and max
    probability (temperature 1) for every pool image.
    """

    index: torch.Tensor
    targets: torch.Tensor
    predicted: torch.Tensor
    confidence: torch.Tensor

    def stats(self, true_labels: torch.Tensor | None = None) -> dict[str, Any]:
        """Counts and fractions; with the pool's hidden ``true_labels`` also the pseudo-label accuracy on the
        kept images (``pseudo_acc``) and the teacher's accuracy on the whole pool (``pool_acc``)."""
        n = len(self.predicted)
        kept = torch.unique(self.index)
        out: dict[str, Any] = {"pool": n, "pseudo_labels": len(self.index), "kept": len(kept),
                               "kept_fraction": len(kept) / n if n else 0.0,
                               "per_class": torch.bincount(self.targets.argmax(1), minlength=self.targets.shape[1])
                               .tolist() if len(self.index) else []}
        if true_labels is not None and n:
            true_labels = true_labels.cpu()
            out["pool_acc"] = int((self.predicted == true_labels).sum()) / n
            out["pseudo_acc"] = int((self.predicted[kept] == true_labels[kept]).sum()) / len(kept) if len(kept) \
                else float("nan")
        return out


def pseudo_label(logits: torch.Tensor, *, soft: bool = True, temperature: float = 1.0, threshold: float = 0.0,
                 per_class: int | None = None, label_smoothing: float = 0.0, seed: int = 0) -> PseudoLabels:
    """Turn teacher logits (N, K) of an unlabelled pool into training targets.

    1. Confidence = max softmax probability (temperature 1); images below ``threshold`` are dropped.
    2. ``per_class`` (balancing, Noisy Student): each class (by the teacher's argmax) keeps at most
       ``per_class`` images, highest confidence first; a class with fewer (but some) is filled up to
       ``per_class`` by duplication: whole copies, then a seeded random sample of the remainder.
    3. Targets: ``soft`` -> softmax(logits / temperature); hard -> one-hot smoothed by ``label_smoothing``.
    """
    logits = logits.detach().float().cpu()
    n, k = logits.shape
    confidence, predicted = F.softmax(logits, 1).max(1)
    passed = torch.nonzero(confidence >= threshold).flatten()
    if per_class is None:
        index = passed
    else:
        rng = np.random.default_rng(seed)
        parts = []
        for c in range(k):
            rows = passed[predicted[passed] == c]
            order = np.lexsort((rows.numpy(), -confidence[rows].numpy()))  # confidence desc, then index
            rows = rows[torch.as_tensor(order, dtype=torch.long)][:per_class]
            if 0 < len(rows) < per_class:
                copies, rest = divmod(per_class, len(rows))
                extra = torch.as_tensor(rng.choice(len(rows), size=rest, replace=False), dtype=torch.long)
                rows = torch.cat([rows.repeat(copies), rows[extra]])
            parts.append(rows)
        index = torch.cat(parts) if parts else passed[:0]
    if soft:
        targets = F.softmax(logits[index] / temperature, 1)
    else:
        targets = F.one_hot(predicted[index], k).float() * (1 - label_smoothing) + label_smoothing / k
    return PseudoLabels(index.long(), targets.float(), predicted, confidence)


def _one_hot(y: torch.Tensor, k: int, smoothing: float) -> torch.Tensor:
    return F.one_hot(y, k).float() * (1 - smoothing) + smoothing / k


def run_self_train(config: SelfTrainConfig, *, output: str = "results", name: str | None = None,
                   resume: bool = False, device: str | torch.device | None = None,
                   reporter: Reporter | None = None) -> dict[str, Any]:
    """Run (or ``resume``) Noisy-Student self-training in ``<output>/<name>/``; returns the final metrics
    (``final.json``): test accuracy of the teacher and of every student, and per iteration the pseudo-label
    counts, kept fraction and pseudo-label accuracy against the pool's hidden labels. Exports the last
    student as ``model.pt`` (a model checkpoint, usable as a distillation teacher)."""
    dev = select_device(str(device) if device is not None else None)
    policy = load_policy_arg(config.policy)
    data, splits = config.split_data()
    if len(splits.unlabeled) == 0:
        raise PipelineError(f"unlabeled_size: no images left for the unlabelled pool in {config.dataset} after "
                            f"train/val/test = {config.train_size}/{config.val_size}/{config.test_size}")
    run = Run.open(output, name or run_name("self-train", config.dataset, config.seed), config.to_dict(),
                   resume=resume, reporter=reporter)
    splits = run.save_splits(splits)
    k, channels = len(data.classes), int(data.images.shape[1])
    train, val, test, pool = (torch.as_tensor(getattr(splits, s)) for s in ("train", "val", "test", "unlabeled"))
    train_x, train_y = data.images[train], data.labels[train]
    pool_x, pool_y = data.images[pool], data.labels[pool]  # pool_y: hidden, for diagnostics only
    test_x, test_y = data.images[test], data.labels[test]
    val_x, val_y = (data.images[val], data.labels[val]) if len(val) else (None, None)
    augment = build_augment(policy, config.base_augment)
    batch_ops = policy is not None and bool(policy.batch_ops)

    model = build_seeded(config.teacher_model, k, channels, config.teacher_kwargs, config.seed,
                         dropout=config.dropout)
    res = run.stage("teacher", model, train_x, train_y, device=dev, val_x=val_x, val_y=val_y, augment=augment,
                    config=config.train_config(epochs=config.teacher_epochs),
                    loss_fn=mixing_loss(Augmenter(policy), k, config.label_smoothing) if batch_ops else None)
    mean, std = res.mean, res.std
    teacher_acc, _ = evaluate(model, test_x, test_y, device=dev, mean=mean, std=std)
    iterations: list[dict[str, Any]] = []
    per_class = (config.per_class or max(1, len(pool) // k)) if config.balance else None
    labelled_targets = _one_hot(train_y, k, config.label_smoothing)
    for i in range(1, config.iterations + 1):
        cached = run.load_arrays(f"pseudo-{i}")
        if cached is None:
            logits = predict_logits(model, pool_x, device=dev, mean=mean, std=std)  # eval mode: no noise
            pl = pseudo_label(logits, soft=config.soft, temperature=config.temperature, threshold=config.threshold,
                              per_class=per_class, label_smoothing=config.label_smoothing, seed=config.seed + i)
            run.save_arrays(f"pseudo-{i}", index=pl.index, targets=pl.targets, predicted=pl.predicted,
                            confidence=pl.confidence)
        else:
            pl = PseudoLabels(**cached)
        x = torch.cat([train_x, pool_x[pl.index]])
        y = torch.cat([labelled_targets, pl.targets])
        s_mean, s_std = channel_stats(x)
        student = build_seeded(config.student_model, k, channels, config.student_kwargs, config.seed + i,
                               dropout=config.dropout, stochastic_depth=config.stochastic_depth)
        tc = config.train_config(label_smoothing=0.0, mean=s_mean, std=s_std)  # smoothing is in y
        res = run.stage(f"student-{i}", student, x, y, config=tc, device=dev, val_x=val_x, val_y=val_y,
                        augment=augment, loss_fn=mixing_loss(Augmenter(policy), k, 0.0) if batch_ops else None)
        student_acc, _ = evaluate(student, test_x, test_y, device=dev, mean=s_mean, std=s_std)
        iterations.append({"iteration": i, "teacher_test_acc": teacher_acc, "student_test_acc": student_acc,
                           "student_val_acc": res.final_val_acc, "student_epochs": len(res.history),
                           **pl.stats(pool_y)})
        model, mean, std, teacher_acc = student, s_mean, s_std, student_acc  # the student teaches next
    spec = ModelSpec(config.student_model, dict(config.student_kwargs), k, channels, mean, std, tuple(data.classes))
    save_model(run.folder / "model.pt", model, spec, config.epochs)
    return run.finish({"pipeline": "self-train", "test_acc": teacher_acc,
                       "teacher_test_acc": iterations[0]["teacher_test_acc"], "iterations": iterations,
                       "splits": splits.summary(), "device": str(dev)})
