"""timm export: a RandAugment config string (``rand-m9-n2-p1-inc1``) for ``timm.data.create_transform``."""

from __future__ import annotations

from ..ops import OPS
from ..policy import Policy, load_policy
from .spec import ExportError

__all__ = ["TIMM_OPS", "TIMM_NOTES", "shared_level", "to_timm"]


# timm op names for the canonical ops it can express (the "increasing" family: strength grows with level).
TIMM_OPS = {
    "autocontrast": "AutoContrast", "equalize": "Equalize", "invert": "Invert", "rotate": "Rotate",
    "posterize": "PosterizeIncreasing", "solarize": "SolarizeIncreasing", "solarize_add": "SolarizeAdd",
    "color": "ColorIncreasing", "contrast": "ContrastIncreasing", "brightness": "BrightnessIncreasing",
    "sharpness": "SharpnessIncreasing", "shear_x": "ShearX", "shear_y": "ShearY",
    "translate_x": "TranslateXRel", "translate_y": "TranslateYRel",
}
TIMM_NOTES = [
    "timm translates by 0.45 of the size at level 10 (torchvision: 150/331 = 0.453)",
    "timm PosterizeIncreasing keeps 4 - int(0.4 * level) bits (torchvision: 8 - round(0.4 * level))",
    "timm fills exposed areas with the dataset mean and picks bilinear/bicubic at random",
    "timm RandAugment uses its own fixed op set (15 ops with Invert and SolarizeAdd, without Identity): "
    "ops outside the policy are added, the policy's identity is not drawn",
]


def shared_level(policy: Policy) -> float:
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
    unknown = sorted({o.op for o in p.ops} - set(TIMM_OPS) - {"identity"})
    if unknown:
        raise ExportError(f"timm has no op for: {', '.join(unknown)}")
    probs = {o.prob for o in p.ops}
    if len(probs) != 1 or len({o.weight for o in p.ops}) != 1:
        raise ExportError("timm strings hold one probability and uniform op weights")
    n = 1 if p.type == "trivial_augment" else p.num_ops
    level = shared_level(p)
    magnitude = "m10-mstd101" if level < 0 else f"m{level * 10:g}"
    return f"rand-{magnitude}-n{n}-p{probs.pop():g}-inc1"
