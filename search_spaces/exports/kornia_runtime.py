"""Run an augpolicy/1.0 policy on image batches with kornia.augmentation (imports only torch and kornia).

``policy-search export --format kornia`` copies this module verbatim into each exported file, after the
policy literal's provenance header. :class:`PolicyAugmentation` is an ``nn.Module`` that takes a batch
``(B, C, H, W)`` (uint8, or float in [0, 1]) on any device and, per stage, draws for **every sample** its
op, coin flip, sign and magnitude (kornia's own ``auto`` presets draw one op per batch), then runs each op
once on the samples that drew it through a ``kornia.augmentation`` module whose sampled parameters are set
to the drawn magnitudes (``aug(x, params=...)``, as ``kornia.augmentation.auto`` operations do):

* rotate, shear, translate: ``RandomAffine`` (angle negated: kornia's positive angle turns clockwise; shear
  in degrees ``atan(factor)`` about the top-left pixel edge; translation in pixels), fill via
  ``padding_mode="fill"``;
* brightness, contrast, color: ``ColorJitter`` (PIL-like multiply, mean blend, gray blend);
* sharpness ``RandomSharpness``, posterize ``RandomPosterize``, solarize ``RandomSolarize`` (no addition),
  autocontrast ``RandomAutoContrast``, equalize ``RandomEqualize``, invert ``RandomInvert``, grayscale
  ``RandomGrayscale``, hflip ``RandomHorizontalFlip``;
* cutout: ``RandomErasing`` with the box set per sample (centre uniform, clipped at the border);
* pad_crop: ``RandomCrop(size, padding)`` with the crop offset set per sample.

Randomness: draws use ``generator`` (or torch's global one). With ``seed``, the module keeps its own
generator, re-derived in each DataLoader worker from the seed and ``get_worker_info().seed``.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn

__all__ = ["PolicyAugmentation", "build", "KORNIA_OPS", "stream_seed"]

GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
COLOUR = {"brightness": "brightness_factor", "contrast": "contrast_factor", "color": "saturation_factor"}
SIMPLE = {"sharpness": ("RandomSharpness", "sharpness"), "posterize": ("RandomPosterize", "bits_factor"),
          "solarize": ("RandomSolarize", "thresholds")}
PARAMETER_FREE = {"autocontrast": "RandomAutoContrast", "equalize": "RandomEqualize", "invert": "RandomInvert",
                  "grayscale": "RandomGrayscale", "hflip": "RandomHorizontalFlip"}
#: Every op this runtime runs (identity is a no-op).
KORNIA_OPS = ("identity", *GEOMETRIC, *COLOUR, *SIMPLE, *PARAMETER_FREE, "cutout", "pad_crop")
_DIST = {"fixed": 0, "uniform": 1, "normal": 2}


def stream_seed(seed: int) -> int:
    """``seed`` in the main process; in a DataLoader worker a mix of ``seed`` and the worker's seed."""
    info = torch.utils.data.get_worker_info()
    if info is None:
        return int(seed) % 2**63
    mixed = (int(seed) * 0x9E3779B97F4A7C15 + int(info.seed) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % 2**64
    return mixed % 2**63


class PolicyAugmentation(nn.Module):
    """A policy literal as a batch augmentation module (see the module docs)."""

    def __init__(self, spec: dict, seed: int | None = None) -> None:
        super().__init__()
        self.spec = spec
        if spec["type"] == "subpolicy_choice":
            subs = spec["subpolicies"]
            self.instances = [o for sp in subs for o in sp]
            width = max(len(sp) for sp in subs)
            table, start = [], 0
            for sp in subs:
                table.append([start + j if j < len(sp) else -1 for j in range(width)])
                start += len(sp)
            self.sub_table = torch.tensor(table, dtype=torch.long)
            self.sub_weight = torch.tensor(spec["weights"] or [1.0] * len(subs), dtype=torch.float)
            self.num_stages = width
        else:
            self.instances = list(spec["ops"])
            self.num_stages = spec["num_ops"]
        for o in self.instances:
            if o["op"] not in KORNIA_OPS:
                raise ValueError(f"kornia export: no kornia op for '{o['op']}'")
        rows = []
        for o in self.instances:
            m = o["magnitude"]
            if m is None:
                rows.append([o["prob"], 0, 0.0, 0.0, 0, 0.0, 0.0, 0.0, 0])
                continue
            a, b = (m["low"], m["high"]) if m["dist"] == "uniform" else (m["value"], m["std"] or 0.0)
            rows.append([o["prob"], _DIST[m["dist"]], a, b, float(m["random_sign"]), *m["bounds"], m["identity"],
                         float(m["integer"])])
        self.table = torch.tensor(rows, dtype=torch.float64)  # prob, dist, a, b, sign, lo, hi, identity, integer
        self.weights = torch.tensor([o["weight"] for o in self.instances], dtype=torch.float)
        self.names = [o["op"] for o in self.instances]
        self.seed = seed
        self._generator, self._key = None, None
        mode = spec["interpolation"].upper()
        fill = torch.tensor(spec["fill"], dtype=torch.float32)
        zero = not bool(fill.any())
        self.affine = K.RandomAffine(degrees=0.0, p=1.0, resample=mode, align_corners=True,
                                     padding_mode="zeros" if zero else "fill", fill_value=None if zero else fill)
        self.jitter = K.ColorJitter(brightness=(0.0, 2.0), contrast=(0.0, 2.0), saturation=(0.0, 2.0), p=1.0)
        self.simple = nn.ModuleDict({
            "sharpness": K.RandomSharpness((0.0, 2.0), p=1.0), "posterize": K.RandomPosterize((1.0, 8.0), p=1.0),
            "solarize": K.RandomSolarize(thresholds=(0.0, 1.0), additions=(0.0, 0.0), p=1.0)})
        self.parameter_free = nn.ModuleDict({k: getattr(K, v)(p=1.0) for k, v in PARAMETER_FREE.items()})
        self.erasing = K.RandomErasing(p=1.0)
        self.crops = nn.ModuleDict()
        self.register_buffer("fill", fill, persistent=False)

    # -- sampling ------------------------------------------------------------------------------

    def generator(self) -> torch.Generator | None:
        """This module's CPU generator (seeded, worker-aware), or None for torch's global one."""
        if self.seed is None:
            return None
        info = torch.utils.data.get_worker_info()
        key = None if info is None else (info.id, info.seed)
        if self._generator is None or key != self._key:
            self._generator, self._key = torch.Generator().manual_seed(stream_seed(self.seed)), key
        return self._generator

    @torch.no_grad()
    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per stage and sample: the op instance (``-1``: none or identity) and its value, drawn on the CPU."""
        g = generator if generator is not None else self.generator()
        s, b = self.num_stages, batch_size
        if s == 0 or b == 0:
            return torch.full((s, b), -1, dtype=torch.long), torch.zeros(s, b, dtype=torch.float64)
        kind = self.spec["type"]
        if kind == "sequential":
            inst = torch.arange(s).view(s, 1).expand(s, b)
        elif kind == "subpolicy_choice":
            inst = self.sub_table[torch.multinomial(self.sub_weight, b, replacement=True, generator=g)].T
        else:
            inst = torch.multinomial(self.weights, s * b, replacement=True, generator=g).view(s, b)
        gate, u, sign_u = torch.rand(3, s, b, generator=g, dtype=torch.float64)
        normal = torch.randn(s, b, generator=g, dtype=torch.float64)
        prob, dist, a, hi, sign, lo_b, hi_b, ident, is_int = self.table[inst.clamp(min=0)].unbind(-1)
        is_int = is_int.bool()
        uni = torch.where(is_int, (a + (hi - a + 1.0) * u).floor().minimum(hi), a + (hi - a) * u)
        value = torch.where(dist == 0, a, torch.where(dist == 1, uni, a + hi * normal))
        value = torch.where((sign > 0) & (sign_u < 0.5), 2.0 * ident - value, value)
        value = torch.where(is_int, value.clamp(lo_b, hi_b).round(), value.clamp(lo_b, hi_b))
        identity = torch.tensor([n == "identity" for n in self.names])[inst.clamp(min=0)]
        applied = (inst >= 0) & (gate < prob) & ~identity
        return torch.where(applied, inst, torch.full_like(inst, -1)), value

    # -- execution -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch ``(B, C, H, W)``; returns the input's dtype."""
        if x.ndim != 4:
            raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
        g = generator if generator is not None else self.generator()
        ops, values = self.sample(x.shape[0], g)
        is_uint8 = x.dtype == torch.uint8
        out = x.float().div(255.0) if is_uint8 else x.clone()
        names = torch.tensor([-1] + [KORNIA_OPS.index(n) for n in self.names])[ops + 1]  # op name per slot
        for stage in range(ops.shape[0]):
            for code in names[stage].unique().tolist():
                if code < 0:
                    continue
                rows = (names[stage] == code).nonzero().squeeze(1)
                v = values[stage, rows].to(out.device, out.dtype)
                idx = rows.to(out.device)
                out[idx] = self.run(KORNIA_OPS[code], out[idx], v, g)
        return out.mul(255.0).round_().to(torch.uint8) if is_uint8 else out

    def run(self, op: str, x: torch.Tensor, v: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        """Apply ``op`` to float ``x`` with per-sample values ``v`` through its kornia module."""
        b, _, h, w = x.shape
        if op in GEOMETRIC:
            params = self.affine.forward_parameters(x.shape)
            zeros = torch.zeros_like(v)
            params["angle"] = -v if op == "rotate" else zeros
            shear = torch.rad2deg(torch.atan(v))
            params["shear_x"] = shear if op == "shear_x" else zeros
            params["shear_y"] = shear if op == "shear_y" else zeros
            tx = v * w if op == "translate_x" else zeros
            ty = v * h if op == "translate_y" else zeros
            params["translations"] = torch.stack([tx, ty], dim=-1)
            if op in ("shear_x", "shear_y"):  # shear about the top-left pixel edge (x = -1/2 or y = -1/2)
                params["center"] = torch.tensor([[0.0, -0.5] if op == "shear_x" else [-0.5, 0.0]],
                                                dtype=v.dtype, device=v.device).expand(b, 2)
            return self.affine(x, params=params)
        if op in COLOUR:
            params = self.jitter.forward_parameters(x.shape)
            for key in COLOUR.values():
                params[key] = torch.ones_like(v)
            params["hue_factor"] = torch.zeros_like(v)
            params[COLOUR[op]] = v
            return self.jitter(x, params=params)
        if op in SIMPLE:
            aug = self.simple[op]
            params = aug.forward_parameters(x.shape)
            params[SIMPLE[op][1]] = v.round().to(torch.int32) if op == "posterize" else v
            if op == "solarize":
                params["additions"] = torch.zeros_like(v)
            return aug(x, params=params)
        if op in PARAMETER_FREE:
            return self.parameter_free[op](x)
        if op == "cutout":
            return self._cutout(x, v, g)
        if op == "pad_crop":
            return self._pad_crop(x, v, g)
        raise ValueError(f"kornia export: no kornia op for '{op}'")

    def _rand(self, n: int, g: torch.Generator | None, device: torch.device) -> torch.Tensor:
        return torch.rand(n, generator=g).to(device)  # float32, as the Augmenter draws

    def _cutout(self, x: torch.Tensor, v: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        b, c, h, w = x.shape
        side = (v.double() * min(h, w)).round()
        cy, cx = (self._rand(b, g, x.device) * h).floor(), (self._rand(b, g, x.device) * w).floor()
        y0, x0 = cy - torch.div(side, 2, rounding_mode="floor"), cx - torch.div(side, 2, rounding_mode="floor")
        top, left = y0.clamp(min=0), x0.clamp(min=0)
        bottom, right = (y0 + side).clamp(max=h), (x0 + side).clamp(max=w)
        params = self.erasing.forward_parameters(x.shape)
        params["xs"], params["ys"] = left.long(), top.long()
        params["widths"], params["heights"] = (right - left).clamp(min=0).long(), (bottom - top).clamp(min=0).long()
        if self.fill.numel() > 1 and c > 1 and not bool((self.fill == self.fill[0]).all()):
            raise ValueError("kornia export: cutout with a per-channel fill colour (RandomErasing fills one value)")
        params["values"] = self.fill[:1].to(x.device, x.dtype).expand(b).clone()
        return self.erasing(x, params=params)

    def _pad_crop(self, x: torch.Tensor, v: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        b, c, h, w = x.shape
        out = x.clone()
        pads = torch.stack([(v.double() * h).round(), (v.double() * w).round()], dim=-1).long().cpu()
        for py, px in pads.unique(dim=0).tolist():
            rows = ((pads[:, 0] == py) & (pads[:, 1] == px)).nonzero().squeeze(1).to(x.device)
            if py == 0 and px == 0:
                continue
            key = f"{h}_{w}_{py}_{px}"
            if key not in self.crops:
                fill = self.fill.tolist()
                self.crops[key] = K.RandomCrop((h, w), padding=(px, py), fill=fill[0] if len(set(fill)) == 1 else 0.0,
                                               pad_if_needed=False, p=1.0)
                if len(set(fill)) > 1:
                    raise ValueError("kornia export: pad_crop with a per-channel fill colour")
            crop = self.crops[key]
            n = len(rows)
            params = crop.forward_parameters(torch.Size((n, c, h, w)))
            top = (self._rand(n, g, x.device) * (2 * py + 1)).floor()
            left = (self._rand(n, g, x.device) * (2 * px + 1)).floor()
            src = params["src"].clone()
            corners = torch.tensor([[0.0, 0.0], [w - 1.0, 0.0], [w - 1.0, h - 1.0], [0.0, h - 1.0]],
                                   dtype=src.dtype, device=src.device)
            src[:] = corners + torch.stack([left, top], dim=-1).to(src.dtype).to(src.device).view(n, 1, 2)
            params["src"] = src
            out[rows] = crop(x[rows], params=params)
        return out

    def extra_repr(self) -> str:
        return f"policy={self.spec.get('name') or self.spec['type']!r}, stages={self.num_stages}, seed={self.seed}"


def build(spec: dict, seed: int | None = None) -> PolicyAugmentation:
    """The batch augmentation module of a policy literal."""
    return PolicyAugmentation(spec, seed)
