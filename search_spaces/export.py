"""Export a policy to other libraries, and say how faithful each export is.

* :func:`to_torchvision`: a ``torchvision.transforms.v2`` transform that replays the policy per image
  through :class:`~search_spaces.augment.Augmenter` (exact: same kernels), for DataLoader pipelines.
* :func:`to_timm`: a timm ``auto_augment`` config string (``rand-m9-n2-...``) where the policy is a
  RandAugment/TrivialAugment over one shared level; timm's op ranges differ from torchvision's, so the
  string is approximate (the notes say where).
* :func:`fidelity_report`: ``{target: {"fidelity": "exact" | "approximate" | "unsupported", "notes": [...]}}``.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .augment import Augmenter
from .ops import OPS
from .policy import Policy, load_policy

__all__ = ["ExportError", "PolicyTransform", "to_torchvision", "to_timm", "fidelity_report"]


class ExportError(ValueError):
    """The policy cannot be expressed in the requested target."""


class PolicyTransform(v2.Transform):
    """Replay a policy on single images (PIL or tensor ``(C, H, W)``) or batches, per image."""

    def __init__(self, policy: Policy | str, seed: int | None = None) -> None:
        super().__init__()
        self.augmenter = Augmenter(policy)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, Image.Image):
            return TF.to_pil_image(self._run(TF.pil_to_tensor(inpt.convert("RGB"))))
        if isinstance(inpt, torch.Tensor) and inpt.ndim in (3, 4):
            return self._run(inpt)
        return inpt

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        out = self.augmenter(x if x.ndim == 4 else x.unsqueeze(0), generator=self.generator)
        return out if x.ndim == 4 else out.squeeze(0)


def to_torchvision(policy: Policy | str, seed: int | None = None) -> PolicyTransform:
    """A torchvision v2 transform replaying ``policy`` per image (exact)."""
    return PolicyTransform(load_policy(policy), seed)


# timm op names for the canonical ops it can express (the "increasing" family: strength grows with level).
_TIMM_OPS = {
    "autocontrast": "AutoContrast", "equalize": "Equalize", "invert": "Invert", "rotate": "Rotate",
    "posterize": "PosterizeIncreasing", "solarize": "SolarizeIncreasing", "solarize_add": "SolarizeAdd",
    "color": "ColorIncreasing", "contrast": "ContrastIncreasing", "brightness": "BrightnessIncreasing",
    "sharpness": "SharpnessIncreasing", "shear_x": "ShearX", "shear_y": "ShearY",
    "translate_x": "TranslateXRel", "translate_y": "TranslateYRel",
}
_TIMM_NOTES = [
    "timm translates by 0.45 of the size at level 10 (torchvision: 150/331 = 0.453)",
    "timm PosterizeIncreasing keeps 4 - int(0.4 * level) bits (torchvision: 8 - round(0.4 * level))",
    "timm fills exposed areas with the dataset mean and picks bilinear/bicubic at random",
    "timm RandAugment uses its own fixed op set; ops outside it are dropped, missing ones added",
]


def _level(policy: Policy) -> float:
    """The one level in [0, 1] every op's magnitude sits at (-1: all uniform), or raise ExportError."""
    mags = [(OPS[o.op], o.magnitude) for o in policy.ops if o.magnitude is not None]
    if mags and all(m.dist == "uniform" for _, m in mags):
        return -1.0
    if any(m.dist != "fixed" for _, m in mags):
        raise ExportError("timm strings hold one shared magnitude; this policy mixes fixed and random ones")
    levels = {round(abs(m.value - s.identity) / abs(s.level_max - s.identity), 3) for s, m in mags if not s.integer}
    if len(levels) > 1:
        raise ExportError("timm strings hold one shared magnitude; this policy's ops differ")
    level = levels.pop() if levels else 0.0
    if any(s.level_to_value(level) != m.value for s, m in mags if s.integer):
        raise ExportError("timm strings hold one shared magnitude; this policy's ops differ")
    return level


def to_timm(policy: Policy | str) -> str:
    """A timm ``auto_augment`` config string approximating ``policy`` (see :func:`fidelity_report`)."""
    p = load_policy(policy)
    if p.type not in ("rand_augment", "trivial_augment"):
        raise ExportError(f"timm strings cannot express a {p.type} policy (only canned AutoAugment policies)")
    unknown = sorted({o.op for o in p.ops} - set(_TIMM_OPS) - {"identity"})
    if unknown:
        raise ExportError(f"timm has no op for: {', '.join(unknown)}")
    probs = {o.prob for o in p.ops}
    if len(probs) != 1 or len({o.weight for o in p.ops}) != 1:
        raise ExportError("timm strings hold one probability and uniform op weights")
    n = 1 if p.type == "trivial_augment" else p.num_ops
    level = _level(p)
    magnitude = "m10-mstd101" if level < 0 else f"m{level * 10:g}"
    return f"rand-{magnitude}-n{n}-p{probs.pop():g}-inc1"


def fidelity_report(policy: Policy | str) -> dict[str, dict[str, Any]]:
    """How each export target reproduces ``policy``."""
    p = load_policy(policy)
    report: dict[str, dict[str, Any]] = {
        "augmenter": {"fidelity": "exact", "notes": ["reference executor, per-sample on any device"]},
        "torchvision": {"fidelity": "exact", "notes": ["PolicyTransform replays the policy per image"]},
    }
    try:
        report["timm"] = {"fidelity": "approximate", "config": to_timm(p), "notes": list(_TIMM_NOTES)}
    except ExportError as e:
        report["timm"] = {"fidelity": "unsupported", "notes": [str(e)]}
    if p.batch_ops:
        report["timm"]["notes"].append("batch ops map to timm.data.Mixup, not to the config string")
    return report
