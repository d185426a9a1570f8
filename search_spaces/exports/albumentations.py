"""A policy as an albumentations 2.x JSON document (what ``albumentations.load`` reads; AutoAlbument's format).

Written without importing albumentations. Structure (per image, uint8 HWC):

* ``sequential``: ``Compose([op_1, op_2, ...])``, each op with its own ``p``;
* ``subpolicy_choice``: ``Compose([OneOf([Sequential([ops...], p=w_i), ...])])`` (``OneOf`` normalises the
  children's ``p`` into the sub-policy weights and force-applies the chosen one; its ops keep their ``p``);
* ``rand_augment`` / ``trivial_augment``: one ``OneOf([Sequential([op], p=weight), ...])`` per stage
  (independent stages: draws with replacement, as the policy does).

A fixed magnitude with a random sign becomes ``OneOf([op(+v), op(-v)])`` (albumentations ranges are
uniform); a uniform magnitude with a random sign ``OneOf([op(lo, hi), op(-hi, -lo)])``. Ops map to
``Affine`` (rotate; shear in degrees ``atan(factor)``, shifted back to the top-left origin; translate in
percent), ``ColorJitter`` (PIL-like brightness/contrast/saturation), ``Sharpen`` (kernel method, ``alpha =
(f - 1) / 13``, ``lightness = 1``: PIL's sharpen kernel for ``f >= 1``), ``Posterize``, ``Solarize``,
``Equalize(mode="pil")``, ``AutoContrast(method="pil")``, ``InvertImg``, ``ToGray``, ``HorizontalFlip``,
``CoarseDropout`` (cutout; holes stay inside the image) and ``Affine(translate_percent=±v)`` (pad_crop, as
a continuous shift). Refused with :class:`ExportError`: ``solarize_add``, sharpness below 1 (blurring),
posterize to 0 bits, normal magnitudes, batch ops.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..ops import OPS
from ..policy import Magnitude, OpConfig, Policy
from .spec import ExportError

__all__ = ["ALBUMENTATIONS_VERSION", "to_albumentations", "albumentations_json", "APPROXIMATIONS"]

ALBUMENTATIONS_VERSION = "2.0.8"
_CV2_INTER = {"nearest": 0, "bilinear": 1}

#: Ops whose albumentations form is known to differ from the policy's semantics (named in the report).
APPROXIMATIONS = {
    "cutout": "CoarseDropout keeps the hole inside the image (the policy clips a square centred anywhere)",
    "pad_crop": "Affine(translate_percent=(-v, v)) shifts by a continuous amount (the policy: whole pixels)",
    "solarize": "albumentations inverts pixels > threshold (the policy: >=)",
    "shear_x": "Affine shears about the centre; the shift back to the top-left origin is rounded to whole pixels",
    "shear_y": "Affine shears about the centre; the shift back to the top-left origin is rounded to whole pixels",
    "translate_x": "Affine rounds the shift to whole pixels (the policy keeps sub-pixel shifts)",
    "translate_y": "Affine rounds the shift to whole pixels (the policy keeps sub-pixel shifts)",
    "equalize": "Equalize(mode='pil') bins differently from PIL's equalize",
    "autocontrast": "AutoContrast(method='pil') rounds differently from PIL's autocontrast",
    "sharpness": "Sharpen filters the one-pixel border too (PIL keeps it)",
}


def _leaf(name: str, p: float, **args: Any) -> dict[str, Any]:
    return {"__class_fullname__": name, "p": float(p), **args}


def _fill255(policy: Policy) -> list[float] | float:
    vals = [round(f * 255.0) for f in policy.fill]
    return float(vals[0]) if len(vals) == 1 else [float(v) for v in vals]


def _op_leaf(op: str, lo: float, hi: float, policy: Policy, p: float) -> dict[str, Any]:
    """The albumentations transform running ``op`` with a value uniform in [lo, hi] (lo == hi: fixed)."""
    interp = _CV2_INTER[policy.interpolation]
    affine = dict(interpolation=interp, border_mode=0, fill=_fill255(policy), fit_output=False, keep_ratio=False)
    if op == "rotate":  # counter-clockwise for positive angles, as the policy
        return _leaf("Affine", p, rotate=[lo, hi], **affine)
    if op in ("shear_x", "shear_y"):
        if lo != hi:
            raise ExportError(f"albumentations: op '{op}' with a uniform magnitude (its origin shift depends on "
                              "the drawn shear; only fixed shears are exported)")
        deg = math.degrees(math.atan(lo))
        shear = {"x": [deg, deg], "y": [0.0, 0.0]} if op == "shear_x" else {"x": [0.0, 0.0], "y": [deg, deg]}
        shift = {"x": [-lo / 2, -lo / 2], "y": [0.0, 0.0]} if op == "shear_x" else {"x": [0.0, 0.0],
                                                                                      "y": [-lo / 2, -lo / 2]}
        return _leaf("Affine", p, shear=shear, translate_percent=shift, **affine)
    if op == "translate_x":
        return _leaf("Affine", p, translate_percent={"x": [lo, hi], "y": [0.0, 0.0]}, **affine)
    if op == "translate_y":
        return _leaf("Affine", p, translate_percent={"x": [0.0, 0.0], "y": [lo, hi]}, **affine)
    if op in ("brightness", "contrast", "color"):
        key = {"brightness": "brightness", "contrast": "contrast", "color": "saturation"}[op]
        args = {"brightness": [1.0, 1.0], "contrast": [1.0, 1.0], "saturation": [1.0, 1.0], "hue": [0.0, 0.0]}
        args[key] = [lo, hi]
        return _leaf("ColorJitter", p, **args)
    if op == "sharpness":
        if lo < 1.0:
            raise ExportError("albumentations: op 'sharpness' with a factor below 1 (blurring) has no albumentations "
                              "equivalent (Sharpen only sharpens)")
        return _leaf("Sharpen", p, alpha=[(lo - 1.0) / 13.0, (hi - 1.0) / 13.0], lightness=[1.0, 1.0],
                     method="kernel")
    if op == "posterize":
        if lo < 1:
            raise ExportError("albumentations: op 'posterize' to 0 bits (a black image) has no albumentations "
                              "equivalent (Posterize keeps 1 to 8 bits)")
        return _leaf("Posterize", p, num_bits=[int(lo), int(hi)])
    if op == "solarize":
        return _leaf("Solarize", p, threshold_range=[lo, hi])
    if op == "cutout":
        return _leaf("CoarseDropout", p, num_holes_range=[1, 1], hole_height_range=[lo, hi],
                     hole_width_range=[lo, hi], fill=_fill255(policy))
    if op == "pad_crop":
        return _leaf("Affine", p, translate_percent={"x": [-hi, hi], "y": [-hi, hi]}, **affine)
    raise ExportError(f"albumentations: no albumentations transform for op '{op}'")


_PARAMETER_FREE = {
    "identity": lambda p: _leaf("NoOp", p),
    "invert": lambda p: _leaf("InvertImg", p),
    "equalize": lambda p: _leaf("Equalize", p, mode="pil", by_channels=True),
    "autocontrast": lambda p: _leaf("AutoContrast", p, cutoff=0, method="pil"),
    "grayscale": lambda p: _leaf("ToGray", p, num_output_channels=3, method="weighted_average"),
    "hflip": lambda p: _leaf("HorizontalFlip", p),
}


def _one_of(children: list[dict[str, Any]], p: float) -> dict[str, Any]:
    return {"__class_fullname__": "OneOf", "p": float(p), "transforms": children}


def _node(o: OpConfig, policy: Policy, meta: list) -> dict[str, Any]:
    """One op instance with its probability (and random sign) as albumentations transforms; appends each
    leaf's ``(op, low, high)`` to ``meta`` in document order."""
    if o.magnitude is None:
        meta.append((o.op, None, None))
        return _PARAMETER_FREE[o.op](o.prob)
    m: Magnitude = o.magnitude
    spec = OPS[o.op]
    if m.dist == "normal":
        raise ExportError(f"albumentations: op '{o.op}' has a normal magnitude (albumentations samples uniform "
                          "ranges only)")
    lo, hi = (m.low, m.high) if m.dist == "uniform" else (m.value, m.value)
    if o.op == "posterize" and lo == hi == 8:
        meta.append((o.op, lo, hi))
        return _leaf("NoOp", o.prob)
    if not m.random_sign or (lo == hi == spec.identity):
        meta.append((o.op, lo, hi))
        return _op_leaf(o.op, lo, hi, policy, o.prob)
    mirrored = (2 * spec.identity - hi, 2 * spec.identity - lo)
    mirrored = (max(mirrored[0], spec.bounds[0]), min(mirrored[1], spec.bounds[1]))
    meta.extend([(o.op, lo, hi), (o.op, *mirrored)])
    return _one_of([_op_leaf(o.op, lo, hi, policy, 1.0), _op_leaf(o.op, *mirrored, policy, 1.0)], o.prob)


def _weighted(children: list[dict[str, Any]], weights: list[float]) -> dict[str, Any]:
    wrapped = [{"__class_fullname__": "Sequential", "p": float(w), "transforms": [c]} for c, w in
               zip(children, weights, strict=True)]
    return _one_of(wrapped, 1.0)


def to_albumentations(policy: Policy, meta: list | None = None) -> dict[str, Any]:
    """The policy as the dict ``albumentations.to_dict`` would produce (``{"__version__", "transform"}``).

    ``meta``, when given, receives ``(op, low, high)`` for every leaf transform in document order.
    """
    meta = [] if meta is None else meta
    if policy.batch_ops:
        raise ExportError(f"albumentations: batch op '{policy.batch_ops[0].op}' has no per-image albumentations "
                          "form (apply it to collated batches, e.g. with torchvision's MixUp/CutMix)")
    if policy.type == "subpolicy_choice":
        weights = list(policy.weights) if policy.weights is not None else [1.0] * len(policy.subpolicies)
        total = sum(weights)
        subs = [{"__class_fullname__": "Sequential", "p": w / total, "transforms": [_node(o, policy, meta) for o in sp]}
                for sp, w in zip(policy.subpolicies, weights, strict=True)]
        body = [_one_of(subs, 1.0)]
    elif policy.type == "sequential":
        body = [_node(o, policy, meta) for o in policy.ops]
    else:
        stages = 1 if policy.type == "trivial_augment" else policy.num_ops
        weights = [o.weight for o in policy.ops]
        body = [_weighted([_node(o, policy, meta) for o in policy.ops], weights) for _ in range(stages)]
    compose = {"__class_fullname__": "Compose", "p": 1.0, "transforms": body, "bbox_params": None,
               "keypoint_params": None, "additional_targets": {}, "is_check_shapes": True}
    return {"__version__": ALBUMENTATIONS_VERSION, "transform": compose}


def albumentations_json(policy: Policy) -> str:
    """:func:`to_albumentations` as JSON text (``albumentations.load(path)`` reads it)."""
    return json.dumps(to_albumentations(policy), indent=2) + "\n"
