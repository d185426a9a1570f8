"""Run an augpolicy/1.0 policy with torchvision v2 alone (this module imports only torch and torchvision).

``policy-search export --format torchvision`` copies this module verbatim into each exported file, after
the policy literal's provenance header, so the file needs nothing of policy-search. :func:`build` turns
the plain policy literal (see ``search_spaces.exports.spec.plain_spec``) into a graph of torchvision's own
transforms: ``Compose`` (sequential ops, stages), ``RandomChoice`` (sub-policies, RandAugment/TrivialAugment
op choice, with the policy's weights), ``RandomApply`` (each op's probability), the native parameter-free
transforms (``RandomInvert``, ``RandomEqualize``, ``RandomAutocontrast``, ``RandomHorizontalFlip``,
``RandomGrayscale``, ``Identity``) and one tiny ``v2.Transform`` (:class:`PolicyOp`) that draws an op's
magnitude (fixed, uniform or normal, with a random sign) and calls ``torchvision.transforms.v2.functional``.

Apply it per image (PIL, or a ``(C, H, W)`` uint8/float tensor) in a Dataset, as torchvision's own
AutoAugment: every call draws its own sub-policy, ops, coin flips, signs and magnitudes.

Randomness: unseeded, the graph draws from torch's global generator, which a DataLoader seeds per worker.
``build(spec, seed=s)`` wraps the graph in :class:`SeededTransform`: its own stream, derived from ``s``
and, inside a DataLoader worker, from ``torch.utils.data.get_worker_info().seed`` (the loader's base seed
plus the worker id), so workers draw different augmentations, each epoch draws new ones, and a run with a
seeded DataLoader (``generator=torch.Generator().manual_seed(...)``) repeats exactly.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

__all__ = ["PolicyOp", "SeededTransform", "build", "build_batch_transform", "draw_value", "stream_seed"]

SOLARIZE_ADD_THRESHOLD = 128.0 / 255.0
_MODES = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR}


def draw_value(m: dict) -> float:
    """One draw of a magnitude literal: fixed, uniform or normal; random sign about the identity; clipped."""
    u, sign_u = torch.rand(2, dtype=torch.float64).tolist()
    if m["dist"] == "fixed":
        v = m["value"]
    elif m["dist"] == "uniform":
        lo, hi = m["low"], m["high"]
        v = min(math.floor(lo + (hi - lo + 1.0) * u), hi) if m["integer"] else lo + (hi - lo) * u
    else:
        v = m["value"] + m["std"] * float(torch.randn((), dtype=torch.float64))
    if m["random_sign"] and sign_u < 0.5:
        v = 2.0 * m["identity"] - v
    v = min(max(v, m["bounds"][0]), m["bounds"][1])
    return float(round(v)) if m["integer"] else float(v)


def _bound(x) -> float:
    return 1.0 if isinstance(x, torch.Tensor) and x.is_floating_point() else 255.0


def _fill(x, fill: tuple) -> list | None:
    if not any(fill):
        return None  # torchvision's plain zero padding (a fill list blends the one-pixel seam twice)
    scale = _bound(x)
    return [f * scale if scale == 1.0 else float(round(f * scale)) for f in fill]


def _on_float(x, fn):
    """Run ``fn`` on ``x`` as a float (C, H, W) tensor in [0, 1]; return the input's type (PIL, uint8, float)."""
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return fn(x)
    tensor = x if isinstance(x, torch.Tensor) else F.pil_to_tensor(x)
    out = fn(tensor.float() / 255.0).mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return out if isinstance(x, torch.Tensor) else F.to_pil_image(out)


def _rounded(x, fn):
    """``fn`` on float for uint8 tensors, rounded back (torchvision's uint8 blend truncates); PIL/float as is."""
    if isinstance(x, torch.Tensor) and not x.is_floating_point():
        return _on_float(x, fn)
    return fn(x)


def _affine(x, t, shear=(0.0, 0.0), translate=(0.0, 0.0), center=None):
    return F.affine(x, angle=0.0, translate=list(translate), scale=1.0, shear=list(shear),
                    interpolation=_MODES[t.interpolation], fill=_fill(x, t.fill), center=center)


def _shear(x, v, t, axis):
    deg = math.degrees(math.atan(v))
    return _affine(x, t, shear=(deg, 0.0) if axis == 0 else (0.0, deg), center=[0, 0])


def _translate(x, v, t, axis):
    h, w = F.get_size(x)
    return _affine(x, t, translate=(v * w, 0.0) if axis == 0 else (0.0, v * h))


def _posterize(x, v, t):
    bits = int(v)
    if isinstance(x, torch.Tensor) and x.is_floating_point():  # uint8 semantics, as on PIL/uint8 inputs
        return F.to_dtype(F.posterize(x.mul(255.0).round().to(torch.uint8), bits), torch.float32, scale=True)
    return F.posterize(x, bits)


def _solarize_add(x, v, t):
    return _on_float(x, lambda f: torch.where(f < SOLARIZE_ADD_THRESHOLD, (f + v).clamp(0.0, 1.0), f))


def _fill_tensor(f: torch.Tensor, fill: tuple) -> torch.Tensor:
    fill_t = torch.tensor(fill, dtype=f.dtype)
    return (fill_t if fill_t.numel() == f.shape[0] else fill_t.mean().expand(f.shape[0])).view(-1, 1, 1)


def _cutout(x, v, t):
    def run(f):
        h, w = f.shape[-2:]
        side = round(v * min(h, w))
        cy, cx = math.floor(float(torch.rand(())) * h), math.floor(float(torch.rand(())) * w)
        y0, x0 = cy - side // 2, cx - side // 2
        top, left, bottom, right = max(y0, 0), max(x0, 0), min(y0 + side, h), min(x0 + side, w)
        out = f.clone()
        if bottom > top and right > left:
            out[..., top:bottom, left:right] = _fill_tensor(f, t.fill)
        return out

    return _on_float(x, run)


def _pad_crop(x, v, t):
    def run(f):
        h, w = f.shape[-2:]
        py, px = round(v * h), round(v * w)
        if py == 0 and px == 0:
            return f
        top = math.floor(float(torch.rand(())) * (2 * py + 1))
        left = math.floor(float(torch.rand(())) * (2 * px + 1))
        fill = _fill_tensor(f, t.fill)
        padded = torch.nn.functional.pad(f - fill, (px, px, py, py)) + fill
        return padded[..., top:top + h, left:left + w].contiguous()

    return _on_float(x, run)


KERNELS = {
    "rotate": lambda x, v, t: F.rotate(x, v, interpolation=_MODES[t.interpolation], fill=_fill(x, t.fill)),
    "shear_x": lambda x, v, t: _shear(x, v, t, 0),
    "shear_y": lambda x, v, t: _shear(x, v, t, 1),
    "translate_x": lambda x, v, t: _translate(x, v, t, 0),
    "translate_y": lambda x, v, t: _translate(x, v, t, 1),
    "brightness": lambda x, v, t: _rounded(x, lambda f: F.adjust_brightness(f, v)),
    "color": lambda x, v, t: _rounded(x, lambda f: F.adjust_saturation(f, v)),
    "contrast": lambda x, v, t: _rounded(x, lambda f: F.adjust_contrast(f, v)),
    "sharpness": lambda x, v, t: _rounded(x, lambda f: F.adjust_sharpness(f, v)),
    "posterize": _posterize,
    "solarize": lambda x, v, t: F.solarize(x, threshold=v * _bound(x)),
    "solarize_add": _solarize_add,
    "cutout": _cutout,
    "pad_crop": _pad_crop,
}

#: Parameter-free ops: torchvision's own transforms (always applied; ``RandomApply`` holds the probability).
NATIVE = {
    "identity": lambda: v2.Identity(),
    "invert": lambda: v2.RandomInvert(p=1.0),
    "equalize": lambda: v2.RandomEqualize(p=1.0),
    "autocontrast": lambda: v2.RandomAutocontrast(p=1.0),
    "hflip": lambda: v2.RandomHorizontalFlip(p=1.0),
    "grayscale": lambda: v2.RandomGrayscale(p=1.0),
}


class PolicyOp(v2.Transform):
    """One op with a magnitude: draws the value in ``make_params``, applies ``v2.functional`` in ``transform``."""

    def __init__(self, op: str, magnitude: dict, interpolation: str = "nearest", fill=(0.0,)) -> None:
        super().__init__()
        if op not in KERNELS:
            raise ValueError(f"torchvision export: no kernel for op '{op}'")
        self.op, self.magnitude, self.interpolation, self.fill = op, dict(magnitude), interpolation, tuple(fill)

    def make_params(self, flat_inputs: list) -> dict:
        return {"value": draw_value(self.magnitude)}

    def transform(self, inpt, params: dict):
        return KERNELS[self.op](inpt, params["value"], self)

    def extra_repr(self) -> str:
        m = self.magnitude
        what = {"fixed": f"value={m['value']}", "uniform": f"low={m['low']}, high={m['high']}",
                "normal": f"value={m['value']}, std={m['std']}"}[m["dist"]]
        return f"op={self.op!r}, {what}, random_sign={m['random_sign']}"


def _op_node(o: dict, spec: dict) -> v2.Transform:
    if o["op"] in NATIVE:
        inner = NATIVE[o["op"]]()
    else:
        inner = PolicyOp(o["op"], o["magnitude"], spec["interpolation"], spec["fill"])
    return inner if o["prob"] >= 1.0 else v2.RandomApply([inner], p=o["prob"])


def _choice(nodes: list, weights: list | None) -> v2.Transform:
    if weights is None or len(set(weights)) == 1:
        return v2.RandomChoice(nodes)
    return v2.RandomChoice(nodes, p=[float(w) for w in weights])


def build_graph(spec: dict) -> v2.Transform:
    """The policy literal as torchvision transforms (unseeded: torch's global generator)."""
    kind = spec["type"]
    if kind == "subpolicy_choice":
        subs = [v2.Compose([_op_node(o, spec) for o in sp]) for sp in spec["subpolicies"]]
        return _choice(subs, spec["weights"])
    nodes = [_op_node(o, spec) for o in spec["ops"]]
    if kind == "sequential":
        return v2.Compose(nodes)
    if spec["num_ops"] == 0:
        return v2.Identity()
    choice = _choice(nodes, [o["weight"] for o in spec["ops"]])
    return choice if spec["num_ops"] == 1 else v2.Compose([choice] * spec["num_ops"])


def stream_seed(seed: int) -> int:
    """The seed of this process's stream: ``seed`` in the main process; in a DataLoader worker a mix of
    ``seed`` and the worker's seed (the loader's base seed + worker id), distinct per worker and epoch."""
    info = torch.utils.data.get_worker_info()
    if info is None:
        return int(seed) % 2**63
    mixed = (int(seed) * 0x9E3779B97F4A7C15 + int(info.seed) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % 2**64
    return mixed % 2**63


class SeededTransform(v2.Transform):
    """Run ``transform`` (``.inner``) on its own stream (see :func:`stream_seed`); the global one is left alone."""

    def __init__(self, transform, seed: int) -> None:
        super().__init__()
        self.inner, self.seed = transform, int(seed)
        self._state, self._key = None, None

    def forward(self, *inputs):
        info = torch.utils.data.get_worker_info()
        key = None if info is None else (info.id, info.seed)
        if self._state is None or key != self._key:  # first call, or first call in this worker
            self._state = torch.Generator().manual_seed(stream_seed(self.seed)).get_state()
            self._key = key
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._state)
            out = self.inner(*inputs)
            self._state = torch.get_rng_state()
        return out

    def extra_repr(self) -> str:
        return f"seed={self.seed}"


def build(spec: dict, seed: int | None = None) -> v2.Transform:
    """The per-image transform of a policy literal; with ``seed``, on its own worker-safe stream."""
    graph = build_graph(spec)
    return graph if seed is None else SeededTransform(graph, seed)


def build_batch_transform(spec: dict, num_classes: int) -> v2.Transform | None:
    """The policy's batch ops as torchvision's ``CutMix``/``MixUp`` on collated ``(images, labels)`` batches
    (at most one per batch, op ``i`` with probability ``prob_i``); ``None`` without batch ops. torchvision
    draws one lambda per batch and pairs each sample with its neighbour (``roll``), where the policy draws
    lambda per sample and pairs by a random permutation."""
    ops = spec.get("batch_ops") or []
    if not ops:
        return None
    made = {"mixup": v2.MixUp, "cutmix": v2.CutMix}
    nodes = [made[b["op"]](alpha=b["alpha"], num_classes=num_classes) for b in ops]
    probs = [b["prob"] for b in ops]
    rest = 1.0 - sum(probs)
    if rest > 1e-9:
        nodes.append(v2.Identity())
        probs.append(rest)
    return nodes[0] if len(nodes) == 1 else v2.RandomChoice(nodes, p=probs)
