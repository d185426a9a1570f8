"""How faithful each export is, measured against :class:`~search_spaces.augment.Augmenter` (the reference).

* Per op (:func:`measure_ops`): each target runs a one-op policy at fixed magnitudes (both signs, nearest
  and bilinear) on real uint8 images, and the result is compared with the Augmenter's pixel by pixel
  (``agreement`` = share of channel values within one uint8 level). Ops that place something at random
  (``cutout``, ``pad_crop``) are compared with matched draws where the target draws from torch's generator
  (torchvision, kornia), else by a two-sample KS test on the per-image mean change (albumentations).
  ``exact``: agreement >= 0.99 (the rest are interpolation ties); ``approximate``: below;
  ``unsupported``: the export refuses the op (:class:`ExportError`).
* Per policy (:func:`distribution_test`): ``n`` (>= 10,000) draws of the target's op sequences and
  magnitudes against the Augmenter's own ``sample``: a chi-square test on the sequences of applied ops and,
  per op, a chi-square (few distinct values) or KS test on the magnitudes. ``passed``: every p >= 0.001.

:data:`MEASURED` (``op_fidelity.json`` beside this module) holds the per-op table measured on the bundled
CIFAR-10 sample; ``tests/test_export_fidelity.py`` re-measures it and fails when it drifts.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..augment import Augmenter
from ..ops import OPS, OpContext
from ..policy import Magnitude, OpConfig, Policy
from .spec import ExportError, plain_spec

__all__ = ["TARGETS", "PROBES", "EXACT_AGREEMENT", "MIN_P", "MEASURED", "single_op_policy", "op_agreement",
           "measure_ops", "draws", "distribution_test", "chi_square", "ks_2samp", "op_levels", "load_measured"]

TARGETS = ("torchvision", "kornia", "albumentations", "timm")
EXACT_AGREEMENT = 0.99
MIN_P = 1e-3
#: Fixed magnitudes each op is measured at (off exact half-pixel ties for the warps).
PROBES: dict[str, tuple[float | None, ...]] = {
    "identity": (None,), "rotate": (9.0, -27.0), "shear_x": (0.27, -0.19), "shear_y": (0.23, -0.17),
    "translate_x": (0.25, -0.14), "translate_y": (0.136, -0.3), "brightness": (1.3, 0.4), "color": (1.6, 0.3),
    "contrast": (1.45, 0.5), "sharpness": (1.9, 0.2), "posterize": (4.0, 7.0), "solarize": (0.5, 0.8),
    "solarize_add": (0.3,), "autocontrast": (None,), "equalize": (None,), "invert": (None,), "grayscale": (None,),
    "hflip": (None,), "cutout": (0.25, 0.5), "pad_crop": (0.125,),
}
RANDOM_PLACEMENT = ("cutout", "pad_crop")


def single_op_policy(op: str, value: float | None, interpolation: str = "bilinear") -> Policy:
    """A sequential policy running ``op`` at ``value`` (no random sign) on every image."""
    m = None if value is None else Magnitude(value, random_sign=False)
    return Policy("sequential", ops=(OpConfig(op, 1.0, m),), interpolation=interpolation)


# ---------------------------------------------------------------------------------------------
# Targets as batch functions (uint8 (B, C, H, W) -> uint8)


def _hwc(x: Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).numpy()


def _chw(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)


def _albumentations(policy: Policy):
    import albumentations as A

    from .albumentations import to_albumentations

    return A.from_dict(to_albumentations(policy))


def target_runner(target: str, policy: Policy) -> Callable[[Tensor], Tensor]:
    """A function running ``target``'s export of ``policy`` on a uint8 batch (per image where the target is)."""
    if target == "torchvision":
        from .tv_runtime import build

        t = build(plain_spec(policy))
        return lambda x: torch.stack([t(img) for img in x])
    if target == "kornia":
        from .kornia_runtime import build as kbuild

        spec = plain_spec(policy)
        _check_kornia(policy)
        return kbuild(spec)
    if target == "albumentations":
        t = _albumentations(policy)
        return lambda x: torch.stack([_chw(t(image=_hwc(img))["image"]) for img in x])
    raise ValueError(f"unknown target {target!r} (known: {', '.join(TARGETS)})")


def _check_kornia(policy: Policy) -> None:
    from .kornia_runtime import KORNIA_OPS

    for o in policy.all_ops():
        if o.op not in KORNIA_OPS:
            raise ExportError(f"kornia: no kornia.augmentation op for '{o.op}'")


def _agreement(a: Tensor, b: Tensor) -> dict[str, float]:
    d = (a.int() - b.int()).abs()
    return {"agreement": round(float((d <= 1).float().mean()), 4), "max_diff": int(d.max()),
            "mean_diff": round(float(d.float().mean()), 3)}


def _matched_random_op(target: str, op: str, value: float, images: Tensor, interpolation: str) -> dict[str, Any]:
    """Cutout/pad_crop with the same position draws as the Augmenter's kernel (seeded per image or batch)."""
    x = images.float() / 255.0
    policy = single_op_policy(op, value, interpolation)
    ctx = OpContext(torch.zeros(x.shape[1]), interpolation, None, True)
    if target == "kornia":
        from .kornia_runtime import build as kbuild

        v = torch.full((len(x),), value)
        ours = OPS[op].kernel(x, v, OpContext(ctx.fill, interpolation, torch.Generator().manual_seed(7), True))
        theirs = kbuild(plain_spec(policy)).run(op, x, v, torch.Generator().manual_seed(7))
    else:
        from .tv_runtime import KERNELS, PolicyOp

        op_module = PolicyOp(op, plain_spec(policy)["ops"][0]["magnitude"], interpolation, (0.0,))
        ours, theirs = [], []
        for i, img in enumerate(x):
            g = torch.Generator().manual_seed(1000 + i)
            seeded = OpContext(ctx.fill, interpolation, g, True)
            ours.append(OPS[op].kernel(img[None], torch.tensor([value]), seeded)[0])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(1000 + i)
                theirs.append(KERNELS[op](img, value, op_module))
        ours, theirs = torch.stack(ours), torch.stack(theirs)
    to8 = lambda t: t.mul(255.0).round().to(torch.uint8)  # noqa: E731
    return {**_agreement(to8(ours), to8(theirs)), "method": "pixels, matched position draws"}


def _ks_random_op(target: str, op: str, value: float, images: Tensor, interpolation: str) -> dict[str, Any]:
    """Cutout/pad_crop where the target draws positions itself: KS test on the per-image mean change."""
    policy = single_op_policy(op, value, interpolation)
    reps = images.repeat(4, 1, 1, 1)
    run = target_runner(target, policy)
    random.seed(0)
    np.random.seed(0)
    theirs = run(reps)
    ours = Augmenter(policy)(reps, generator=torch.Generator().manual_seed(0))
    change = lambda out: (out.float() - reps.float()).abs().mean(dim=(1, 2, 3)).tolist()  # noqa: E731
    _, p = ks_2samp(change(ours), change(theirs))
    return {"agreement": None, "ks_p": round(p, 4), "method": "KS on per-image mean change"}


def op_agreement(target: str, op: str, value: float | None, images: Tensor,
                 interpolation: str = "bilinear") -> dict[str, Any]:
    """Compare ``target`` with the Augmenter on ``op`` at ``value``; raises ExportError where unsupported."""
    policy = single_op_policy(op, value, interpolation)
    if op in RANDOM_PLACEMENT:
        if target in ("torchvision", "kornia"):
            target_runner(target, policy)  # refuses what the target cannot express
            return _matched_random_op(target, op, value, images, interpolation)
        return _ks_random_op(target, op, value, images, interpolation)
    if target == "timm":
        raise ExportError("timm: single ops are measured through timm_op_agreement")
    run = target_runner(target, policy)
    return {**_agreement(Augmenter(policy)(images), run(images)), "method": "pixels"}


def _level(rec: dict[str, Any]) -> str:
    if rec.get("agreement") is None:
        return "exact" if rec.get("ks_p", 0.0) >= 0.01 else "approximate"
    return "exact" if rec["agreement"] >= EXACT_AGREEMENT else "approximate"


def measure_ops(images: Tensor, targets: Sequence[str] = ("torchvision", "kornia", "albumentations"),
                ops: Sequence[str] | None = None,
                interpolations: Sequence[str] = ("nearest", "bilinear")) -> dict[str, dict[str, dict[str, Any]]]:
    """``{target: {op: {"level", "agreement" (worst case), "cases": [...], "error"}}}`` on uint8 ``images``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for target in (t for t in targets if t != "timm"):
        table: dict[str, dict[str, Any]] = {}
        for op in ops or PROBES:
            cases, errors = [], []
            for value in PROBES[op]:
                for interp in interpolations if OPS[op].geometric else interpolations[-1:]:
                    try:
                        rec = op_agreement(target, op, value, images, interp)
                    except ExportError as e:
                        errors.append({"value": value, "error": str(e)})
                        break
                    cases.append({"value": value, "interpolation": interp, **rec, "level": _level(rec)})
            if not cases:
                table[op] = {"level": "unsupported", "error": errors[0]["error"], "cases": []}
                continue
            worst = min(cases, key=lambda c: (c["level"] == "exact", c["agreement"] or 0.0))
            table[op] = {"level": worst["level"], "agreement": worst["agreement"], "cases": cases}
            if errors:  # some magnitudes refused: the export raises for them
                table[op]["refused"] = errors
        out[target] = table
    if "timm" in targets:
        timm_table = timm_op_table(images)
        out["timm"] = {op: row for op, row in timm_table.items() if ops is None or op in ops}
    return out


# ---------------------------------------------------------------------------------------------
# timm: its RandAugment ops at a level, compared with the Augmenter at the value timm drew

#: timm op name -> (our op, value from timm's arguments). Translations: timm shifts content left by +pct.
TIMM_OPS: dict[str, tuple[str, Callable[[tuple], float | None]]] = {
    "AutoContrast": ("autocontrast", lambda a: None), "Equalize": ("equalize", lambda a: None),
    "Invert": ("invert", lambda a: None), "Rotate": ("rotate", lambda a: float(a[0])),
    "PosterizeIncreasing": ("posterize", lambda a: float(min(a[0], 8))),
    "SolarizeIncreasing": ("solarize", lambda a: min(a[0] / 255.0, 1.0)),
    "SolarizeAdd": ("solarize_add", lambda a: min(a[0] / 255.0, 0.5)),
    "ColorIncreasing": ("color", lambda a: float(a[0])), "ContrastIncreasing": ("contrast", lambda a: float(a[0])),
    "BrightnessIncreasing": ("brightness", lambda a: float(a[0])),
    "SharpnessIncreasing": ("sharpness", lambda a: float(a[0])),
    "ShearX": ("shear_x", lambda a: float(a[0])), "ShearY": ("shear_y", lambda a: float(a[0])),
    "TranslateXRel": ("translate_x", lambda a: -float(a[0])), "TranslateYRel": ("translate_y", lambda a: -float(a[0])),
}


def timm_hparams(image_size: int = 32) -> dict[str, Any]:
    """The hparams ``timm.data.create_transform`` passes to its auto-augment (ImageNet mean fill, bilinear)."""
    from PIL import Image

    mean = (0.485, 0.456, 0.406)
    return {"translate_const": int(image_size * 0.45), "img_mean": tuple(min(255, round(255 * m)) for m in mean),
            "interpolation": Image.BILINEAR}


def _record_timm(transform: Any, sink: list) -> None:
    for op in transform.ops:
        fn, name = op.aug_fn, op.name

        def recorder(img, *args, _fn=fn, _name=name, **kw):
            sink.append((_name, args))
            return _fn(img, *args, **kw)

        op.aug_fn = recorder


def timm_op_table(images: Tensor, level: float = 6.0) -> dict[str, dict[str, Any]]:
    """Each op of timm's ``inc1`` RandAugment set at ``level``: pixel agreement with the Augmenter at the value
    timm drew (bilinear; the Augmenter fills with the policy's black, timm with the ImageNet mean)."""
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    table: dict[str, dict[str, Any]] = {}
    ra = rand_augment_transform(f"rand-m{level:g}-n1-p1-inc1", timm_hparams(images.shape[-1]))
    for op in ra.ops:
        ours_name, convert = TIMM_OPS[op.name]
        sink: list = []
        probe = type(ra)([op], num_layers=1)
        _record_timm(probe, sink)
        outs, refs = [], []
        for i, img in enumerate(images):
            random.seed(i)
            np.random.seed(i)
            outs.append(torch.from_numpy(np.asarray(probe(Image.fromarray(_hwc(img))))).permute(2, 0, 1))
            value = convert(sink[-1][1])
            refs.append(Augmenter(single_op_policy(ours_name, value, "bilinear"))(img[None])[0])
        rec = _agreement(torch.stack(refs), torch.stack(outs))
        table[ours_name] = {"level": _level(rec), "agreement": rec["agreement"], "timm_op": op.name,
                            "cases": [{"level_m": level, **rec, "method": "pixels at timm's drawn value"}]}
    return table


# ---------------------------------------------------------------------------------------------
# Per-policy distributions


Draw = tuple[tuple[str, float | None], ...]


def _ours_draws(policy: Policy, n: int, seed: int) -> list[Draw]:
    aug = Augmenter(policy)
    plan = aug.sample(n, torch.Generator().manual_seed(seed))
    names = plan.op_names()
    values = plan.values.tolist()
    return [tuple((names[s][i], _value(names[s][i], values[s][i])) for s in range(len(names)) if names[s][i])
            for i in range(n)]


def _value(op: str, v: float | None) -> float | None:
    return None if v is None or not OPS[op].has_magnitude else round(float(v), 5)


def _tv_draws(policy: Policy, n: int, seed: int) -> list[Draw]:
    from .tv_runtime import NATIVE, PolicyOp, build_graph

    graph = build_graph(plain_spec(policy))
    sink: list = []

    def leaves(t):
        children = getattr(t, "transforms", None)
        if children is None:
            yield t
        else:
            for c in children:
                yield from leaves(c)

    seen = set()
    for leaf in leaves(graph):
        if id(leaf) in seen:
            continue
        seen.add(id(leaf))
        if isinstance(leaf, PolicyOp):
            make = leaf.make_params
            leaf.make_params = lambda flat, _m=make, _op=leaf.op: _rec(sink, _op, _m(flat))
        else:
            name = next((k for k, f in NATIVE.items() if type(f()) is type(leaf)), None)
            if name and name != "identity":
                fwd = leaf.forward
                leaf.forward = lambda *a, _f=fwd, _n=name: (sink.append((_n, None)), _f(*a))[1]
    x = torch.zeros(3, 8, 8, dtype=torch.uint8)
    out: list[Draw] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(n):
            sink.clear()
            graph(x)
            out.append(tuple(sink))
    return out


def _rec(sink: list, op: str, params: dict) -> dict:
    sink.append((op, _value(op, params["value"])))
    return params


def _kornia_draws(policy: Policy, n: int, seed: int) -> list[Draw]:
    from .kornia_runtime import build as kbuild

    _check_kornia(policy)
    module = kbuild(plain_spec(policy))
    ops, values = module.sample(n, torch.Generator().manual_seed(seed))
    names = module.names
    return [tuple((names[k], _value(names[k], values[s, i].item())) for s in range(ops.shape[0])
                  if (k := int(ops[s, i])) >= 0) for i in range(n)]


def _albumentations_draws(policy: Policy, n: int, seed: int) -> list[Draw]:
    import albumentations as A

    from .albumentations import to_albumentations

    meta: list = []
    t = A.from_dict(to_albumentations(policy, meta=meta))
    sink: list = []

    def leaves(node):
        children = getattr(node, "transforms", None)
        if children is None:
            yield node
        else:
            for c in children:
                yield from leaves(c)

    found = list(leaves(t))
    if len(found) != len(meta):
        raise RuntimeError(f"albumentations: {len(found)} transforms loaded for {len(meta)} emitted")
    for leaf, (op, lo, hi) in zip(found, meta, strict=True):
        if op == "identity":
            continue
        value = _value(op, lo) if lo is not None and lo == hi else None
        apply = leaf.apply_with_params
        leaf.apply_with_params = lambda params, *a, _f=apply, _r=(op, value), **kw: (sink.append(_r),
                                                                                    _f(params, *a, **kw))[1]
    t.set_random_seed(seed)
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    out: list[Draw] = []
    for _ in range(n):
        sink.clear()
        t(image=image)
        out.append(tuple(sink))
    return out


def _timm_draws(policy: Policy, n: int, seed: int) -> list[Draw]:
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    from .timm import to_timm

    ra = rand_augment_transform(to_timm(policy), timm_hparams())
    sink: list = []
    _record_timm(ra, sink)
    random.seed(seed)
    np.random.seed(seed)
    img = Image.new("RGB", (8, 8))
    out: list[Draw] = []
    for _ in range(n):
        sink.clear()
        ra(img)
        out.append(tuple((TIMM_OPS[n][0], _value(TIMM_OPS[n][0], TIMM_OPS[n][1](args))) for n, args in sink))
    return out


_DRAWS = {"torchvision": _tv_draws, "kornia": _kornia_draws, "albumentations": _albumentations_draws,
          "timm": _timm_draws}


def draws(target: str, policy: Policy, n: int, seed: int = 0) -> list[Draw]:
    """``n`` draws of ``target``'s export (``"augmenter"``: the reference): per sample the applied ops and values."""
    if target == "augmenter":
        return _ours_draws(policy, n, seed)
    return _DRAWS[target](policy, n, seed)


def chi_square(a: Counter, b: Counter, min_count: int = 10) -> tuple[float, int, float]:
    """Two-sample chi-square homogeneity test of category counts (rare categories pooled): stat, dof, p."""
    keys = sorted(set(a) | set(b), key=repr)
    rare = [k for k in keys if a[k] + b[k] < min_count]
    rows = [(a[k], b[k]) for k in keys if k not in rare]
    if rare:
        rows.append((sum(a[k] for k in rare), sum(b[k] for k in rare)))
    rows = [r for r in rows if r[0] + r[1] > 0]
    if len(rows) < 2:
        return 0.0, 0, 1.0
    na, nb = sum(r[0] for r in rows), sum(r[1] for r in rows)
    total = na + nb
    stat = 0.0
    for ca, cb in rows:
        col = ca + cb
        for c, n_row in ((ca, na), (cb, nb)):
            e = n_row * col / total
            stat += (c - e) ** 2 / e
    dof = len(rows) - 1
    p = float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64),
                                      torch.tensor(stat / 2.0, dtype=torch.float64)))
    return stat, dof, p


def ks_2samp(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and asymptotic p-value."""
    xa, xb = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    if len(xa) == 0 or len(xb) == 0:
        return 0.0, 1.0
    grid = np.concatenate([xa, xb])
    d = float(np.max(np.abs(np.searchsorted(xa, grid, side="right") / len(xa)
                            - np.searchsorted(xb, grid, side="right") / len(xb))))
    en = math.sqrt(len(xa) * len(xb) / (len(xa) + len(xb)))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 1e-3:
        return d, 1.0
    p = 2.0 * sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 101))
    return d, float(min(max(p, 0.0), 1.0))


def distribution_test(policy: Policy, target: str, n: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Compare ``target``'s draws of ``policy`` with the Augmenter's over ``n`` samples (see the module docs)."""
    ours, theirs = draws("augmenter", policy, n, seed), draws(target, policy, n, seed + 1)
    seq = lambda ds: Counter(tuple(op for op, _ in d) for d in ds)  # noqa: E731
    stat, dof, p_ops = chi_square(seq(ours), seq(theirs))
    per_op: dict[str, dict[str, Any]] = {}
    unobserved = []
    for op in sorted({op for d in ours for op, _ in d} | {op for d in theirs for op, _ in d}):
        va = [v for d in ours for o, v in d if o == op and v is not None]
        vb = [v for d in theirs for o, v in d if o == op and v is not None]
        if not OPS[op].has_magnitude:
            continue
        if not vb and any(o == op for d in theirs for o, _ in d):
            unobserved.append(op)
            continue
        if len(set(va) | set(vb)) <= 32:
            _, _, p = chi_square(Counter(va), Counter(vb), min_count=5)
            per_op[op] = {"test": "chi-square", "p": p}
        else:
            _, p = ks_2samp(va, vb)
            per_op[op] = {"test": "KS", "p": p}
    p_values = [p_ops] + [r["p"] for r in per_op.values()]
    return {"target": target, "n": n, "ops_test": "chi-square", "ops_p": p_ops, "ops_chi2": stat, "ops_dof": dof,
            "magnitudes": per_op, "magnitudes_unobserved": unobserved, "min_p": min(p_values),
            "passed": min(p_values) >= MIN_P}


# ---------------------------------------------------------------------------------------------
# The stored per-op table


def load_measured() -> dict[str, dict[str, dict[str, Any]]]:
    """The per-op table measured on the bundled sample (``op_fidelity.json``)."""
    text = resources.files("search_spaces").joinpath("exports", "op_fidelity.json").read_text()
    return json.loads(text)["targets"]


MEASURED: dict[str, dict[str, dict[str, Any]]] = {}
try:
    MEASURED = load_measured()
except FileNotFoundError:  # while the table is first measured
    MEASURED = {}


def op_levels(policy: Policy, target: str, table: dict[str, dict[str, dict[str, Any]]] | None = None) -> dict:
    """``{op: level}`` of the ops ``policy`` uses, from the measured per-op table."""
    table = table if table is not None else MEASURED
    rows = table.get(target, {})
    return {o.op: rows.get(o.op, {}).get("level", "unmeasured") for o in policy.all_ops() if o.op != "identity"}
