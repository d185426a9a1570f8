"""Named magnitude spaces: the published bin -> value tables, and builders for the classic policies.

A magnitude space maps ``(op, bin)`` to a physical value as torchvision's ``_AUGMENTATION_SPACE``
does: ``level = bin / (num_bins - 1)`` and ``value = identity + level * (level_max - identity)``
(posterize rounded), with the op's random sign. Spaces differ only in bin count and in ``level_max``:

* ``autoaugment``: 10 bins; shear 0.3, translate 150/331 of the size, rotate 30 deg, enhance 1 +/- 0.9,
  posterize 8 -> 4 bits, solarize threshold 1 -> 0.
* ``randaugment``: the same maxima with 31 bins (``magnitude=9`` is level 0.3).
* ``trivialaugment_wide``: 31 bins; shear 0.99, translate 32 px, rotate 135 deg, enhance 1 +/- 0.99,
  posterize 8 -> 2 bits.

Translations are stored as fractions of the image size; torchvision's TA-wide uses 32 absolute pixels,
which is the fraction 1.0 at 32x32 (the reference size recorded in the preset's provenance), and
torchvision truncates AA/RA shifts to whole pixels where this package keeps sub-pixel shifts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .ops import OPS
from .policy import Magnitude, OpConfig, Policy

__all__ = ["MagnitudeSpace", "SPACES", "TORCHVISION_NAMES", "rand_augment", "trivial_augment_wide",
           "auto_augment", "op_at_level"]

#: torchvision/PIL op names -> canonical op names.
TORCHVISION_NAMES = {
    "Identity": "identity", "ShearX": "shear_x", "ShearY": "shear_y", "TranslateX": "translate_x",
    "TranslateY": "translate_y", "Rotate": "rotate", "Brightness": "brightness", "Color": "color",
    "Contrast": "contrast", "Sharpness": "sharpness", "Posterize": "posterize", "Solarize": "solarize",
    "AutoContrast": "autocontrast", "Equalize": "equalize", "Invert": "invert",
}

AUTOAUGMENT_OPS = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast",
           "sharpness", "posterize", "solarize", "autocontrast", "equalize", "invert")
#: torchvision RandAugment's op set: AutoAugment's plus identity, without invert.
RAND_AUGMENT_OPS = ("identity",) + tuple(o for o in AUTOAUGMENT_OPS if o != "invert")


@dataclass(frozen=True)
class MagnitudeSpace:
    """A bin grid over each op's level range."""

    name: str
    num_bins: int
    ops: tuple[str, ...]
    level_max: dict[str, float] = field(default_factory=dict)  # overrides OpSpec.level_max

    def value(self, op: str, bin_index: float) -> float:
        """Physical value of ``op`` at ``bin_index`` (positive side)."""
        return OPS[op].level_to_value(bin_index / (self.num_bins - 1), self.level_max.get(op))

    def max_value(self, op: str) -> float:
        return self.value(op, self.num_bins - 1)


SPACES: dict[str, MagnitudeSpace] = {
    "autoaugment": MagnitudeSpace("autoaugment", 10, AUTOAUGMENT_OPS),
    "randaugment": MagnitudeSpace("randaugment", 31, RAND_AUGMENT_OPS),
    "trivialaugment_wide": MagnitudeSpace(
        "trivialaugment_wide", 31, RAND_AUGMENT_OPS,
        {"shear_x": 0.99, "shear_y": 0.99, "translate_x": 1.0, "translate_y": 1.0, "rotate": 135.0,
         "brightness": 1.99, "color": 1.99, "contrast": 1.99, "sharpness": 1.99, "posterize": 2.0},
    ),
}


def op_at_level(op: str, level: float, prob: float = 1.0, level_max: float | None = None,
                weight: float = 1.0) -> OpConfig:
    """An op instance with a fixed magnitude at ``level`` in [0, 1] and the op's default sign."""
    spec = OPS[op]
    if not spec.has_magnitude:
        return OpConfig(op, prob, None, weight)
    return OpConfig(op, prob, Magnitude(spec.level_to_value(level, level_max), random_sign=spec.signed), weight)


def _fixed(space: MagnitudeSpace, op: str, bin_index: float | None, prob: float = 1.0) -> OpConfig:
    spec = OPS[op]
    if not spec.has_magnitude:
        return OpConfig(op, prob)
    return OpConfig(op, prob, Magnitude(space.value(op, bin_index), random_sign=spec.signed))


def rand_augment(num_ops: int = 2, magnitude: int = 9, ops: Iterable[str] = RAND_AUGMENT_OPS,
                 num_bins: int = 31, name: str | None = None, **policy_kw) -> Policy:
    """torchvision ``RandAugment(num_ops, magnitude, num_magnitude_bins)`` as a policy, sampled per sample."""
    space = MagnitudeSpace("randaugment", num_bins, RAND_AUGMENT_OPS)
    return Policy(
        "rand_augment", ops=tuple(_fixed(space, o, magnitude) for o in ops), num_ops=num_ops,
        name=name or f"randaugment-n{num_ops}-m{magnitude}", **policy_kw,
    )


def trivial_augment_wide(name: str = "trivialaugment-wide", **policy_kw) -> Policy:
    """torchvision ``TrivialAugmentWide()``: one op per sample at a uniform random strength.

    torchvision draws one of 31 bins; this draws the level uniformly in [0, 1] (posterize: a uniform
    whole number of bits between 8 and 2).
    """
    space = SPACES["trivialaugment_wide"]
    ops = []
    for op in space.ops:
        spec = OPS[op]
        if not spec.has_magnitude:
            ops.append(OpConfig(op))
            continue
        low, high = sorted((spec.identity, space.max_value(op)))
        ops.append(OpConfig(op, 1.0, Magnitude(low=low, high=high, random_sign=spec.signed)))
    return Policy("trivial_augment", ops=tuple(ops), name=name, **policy_kw)


def auto_augment(subpolicies: Sequence[Sequence[tuple[str, float, int | None]]], name: str,
                 space: str = "autoaugment", **policy_kw) -> Policy:
    """An AutoAugment policy from ``(torchvision_name, prob, bin)`` triples (the published format)."""
    sp = SPACES[space]
    subs = tuple(tuple(_fixed(sp, TORCHVISION_NAMES[n], b, p) for n, p, b in sub) for sub in subpolicies)
    return Policy("subpolicy_choice", subpolicies=subs, name=name, **policy_kw)


#: The published AutoAugment CIFAR-10 policy (Cubuk et al. 2019) as torchvision lists it:
#: 25 sub-policies of two ``(op, probability, magnitude bin)`` entries over 10 bins.
AUTOAUGMENT_CIFAR10 = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)

# provenance shared by the presets transcribed from torchvision
_TORCHVISION_SOURCE = {"library": "torchvision", "version": "0.29.1", "reference_image_size": [32, 32]}


def build_presets() -> dict[str, Policy]:
    """The shipped presets, built from the published definitions (``presets/*.json`` must equal these)."""
    crop = OpConfig("pad_crop", 1.0, Magnitude(0.125))  # 4 px at 32x32, as in the CIFAR literature
    flip = OpConfig("hflip", 0.5)
    tv = {"interpolation": "nearest"}  # torchvision's AutoAugment/RandAugment/TrivialAugmentWide default
    return {
        "none": Policy("sequential", ops=(OpConfig("identity"),), name="none",
                       provenance={"source": "no augmentation"}),
        "crop_flip": Policy("sequential", ops=(crop, flip), name="crop-flip",
                            provenance={"source": "pad 4 + random crop, horizontal flip (standard CIFAR)"}),
        "crop_flip_cutout": Policy(
            "sequential", ops=(crop, flip, OpConfig("cutout", 1.0, Magnitude(0.5))), name="crop-flip-cutout",
            provenance={"source": "crop+flip plus Cutout 16x16 at 32x32 (DeVries & Taylor 2017)"}),
        "randaugment": rand_augment(2, 9, **tv, provenance={
            **_TORCHVISION_SOURCE, "class": "RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=31)"}),
        "trivialaugment_wide": trivial_augment_wide(**tv, provenance={
            **_TORCHVISION_SOURCE, "class": "TrivialAugmentWide(num_magnitude_bins=31)",
            "note": "bins drawn as a continuous uniform level; translate 32 px = fraction 1.0 at 32x32"}),
        "autoaugment_cifar10": auto_augment(AUTOAUGMENT_CIFAR10, "autoaugment-cifar10", **tv, provenance={
            **_TORCHVISION_SOURCE, "class": "AutoAugment(AutoAugmentPolicy.CIFAR10)",
            "paper": "Cubuk et al., CVPR 2019"}),
    }
