"""Export a policy to other libraries, each usable with only that library installed; measure how faithful.

* torchvision v2 -- :func:`to_torchvision` (an in-memory graph of torchvision's own ``Compose``/
  ``RandomChoice``/``RandomApply`` and native transforms plus one tiny ``v2.Transform`` per magnitude op) and
  :func:`torchvision_source` (one self-contained ``.py`` importing only torch and torchvision, the policy
  embedded as a literal, provenance and fidelity in its header). Built by :mod:`.exports.tv_runtime`.
* kornia -- :func:`to_kornia` / :func:`kornia_source`: a ``nn.Module`` running ``kornia.augmentation``
  modules on batches on any device, per-sample draws (:mod:`.exports.kornia_runtime`).
* albumentations -- :func:`to_albumentations` / :func:`albumentations_json`: a document
  ``albumentations.load`` reads (:mod:`.exports.albumentations`).
* timm -- :func:`to_timm`: an ``auto_augment`` config string (``rand-m3-n2-p1-inc1``).
* :class:`PolicyTransform` -- the policy replayed through this package's own :class:`Augmenter` (needs this
  package; exact by construction).
* :func:`fidelity_report`: ``{target: {"fidelity": "exact" | "approximate" | "unsupported", "ops": {...},
  "notes": [...]}}`` from the per-op pixel comparison measured on real images (:mod:`.exports.fidelity`)
  and, with ``samples``, a live distribution test of the policy's draws.

A policy a target cannot express raises :class:`ExportError` (one line, naming the op or feature); no
export drops an op.
"""

from __future__ import annotations

import pprint
from importlib import resources
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .augment import Augmenter
from .exports import tv_runtime
from .exports.albumentations import APPROXIMATIONS as ALBUMENTATIONS_APPROXIMATIONS
from .exports.albumentations import albumentations_json, to_albumentations
from .exports.fidelity import MEASURED, distribution_test, measure_ops, op_levels
from .exports.spec import ExportError, plain_spec
from .exports.timm import TIMM_NOTES, TIMM_OPS, to_timm
from .policy import Policy, load_policy

__all__ = ["ExportError", "PolicyTransform", "to_torchvision", "torchvision_source", "to_kornia", "kornia_source",
           "to_albumentations", "albumentations_json", "to_timm", "fidelity_report", "TARGETS", "INSTALL"]

TARGETS = ("torchvision", "kornia", "albumentations", "timm")
#: What each export needs installed (nothing of policy-search).
INSTALL = {
    "torchvision": "pip install torch torchvision",
    "kornia": "pip install torch kornia",
    "albumentations": "pip install albumentations",
    "timm": "pip install timm",
}


class PolicyTransform(v2.Transform):
    """Replay a policy through this package's :class:`Augmenter` on single images (PIL or ``(C, H, W)``) or batches.

    With ``seed``, draws come from a generator re-derived in each DataLoader worker from the seed and the
    worker's seed (``get_worker_info()``), so workers draw different, reproducible streams.
    """

    def __init__(self, policy: Policy | str, seed: int | None = None) -> None:
        super().__init__()
        self.augmenter = Augmenter(policy)
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._key: tuple[int, int] | None = None

    @property
    def generator(self) -> torch.Generator | None:
        """This process's generator (None without a seed)."""
        if self.seed is None:
            return None
        info = torch.utils.data.get_worker_info()
        key = None if info is None else (info.id, info.seed)
        if self._generator is None or key != self._key:
            self._generator = torch.Generator().manual_seed(tv_runtime.stream_seed(self.seed))
            self._key = key
        return self._generator

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, Image.Image):
            return TF.to_pil_image(self._run(TF.pil_to_tensor(inpt.convert("RGB"))))
        if isinstance(inpt, torch.Tensor) and inpt.ndim in (3, 4):
            return self._run(inpt)
        return inpt

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        out = self.augmenter(x if x.ndim == 4 else x.unsqueeze(0), generator=self.generator)
        return out if x.ndim == 4 else out.squeeze(0)


# ---------------------------------------------------------------------------------------------
# torchvision and kornia: in-memory objects and self-contained files


def to_torchvision(policy: Policy | str, seed: int | None = None) -> v2.Transform:
    """The policy as torchvision v2 transforms (per image; see :mod:`.exports.tv_runtime`)."""
    return tv_runtime.build(plain_spec(load_policy(policy)), seed)


def _check_kornia(p: Policy) -> None:
    from .exports.kornia_runtime import KORNIA_OPS

    for o in p.all_ops():
        if o.op not in KORNIA_OPS:
            raise ExportError(f"kornia: no kornia.augmentation op for '{o.op}' (kornia's RandomSolarize adds to "
                              "every pixel before inverting)" if o.op == "solarize_add" else
                              f"kornia: no kornia.augmentation op for '{o.op}'")
    if p.batch_ops:
        raise ExportError(f"kornia: batch op '{p.batch_ops[0].op}' is not exported (kornia's RandomMixUpV2/"
                          "RandomCutMixV2 draw lambda differently); use torchvision's MixUp/CutMix")
    if len(set(p.fill)) > 1 and any(o.op in ("cutout", "pad_crop") for o in p.all_ops()):
        raise ExportError("kornia: cutout/pad_crop with a per-channel fill colour (kornia fills one value)")


def to_kornia(policy: Policy | str, seed: int | None = None) -> torch.nn.Module:
    """The policy as a batch ``nn.Module`` of ``kornia.augmentation`` ops (see :mod:`.exports.kornia_runtime`)."""
    from .exports import kornia_runtime

    p = load_policy(policy)
    _check_kornia(p)
    return kornia_runtime.build(plain_spec(p), seed)


def _runtime_source(name: str) -> str:
    return resources.files("search_spaces").joinpath("exports", f"{name}.py").read_text(encoding="utf-8")


def _header(p: Policy, target: str, title: str, usage: list[str], provenance: dict[str, Any]) -> str:
    report = fidelity_report(p, targets=(target,))[target]
    lines = [f"# {title} for policy {p.name or p.type!r}."]
    if provenance:
        scalars = {k: v for k, v in provenance.items() if v is None or isinstance(v, (str, int, float))}
        lines.append("# Provenance: " + ", ".join(f"{k}={v}" for k, v in scalars.items())
                     + " (all of it: PROVENANCE below)")
    lines.append(f"# Needs only: {INSTALL[target]} (nothing of policy-search).")
    lines.append(f"# Fidelity against policy-search's Augmenter: {report['fidelity']} "
                 "(per-op pixel agreement on CIFAR-10 images; see the README's export tables).")
    for note in report["notes"]:
        lines.append(f"#   approximation: {note}")
    lines += ["# Usage:"] + [f"#   {u}" for u in usage]
    return "\n".join(lines) + "\n"


def _literal(name: str, value: Any) -> str:
    return f"{name} = {pprint.pformat(value, width=110, sort_dicts=False)}\n"


def torchvision_source(policy: Policy | str, provenance: dict[str, Any] | None = None) -> str:
    """One self-contained Python file (torch + torchvision only) defining ``build_transform(seed=None)``,
    ``transform`` and, with batch ops, ``build_batch_transform(num_classes)``."""
    p = load_policy(policy)
    spec = plain_spec(p)
    prov = dict(provenance if provenance is not None else p.provenance)
    usage = ["from this_file import build_transform",
             "transform = build_transform(seed=0)  # per image in a Dataset (PIL or (C, H, W) uint8/float tensor)"]
    parts = [_header(p, "torchvision", "torchvision v2 transform", usage, prov),
             _runtime_source("tv_runtime"), "\n\n# ---- the exported policy ----\n\n",
             _literal("POLICY", spec), _literal("PROVENANCE", prov), "\n",
             "def build_transform(seed=None):\n"
             '    """The policy as torchvision v2 transforms; with ``seed``, a worker-safe reproducible stream."""\n'
             "    return build(POLICY, seed)\n\n\n"]
    if p.batch_ops:
        parts.append("def build_batch_transform_for(num_classes):\n"
                     '    """The policy\'s batch ops (torchvision MixUp/CutMix) for collated batches."""\n'
                     "    return build_batch_transform(POLICY, num_classes)\n\n\n")
    parts.append("transform = build_transform()\n")
    return "".join(parts)


def kornia_source(policy: Policy | str, provenance: dict[str, Any] | None = None) -> str:
    """One self-contained Python file (torch + kornia only) defining ``build_augmentation(seed=None)``."""
    p = load_policy(policy)
    _check_kornia(p)
    prov = dict(provenance if provenance is not None else p.provenance)
    usage = ["from this_file import build_augmentation",
             "augment = build_augmentation(seed=0).to(device)  # then augment(batch) on (B, C, H, W) batches"]
    return "".join([_header(p, "kornia", "kornia.augmentation batch module", usage, prov),
                    _runtime_source("kornia_runtime"), "\n\n# ---- the exported policy ----\n\n",
                    _literal("POLICY", plain_spec(p)), _literal("PROVENANCE", prov), "\n",
                    "def build_augmentation(seed=None):\n"
                    '    """The policy as a kornia batch augmentation module."""\n'
                    "    return build(POLICY, seed)\n"])


# ---------------------------------------------------------------------------------------------
# Fidelity


def _check(p: Policy, target: str) -> dict[str, Any]:
    """Build the export (raising ExportError where the target cannot express the policy)."""
    if target == "torchvision":
        to_torchvision(p)
        return {}
    if target == "kornia":
        to_kornia(p)
        return {}
    if target == "albumentations":
        to_albumentations(p)
        return {}
    return {"config": to_timm(p)}


def fidelity_report(policy: Policy | str, images: torch.Tensor | None = None, samples: int = 0,
                    targets: tuple[str, ...] = TARGETS) -> dict[str, dict[str, Any]]:
    """How each export target reproduces ``policy``.

    Per target: ``fidelity`` (``exact``: every op's pixels agree and, when tested, the draws match;
    ``approximate``; ``unsupported``: the export refuses the policy), ``ops`` (each op's measured level),
    ``notes`` (every approximation, by name) and, with ``samples`` (>= 10,000 recommended), ``distribution``
    (:func:`.exports.fidelity.distribution_test`). Per-op levels come from the table measured on the
    bundled CIFAR-10 sample, or are measured live on uint8 ``images`` when given.
    """
    p = load_policy(policy)
    report: dict[str, dict[str, Any]] = {
        "augmenter": {"fidelity": "exact", "notes": ["reference executor, per-sample on any device"]},
    }
    used = sorted({o.op for o in p.all_ops()} - {"identity"})
    for target in targets:
        try:
            extra = _check(p, target)
        except ExportError as e:
            report[target] = {"fidelity": "unsupported", "ops": {}, "notes": [str(e)]}
            continue
        measured_ops = ([o for o in used if o in TIMM_OPS] if target == "timm" else used)
        table = measure_ops(images, [target], ops=measured_ops) if images is not None and measured_ops else MEASURED
        levels = op_levels(p, target, table)
        rows = table.get(target, {})
        notes = []
        for op, level in sorted(levels.items()):
            if level != "exact":
                agreement = rows.get(op, {}).get("agreement")
                why = ALBUMENTATIONS_APPROXIMATIONS.get(op, "") if target == "albumentations" else ""
                notes.append(f"{op}: {level}" + (f" (pixel agreement {agreement:.1%})" if agreement is not None else "")
                             + (f"; {why}" if why else ""))
        if target == "timm":
            notes += TIMM_NOTES
        if p.batch_ops and target == "timm":
            notes.append("batch ops map to timm.data.Mixup, not to the config string")
        if p.batch_ops and target == "torchvision":
            notes.append("batch ops: torchvision MixUp/CutMix draw one lambda per batch and pair neighbours (roll)")
        exact = all(level == "exact" for level in levels.values()) and target != "timm" and not (
            p.batch_ops and target == "torchvision")
        entry: dict[str, Any] = {**extra, "ops": levels, "notes": notes}
        if samples:
            dist = distribution_test(p, target, n=samples)
            entry["distribution"] = dist
            if not dist["passed"]:
                exact = False
                entry["notes"].append(f"draws differ from the policy's (min p = {dist['min_p']:.2g} over "
                                      f"{samples} samples)")
        entry["fidelity"] = "exact" if exact else "approximate"
        report[target] = entry
    return report
