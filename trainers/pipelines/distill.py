"""Knowledge distillation (Hinton et al. 2015) with a consistent teacher (Beyer et al. 2022).

Stages of a run: ``teacher`` (only when no teacher checkpoint is given: trained on the labelled split with
the policy) and ``student``. The student's loss is

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, label)

with the teacher's logits computed on the fly, in eval mode, on exactly the augmented (and optionally mixed)
batch the student sees: the engine augments each batch once and hands it to the loss, so the policy is
sampled once per batch for both networks. ``mixup > 0`` is Beyer's *function matching* (mixup on that batch
before both networks see it). ``alpha = 1`` is soft-only: no labels are used, and ``unlabeled_size`` adds
that many images from outside the splits to the student's training set.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from search_spaces import Augmenter, BatchOp, Policy, preset

from ..engine import AUX_WEIGHT, channel_stats, evaluate, mixing_loss, select_device, step_generator
from ..models import aux_logits, build_seeded, main_logits
from ..proxy import build_augment
from .common import PipelineError, Reporter, Run, load_policy_arg, run_name, stage_summary
from .teacher import ModelSpec, TeacherStudentConfig, check_model, count_params, load_model, renorm, save_model

__all__ = ["DistillConfig", "DistillLoss", "kd_loss", "run_distill"]


class DistillConfig(TeacherStudentConfig):
    """A distillation run. Defaults suit the bundled sample on 2 CPU cores (about a minute in all).

    ``teacher``: path of a model checkpoint (:mod:`trainers.pipelines.teacher`); None trains one first
    (``teacher_model``/``teacher_kwargs``/``teacher_epochs``, ignored when a checkpoint is given).
    """

    train_size: int = Field(2000, ge=1)
    unlabeled_size: int = Field(0, ge=0)  # extra unlabelled images for the student (soft-only: needs alpha = 1)
    teacher: str | None = None
    teacher_kwargs: dict[str, Any] = Field(default_factory=lambda: {"width": 32})
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)  # weight of the KD term; 1 = soft-only, 0 = the plain-CE twin
    mixup: float = Field(0.0, ge=0)  # Beta(mixup, mixup) mixup on every batch before both networks (1.0 = U[0, 1])
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # CE term and the in-run teacher (smoothed teachers distil worse)

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_path(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if self.unlabeled_size and self.alpha != 1:
            raise ValueError(f"unlabeled_size: unlabelled images have no labels: needs alpha = 1 (soft-only), "
                             f"got alpha = {self.alpha}")
        policy = load_policy_arg(self.policy)
        if self.mixup and policy is not None and policy.batch_ops:
            raise ValueError("mixup: the policy already has batch ops (cutmix/mixup); set mixup to 0")
        if self.teacher is None:
            check_model("teacher", self.teacher_model, self.teacher_kwargs)
        elif not os.path.isfile(self.teacher):
            raise ValueError(f"teacher: no such checkpoint file: {self.teacher}")
        check_model("student", self.student_model, self.student_kwargs, dropout=self.dropout)
        return self


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, target: torch.Tensor, *,
            temperature: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, target)``, batch means.

    ``target``: int labels (B,) or soft targets (B, K); unused when ``alpha == 1``. ``teacher_logits`` may be
    None when ``alpha == 0``. Computed in float32 at least (float64 inputs stay float64).
    """
    s = _at_least_f32(student_logits)
    loss = s.new_zeros(())
    if alpha > 0:
        if teacher_logits is None:
            raise ValueError("kd_loss: teacher_logits are required when alpha > 0")
        t = _at_least_f32(teacher_logits)
        kl = F.kl_div(F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1), reduction="batchmean",
                      log_target=True)
        loss = loss + alpha * temperature**2 * kl
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(s, target, label_smoothing=label_smoothing)
    return loss


def _at_least_f32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


class DistillLoss:
    """A ``fit`` loss_fn: teacher (frozen, eval mode, no grad) and student on the same batch.

    ``student_norm``/``teacher_norm`` are (mean, std) pairs: the engine normalises the batch with the
    student's statistics, and the teacher gets it converted to its own. ``mixer``: a policy whose batch ops
    run on the batch first (function matching), with draws that replay on resume.
    """

    def __init__(self, teacher: nn.Module, *, num_classes: int, temperature: float, alpha: float,
                 label_smoothing: float = 0.0, student_norm: tuple | None = None, teacher_norm: tuple | None = None,
                 mixer: Policy | None = None, labelled: bool = True) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.num_classes, self.temperature, self.alpha = num_classes, temperature, alpha
        self.label_smoothing, self.labelled = label_smoothing, labelled
        self.mixer = Augmenter(mixer) if mixer is not None and mixer.batch_ops else None
        self.convert = renorm(*student_norm, *teacher_norm) if student_norm and teacher_norm else None

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits for a batch normalised the student's way."""
        if self.convert is not None:
            scale, shift = (t.to(x.device) for t in self.convert)
            x = x * scale + shift
        return main_logits(self.teacher(x)).float()

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        target = y
        if self.mixer is not None:
            x, target = self.mixer.mix(x, y.clamp_min(0), self.num_classes, step_generator())
        t = self.teacher_logits(x) if self.alpha > 0 else None
        out = model(x)
        s = main_logits(out)
        kw = {"temperature": self.temperature, "alpha": self.alpha, "label_smoothing": self.label_smoothing}
        loss = kd_loss(s, t, target, **kw)
        for a in aux_logits(out):
            loss = loss + AUX_WEIGHT * kd_loss(a, t, target, **kw)
        return (loss, s) if self.labelled else loss  # unlabelled rows: no train accuracy


def run_distill(config: DistillConfig, *, output: str = "results", name: str | None = None, resume: bool = False,
                device: str | torch.device | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run (or ``resume``) a distillation in ``<output>/<name>/``; returns the final metrics (``final.json``):
    teacher and student test accuracy, parameter counts, per-stage epochs. Exports the student as
    ``model.pt`` (and a trained-in-run teacher as ``teacher.pt``), both model checkpoints."""
    dev = select_device(str(device) if device is not None else None)
    policy = load_policy_arg(config.policy)
    data, splits = config.split_data()
    num_classes, channels = len(data.classes), int(data.images.shape[1])
    teacher, tspec = None, None
    if config.teacher is not None:
        teacher, tspec = load_model(config.teacher, dev)
        if (tspec.num_classes, tspec.in_channels) != (num_classes, channels):
            raise PipelineError(f"teacher: {config.teacher} predicts {tspec.num_classes} classes from "
                                f"{tspec.in_channels} channels; {config.dataset} has {num_classes} and {channels}")
    run = Run.open(output, name or run_name("distill", config.dataset, config.seed), config.to_dict(),
                   resume=resume, reporter=reporter)
    splits = run.save_splits(splits)
    train, val, test, unl = (torch.as_tensor(getattr(splits, k)) for k in ("train", "val", "test", "unlabeled"))
    val_xy = (data.images[val], data.labels[val]) if len(val) else (None, None)
    augment = build_augment(policy, config.base_augment)
    stages: dict[str, dict[str, Any]] = {}

    if teacher is None:
        teacher = build_seeded(config.teacher_model, num_classes, channels, config.teacher_kwargs, config.seed)
        mixes = policy is not None and bool(policy.batch_ops)
        loss_fn = mixing_loss(Augmenter(policy), num_classes, config.label_smoothing) if mixes else None
        res = run.stage("teacher", teacher, data.images[train], data.labels[train], device=dev,
                        config=config.train_config(epochs=config.teacher_epochs), val_x=val_xy[0], val_y=val_xy[1],
                        augment=augment, loss_fn=loss_fn)
        tspec = ModelSpec(config.teacher_model, dict(config.teacher_kwargs), num_classes, channels, res.mean,
                          res.std, tuple(data.classes))
        save_model(run.folder / "teacher.pt", teacher, tspec, config.teacher_epochs)
        stages["teacher"] = stage_summary(res)
    teacher = teacher.to(dev).eval()
    teacher_acc, _ = evaluate(teacher, data.images[test], data.labels[test], device=dev, mean=tspec.mean,
                              std=tspec.std)

    x = torch.cat([data.images[train], data.images[unl]])
    y = torch.cat([data.labels[train], torch.full((len(unl),), -1, dtype=torch.long)])
    mean, std = channel_stats(x)
    student = build_seeded(config.student_model, num_classes, channels, config.student_kwargs, config.seed + 1,
                           dropout=config.dropout)
    mixer = policy if policy is not None and policy.batch_ops else None
    if config.mixup:
        mixer = replace(preset("none"), batch_ops=(BatchOp("mixup", 1.0, config.mixup),), name="function-matching")
    loss = DistillLoss(teacher, num_classes=num_classes, temperature=config.temperature, alpha=config.alpha,
                       label_smoothing=config.label_smoothing, student_norm=(mean, std),
                       teacher_norm=(tspec.mean, tspec.std), mixer=mixer, labelled=len(unl) == 0)
    res = run.stage("student", student, x, y, config=config.train_config(mean=mean, std=std),
                    device=dev, val_x=val_xy[0], val_y=val_xy[1], augment=augment, loss_fn=loss)
    stages["student"] = stage_summary(res)
    student_acc, _ = evaluate(student, data.images[test], data.labels[test], device=dev, mean=mean, std=std)
    save_model(run.folder / "model.pt", student, ModelSpec(config.student_model, dict(config.student_kwargs),
                                                           num_classes, channels, mean, std, tuple(data.classes)),
               config.epochs)
    return run.finish({"pipeline": "distill", "teacher_test_acc": teacher_acc, "student_test_acc": student_acc,
                       "test_acc": student_acc, "student_val_acc": res.final_val_acc,
                       "teacher_params": count_params(teacher), "student_params": count_params(student),
                       "teacher": config.teacher or str(run.folder / "teacher.pt"), "stages": stages,
                       "splits": splits.summary(), "device": str(dev)})

