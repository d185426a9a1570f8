"""What the teacher-student pipelines (distillation, self-training) share: their config base
(:class:`TeacherStudentConfig`), model specs, config-time model checks and exported model checkpoints.

**Model checkpoint** (what a distillation teacher must be): a :func:`trainers.engine.save_checkpoint` file
whose ``extra`` holds

    format       "policy-search-model/1"
    model        a name from :data:`trainers.models.MODEL_NAMES`
    model_kwargs constructor kwargs without the noise knobs (e.g. ``{"width": 32}`` for ``proxy``)
    num_classes  int;  in_channels  int (default 3)
    mean, std    the per-channel normalisation the model was trained with, in [0, 1] units
    classes      optional class names

:func:`save_model` writes one; every pipeline run exports its final model this way (``model.pt``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field
from torch import nn

from ..engine import load_checkpoint, save_checkpoint
from ..models import build_model
from ..settings import ModelName
from .common import PipelineConfig, PipelineError

MODEL_FORMAT = "policy-search-model/1"
_REQUIRED = ("model", "model_kwargs", "num_classes", "mean", "std")

__all__ = ["MODEL_FORMAT", "ModelSpec", "TeacherStudentConfig", "check_model", "count_params", "load_model", "renorm",
           "save_model"]


class TeacherStudentConfig(PipelineConfig):
    """A teacher-student run: the teacher's and the student's models, the student's schedule and dropout.

    ``*_kwargs`` are the models' constructor kwargs; :func:`check_model` builds each once when the config is
    made, so a model that cannot be built fails before any data is read.
    """

    teacher_model: ModelName = "proxy"
    teacher_kwargs: dict[str, Any] = Field(default_factory=lambda: {"width": 16})
    teacher_epochs: int = Field(10, ge=1)
    student_model: ModelName = "proxy"
    student_kwargs: dict[str, Any] = Field(default_factory=lambda: {"width": 16})
    epochs: int = Field(10, ge=1)  # per student
    lr: float = Field(0.2, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


@dataclass
class ModelSpec:
    """How to rebuild a trained model and feed it: architecture, classes, normalisation."""

    model: str
    model_kwargs: dict[str, Any]
    num_classes: int
    in_channels: int = 3
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    classes: tuple[str, ...] = field(default_factory=tuple)

    def to_extra(self) -> dict[str, Any]:
        """The checkpoint ``extra`` dict (primitives only, ``weights_only`` loadable)."""
        return {"format": MODEL_FORMAT, "model": self.model, "model_kwargs": dict(self.model_kwargs),
                "num_classes": int(self.num_classes), "in_channels": int(self.in_channels),
                "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "classes": list(self.classes)}


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def check_model(field_name: str, name: str, kwargs: Any, *, dropout: float = 0.0,
                stochastic_depth: float = 0.0, num_classes: int = 10) -> int:
    """Build ``name(**kwargs)`` once to validate a config; returns its parameter count for ``num_classes``.

    Raises :class:`PipelineError` naming ``field_name`` (or ``stochastic_depth``) when it cannot be built.
    """
    if not isinstance(kwargs, dict):
        raise PipelineError(f"{field_name}_kwargs: must be a mapping, got {kwargs!r}")
    try:
        model = build_model(name, num_classes, dropout=dropout, **kwargs)
    except (ValueError, TypeError) as exc:
        raise PipelineError(f"{field_name}_model: cannot build {name!r} with {kwargs}: {exc}") from None
    if stochastic_depth:
        try:
            build_model(name, num_classes, dropout=dropout, stochastic_depth=stochastic_depth, **kwargs)
        except (ValueError, TypeError) as exc:
            raise PipelineError(f"stochastic_depth: {exc}") from None
    return count_params(model)


def save_model(path: str | os.PathLike, model: nn.Module, spec: ModelSpec, epoch: int = 0) -> None:
    """Export ``model`` as a model checkpoint (see the module docstring) that :func:`load_model` reads."""
    save_checkpoint(path, model, None, epoch, spec.to_extra())


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model of a model checkpoint (eval mode, on ``device``); one-line PipelineError if the file
    is missing, unreadable, lacks a required ``extra`` key or its weights do not fit the architecture."""
    try:
        ckpt = load_checkpoint(path)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise PipelineError(f"teacher: cannot read model checkpoint {path}: {exc}") from None
    extra = ckpt.get("extra") or {}
    missing = [k for k in _REQUIRED if k not in extra]
    if missing:
        raise PipelineError(f"teacher: {path} is not a model checkpoint (extra lacks {', '.join(missing)}; "
                            "write one with trainers.pipelines.teacher.save_model)")
    spec = ModelSpec(model=extra["model"], model_kwargs=dict(extra["model_kwargs"]),
                     num_classes=int(extra["num_classes"]), in_channels=int(extra.get("in_channels", 3)),
                     mean=tuple(extra["mean"]), std=tuple(extra["std"]), classes=tuple(extra.get("classes", ())))
    try:
        model = build_model(spec.model, spec.num_classes, spec.in_channels, **spec.model_kwargs)
        model.load_state_dict(ckpt["model"])
    except (ValueError, TypeError, RuntimeError) as exc:
        raise PipelineError(f"teacher: weights in {path} do not fit {spec.model}({spec.model_kwargs}): "
                            f"{exc}") from None
    return model.to(device).eval(), spec


def renorm(src_mean: Sequence[float], src_std: Sequence[float], dst_mean: Sequence[float],
           dst_std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) per channel taking an input normalised with src to one normalised with dst
    (``x_dst = x_src * scale + shift``), or None when both normalisations agree."""
    sm, ss, dm, ds = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)
                      for v in (src_mean, src_std, dst_mean, dst_std))
    if torch.allclose(sm, dm, rtol=0, atol=1e-7) and torch.allclose(ss, ds, rtol=0, atol=1e-7):
        return None
    return ss / ds, (sm - dm) / ds
