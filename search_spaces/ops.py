"""The op registry: every augmentation op, its physical parameter and its batched kernel.

One table (:data:`OPS`) holds every per-sample op. Each entry says what its magnitude means in physical
units (degrees, shear factor, fraction of the image size, PIL enhancement factor, bits kept, ...), the
range a policy may use, the identity value, how a normalised level in ``[0, 1]`` maps to a value, and
whether a random sign applies. Semantics follow ``torchvision.transforms.v2.functional`` on float
images (the golden tests compare against it); ``../shared/reference/op-semantics.md`` §5 and §7 list
where libraries disagree.

Kernels take a float batch ``(b, C, H, W)`` in ``[0, 1]`` and per-sample values ``(b,)``, so one call
augments every sample that drew the op, each with its own magnitude. Geometric ops are not kernels
but affine matrices (:func:`affine_matrices`), so the augmenter fuses them into one warp. Each op has our
written-out kernel (:data:`OURS_KERNELS`) and, where Kornia has one, Kornia's functional kernel
(:data:`KORNIA_KERNELS`); :data:`KERNEL_SOURCE` records which one runs, as measured by
``benchmarks/kornia_kernels.py`` (Kornia's where it matches torchvision and is not slower).

Batch-level ops (``cutmix``, ``mixup``) live in :data:`BATCH_OPS`; they need labels and run after
the per-sample policy. Lambda convention: ``lam`` is the weight of the *original* sample (as in
torchvision), the partner comes from a random permutation, and ``lam`` is drawn per sample.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

__all__ = ["OPS", "BATCH_OPS", "OpSpec", "BatchOpSpec", "OpContext", "affine_matrices", "warp", "OURS_KERNELS",
           "KORNIA_KERNELS", "KERNEL_SOURCE"]

#: ``solarize_add`` adds to pixels below this threshold (128 on the uint8 scale, as in timm/TF).
SOLARIZE_ADD_THRESHOLD = 128.0 / 255.0


@dataclass(frozen=True)
class OpContext:
    """What a kernel needs besides pixels and magnitudes."""

    fill: Tensor  # (C,) fill colour for exposed areas, in [0, 1]
    interpolation: str  # "nearest" | "bilinear"
    generator: torch.Generator | None
    zero_fill: bool = False  # fill is all zeros (lets warps skip shifting pixels by the fill)


Kernel = Callable[[Tensor, Tensor, OpContext], Tensor]


@dataclass(frozen=True)
class OpSpec:
    """One per-sample op.

    ``level_to_value(level)`` maps a level in [0, 1] to ``identity + level * (level_max - identity)``;
    a random sign then reflects the value around ``identity`` (``1 + 0.3`` becomes ``1 - 0.3``).
    """

    name: str
    doc: str
    param: str | None = None  # physical parameter name, None for parameter-free ops
    bounds: tuple[float, float] | None = None  # values a policy may hold
    identity: float | None = None  # value that leaves the image unchanged
    level_max: float | None = None  # value at level 1 (default magnitude space: torchvision AA/RA)
    signed: bool = False  # random sign by default
    integer: bool = False  # value is rounded to an integer
    geometric: bool = False  # expressed as an affine matrix and fused into one warp
    kernel: Kernel | None = None  # None for geometric ops (they run through ``warp``)
    kernel_source: str = "ours"  # "kornia" when the kernel (the warp, for geometric ops) is Kornia's

    @property
    def has_magnitude(self) -> bool:
        return self.param is not None

    def level_to_value(self, level: float, level_max: float | None = None) -> float:
        """Physical value at normalised ``level`` (positive side; no sign applied)."""
        if not self.has_magnitude:
            raise ValueError(f"op '{self.name}' takes no magnitude")
        top = self.level_max if level_max is None else level_max
        value = self.identity + float(level) * (top - self.identity)
        return float(round(value)) if self.integer else float(f"{value:.12g}")  # 1.6, not 1.5999999999999999


# ---------------------------------------------------------------------------------------------
# Kernels: float (b, C, H, W) in [0, 1], values (b,) -> float (b, C, H, W) in [0, 1]


def _per_sample(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def _gray(x: Tensor) -> Tensor:
    """``kornia.color.rgb_to_grayscale`` (weights 0.299, 0.587, 0.114) without its per-call checks."""
    if x.shape[1] != 3:
        return x
    r, g, b = x.unbind(dim=-3)
    return (r * 0.299).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """PIL ``ImageEnhance``: ``other + factor * (x - other)``, clipped (one ``lerp``)."""
    return torch.lerp(other.expand_as(x), x, _per_sample(factor).to(x.dtype)).clamp_(0.0, 1.0)


def _brightness(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    return (x * _per_sample(v).to(x.dtype)).clamp_(0.0, 1.0)


def _color(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    return x if x.shape[1] == 1 else _blend(x, _gray(x), v)


def _contrast(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    """Blend with the mean gray: ``f * x + (1 - f) * mean`` as one ``addcmul`` (the mean of the gray image
    is the gray of the channel means)."""
    f = _per_sample(v).to(x.dtype)
    mean = _gray(x.mean(dim=(-2, -1), keepdim=True))  # (b, 1, 1, 1)
    return torch.addcmul((1.0 - f) * mean, f, x).clamp_(0.0, 1.0)


def _sharpness(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    """PIL Sharpness: blend with the image smoothed by [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 (border kept).

    Same result as ``kornia.enhance.sharpness``, which runs a grouped conv2d that costs several times more
    than this box sum on CPU at CIFAR sizes.
    """
    if x.shape[-1] <= 2 or x.shape[-2] <= 2:
        return x
    rows = (x[..., :, :-2] + x[..., :, 1:-1]).add_(x[..., :, 2:])
    box = (rows[..., :-2, :] + rows[..., 1:-1, :]).add_(rows[..., 2:, :])  # 3x3 sums (avg_pool2d is slower)
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = box.add_(x[..., 1:-1, 1:-1], alpha=4.0).div_(13.0)
    return _blend(x, degenerate, v)


def _to_uint8_levels(x: Tensor) -> Tensor:
    return (x * 255.0).round_()


def _posterize(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    """uint8 semantics: keep the top ``bits`` bits of ``round(255 x)``, i.e. round down to a multiple of
    ``2 ** (8 - bits)`` (exact in float: powers of two), in place on one buffer. kornia's posterize
    truncates ``x * 255`` instead of rounding: the same on images that came from uint8, a whole step apart
    on about 9% of values off that grid (after an earlier warp or blend)."""
    step = _per_sample(torch.exp2(8.0 - v.to(x.dtype)))
    return _to_uint8_levels(x).div_(step).floor_().mul_(step).div_(255.0)


def _solarize(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    """``kornia.enhance.solarize(x, v)`` (pixels ``>= v`` inverted) without its per-call checks."""
    return torch.where(x < _per_sample(v), x, 1.0 - x)


def _solarize_add(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    return torch.where(x < SOLARIZE_ADD_THRESHOLD, (x + _per_sample(v)).clamp(0.0, 1.0), x)


def _autocontrast(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    # kornia.enhance.normalize_min_max maps a constant channel to 0; PIL/torchvision leave it alone.
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    flat = hi == lo
    scale = torch.where(flat, torch.ones_like(hi), 1.0 / (hi - lo).clamp_min(1e-12))
    return ((x - torch.where(flat, torch.zeros_like(lo), lo)) * scale).clamp_(0.0, 1.0)


def _equalize(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    """``TF.equalize`` (the reference: PIL's LUT per channel) written out; same output, bit for bit.

    kornia's equalize bins ``int(255 x)`` where torchvision bins ``int(255.999 x)``: the same on images that
    came from uint8, up to 81 levels apart on values off that grid (after an earlier warp or blend), and it
    returns a channel PIL leaves alone unquantised. Compared with torchvision's
    kernel, this builds each channel's LUT directly as float levels (a channel that PIL leaves alone gets
    the identity LUT) and gathers the output from it: one pass over the pixels instead of a uint8 gather,
    a ``where`` and a conversion back to float.
    """
    b, c, h, w = x.shape
    if x.numel() == 0:
        return x
    flat = x.mul(256.0 - 1e-3).long().clamp_(0, 255).view(b * c, h * w)  # torchvision's float -> uint8
    hist = torch.zeros(b * c, 256, dtype=torch.int32, device=x.device)
    hist.scatter_add_(1, flat, hist.new_ones(1).expand_as(flat))
    cum = hist.cumsum(1, dtype=torch.int32)
    last = cum.argmax(1, keepdim=True)  # brightest level present
    step = (h * w - hist.gather(1, last)).div_(255, rounding_mode="floor")  # PIL: pixels below it // 255
    lut = (cum[:, :-1] + step // 2).div_(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut], 1)
    lut = torch.where(step > 0, lut, torch.arange(256, dtype=lut.dtype, device=x.device))  # step 0: unchanged
    return lut.to(x.dtype).mul_(1.0 / 255).gather(1, flat).view(b, c, h, w)


def _invert(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    return 1.0 - x


def _grayscale(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    return _gray(x).expand_as(x).contiguous()


def _hflip(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    return x.flip(-1)


def _identity(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    return x


def uniform(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``n`` uniform draws from ``generator`` (on its own device), moved to ``device``."""
    return torch.rand(n, generator=generator, device=generator.device if generator else device).to(device)


def _rand(n: int, ctx: OpContext, device: torch.device) -> Tensor:
    return uniform(n, ctx.generator, device)


def _cutout_box(x: Tensor, v: Tensor, ctx: OpContext) -> tuple[Tensor, Tensor, Tensor]:
    """Each sample's square: top, left and side (float, may reach past the border); draws rows, then columns."""
    b, _, h, w = x.shape
    side = (v * min(h, w)).round()
    cy = (_rand(b, ctx, x.device) * h).floor()
    cx = (_rand(b, ctx, x.device) * w).floor()
    return cy - torch.div(side, 2, rounding_mode="floor"), cx - torch.div(side, 2, rounding_mode="floor"), side


def _cutout(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    """One square of side ``round(v * min(H, W))`` per sample, centre uniform, clipped at the border."""
    _, _, h, w = x.shape
    y0, x0, side = _cutout_box(x, v, ctx)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (
        (rows >= y0.view(-1, 1, 1))
        & (rows < (y0 + side).view(-1, 1, 1))
        & (cols >= x0.view(-1, 1, 1))
        & (cols < (x0 + side).view(-1, 1, 1))
    )
    return torch.where(inside.unsqueeze(1), ctx.fill.view(1, -1, 1, 1).to(x.dtype), x)


def _pad_crop_window(x: Tensor, v: Tensor, ctx: OpContext) -> tuple[Tensor | None, Tensor, Tensor]:
    """The batch padded by the largest ``p`` (fill colour; None when no sample pads) and each sample's crop
    offsets ``(oy, ox)`` in it; draws rows, then columns."""
    b, _, h, w = x.shape
    py, px = (v * h).round().long(), (v * w).round().long()
    pmax_y, pmax_x = int(py.max()), int(px.max())
    if pmax_y == 0 and pmax_x == 0:
        return None, py, px
    fill = ctx.fill.view(1, -1, 1, 1).to(x.dtype)
    padded = torch.nn.functional.pad(x - fill, (pmax_x, pmax_x, pmax_y, pmax_y)) + fill
    oy = pmax_y - py + (_rand(b, ctx, x.device) * (2 * py + 1)).floor().long()
    ox = pmax_x - px + (_rand(b, ctx, x.device) * (2 * px + 1)).floor().long()
    return padded, oy, ox


def _pad_crop(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    """Pad by ``p = round(v * size)`` pixels (fill colour), then crop at a uniform integer offset.

    This is torchvision's ``RandomCrop(size, padding=p, fill=fill)``: content shifts by an integer in
    ``[-p, p]`` on each axis. The crop here is one gather; ``_kornia_pad_crop`` crops the same windows with
    ``kornia.geometry.transform.crop_by_indices`` (same pixels).
    """
    b, c, h, w = x.shape
    padded, oy, ox = _pad_crop_window(x, v, ctx)
    if padded is None:
        return x
    rows = (oy.view(-1, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w)
    cols = (ox.view(-1, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
    flat = padded.flatten(2)
    index = rows * padded.shape[-1] + cols
    return flat.gather(2, index.reshape(b, c, h * w)).view(b, c, h, w)


# ---------------------------------------------------------------------------------------------
# Geometric ops as affine matrices in pixel-index coordinates (pixel centres at integers).

#: Geometric ops in the order of the ``kind`` codes taken by :func:`affine_matrices`.
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def affine_matrices(kind: Tensor, v: Tensor, height: int, width: int) -> Tensor:
    """Forward affine matrices ``(b, 2, 3)`` (``kind[i]`` indexes :data:`GEOMETRIC`), moving content as
    torchvision's kernels do:

    * ``rotate``: counter-clockwise by ``v`` degrees about the image centre (OpenCV/kornia matrix).
    * ``shear_x``/``shear_y``: output ``(x, y)`` reads input ``(x + v * (y + 1/2), y)`` (resp. the
      transpose), i.e. torchvision AutoAugment's shear about the top-left corner.
    * ``translate_x``/``translate_y``: content moves right/down by ``v * W`` (``v * H``) pixels.

    Every entry is linear in ``(1, v, cos - 1, sin)`` (angle ``v`` for ``rotate``, 0 otherwise), so the
    matrices are one product with a per-kind coefficient table: a few ops in all instead of one ``where``
    per entry and kind.
    """
    rad = torch.deg2rad(torch.where(kind == 0, v, torch.zeros_like(v)))
    features = torch.stack([torch.ones_like(v), v, torch.cos(rad) - 1.0, torch.sin(rad)], dim=-1)  # (b, 4)
    table = _affine_table(height, width, v.dtype, v.device)[kind]  # (b, 4, 6)
    return (features.unsqueeze(-1) * table).sum(dim=1).view(-1, 2, 3)


@functools.lru_cache(maxsize=16)
def _affine_table(height: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Coefficients ``(kind, feature, entry)`` of :func:`affine_matrices` for features ``(1, v, cos - 1, sin)``
    and the row-major entries ``(a, b, tx, c, d, ty)`` of a forward matrix."""
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    one = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    table = [
        [one, [0.0] * 6, [1.0, 0.0, -cx, 0.0, 1.0, -cy], [0.0, 1.0, -cy, -1.0, 0.0, cx]],  # rotate
        [one, [0.0, -1.0, -0.5, 0.0, 0.0, 0.0], [0.0] * 6, [0.0] * 6],  # shear_x
        [one, [0.0, 0.0, 0.0, -1.0, 0.0, -0.5], [0.0] * 6, [0.0] * 6],  # shear_y
        [one, [0.0, 0.0, float(width), 0.0, 0.0, 0.0], [0.0] * 6, [0.0] * 6],  # translate_x
        [one, [0.0, 0.0, 0.0, 0.0, 0.0, float(height)], [0.0] * 6, [0.0] * 6],  # translate_y
    ]
    return torch.tensor(table, dtype=dtype, device=device)


@functools.lru_cache(maxsize=16)
def _base_grid(height: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``affine_grid``'s base grid (align_corners=True) as rows ``(x, y, 1)`` of shape ``(3, H * W)``."""

    def axis(n: int) -> Tensor:
        return torch.linspace(-1.0, 1.0, n, dtype=dtype, device=device) if n > 1 else torch.zeros(1, dtype=dtype,
                                                                                                    device=device)

    xs, ys = axis(width).view(1, width).expand(height, width), axis(height).view(height, 1).expand(height, width)
    return torch.stack([xs, ys, torch.ones_like(xs)]).view(3, height * width)


def _warp(x: Tensor, matrices: Tensor, ctx: OpContext) -> Tensor:
    """Warp each sample by its own forward affine matrix; exposed areas get ``ctx.fill``.

    This is ``kornia.geometry.transform.warp_affine(..., align_corners=True)`` written out (invert, normalise,
    ``grid_sample``): kornia's wrapper costs several times the sampling itself on small images.
    """
    b, _, h, w = x.shape
    m = matrices.to(x.dtype)
    a, bb, c, d = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
    det = a * d - bb * c
    inv = torch.stack([d, -bb, c.neg(), a], dim=-1).view(-1, 2, 2) / det.view(-1, 1, 1)  # A^-1
    shift = -(inv[:, :, 0:1] * m[:, 0:1, 2:] + inv[:, :, 1:2] * m[:, 1:2, 2:])  # -A^-1 t
    # normalised coordinates (align_corners=True): u = s * x - 1 with s = 2 / (size - 1)
    s = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=x.dtype, device=x.device)
    theta_a = inv * s.view(1, 2, 1) / s.view(1, 1, 2)
    theta_t = s.view(1, 2, 1) * shift + theta_a.sum(-1, keepdim=True) - 1.0
    theta = torch.cat([theta_a, theta_t], dim=-1)
    # affine_grid(theta, align_corners=True) as one matmul; its bmm of tiny matrices costs several times more.
    # The grid stays a (b, H, W, 2) view of the (b, 2, H, W) product: grid_sample takes any strides.
    grid = (theta.reshape(b * 2, 3) @ _base_grid(h, w, x.dtype, x.device)).view(b, 2, h, w).permute(0, 2, 3, 1)
    if ctx.zero_fill:  # grid_sample pads with zeros already
        out = torch.nn.functional.grid_sample(x, grid, mode=ctx.interpolation, align_corners=True)
        return out if ctx.interpolation == "nearest" else out.clamp_(0.0, 1.0)
    fill = ctx.fill.view(1, -1, 1, 1).to(x.dtype)
    out = torch.nn.functional.grid_sample(x - fill, grid, mode=ctx.interpolation, align_corners=True)
    return out.add_(fill).clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Kornia's functional kernels, in the same signature, and the choice per op


def _kornia():
    """kornia, imported on first use (the first ``pad_crop`` batch): importing it costs about a second, which a
    process that never augments (the campaign driver, the command line) does not pay."""
    import kornia

    return kornia


def _kornia_warp(x: Tensor, matrices: Tensor, ctx: OpContext) -> Tensor:
    fill = None if ctx.zero_fill else ctx.fill.to(x.dtype)
    out = _kornia().geometry.transform.warp_affine(
        x, matrices.to(x.dtype), (x.shape[-2], x.shape[-1]), mode=ctx.interpolation,
        padding_mode="zeros" if fill is None else "fill", align_corners=True, fill_value=fill)
    return out if ctx.interpolation == "nearest" else out.clamp_(0.0, 1.0)


def _kornia_sharpness(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    return x if x.shape[-1] <= 2 or x.shape[-2] <= 2 else _kornia().enhance.sharpness(x, v.to(x.dtype))


def _kornia_grayscale(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    return x if x.shape[1] != 3 else _kornia().color.rgb_to_grayscale(x).expand_as(x).contiguous()


def _kornia_cutout(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    y0, x0, side = _cutout_box(x, v, ctx)
    y1, x1 = y0 + side - 1, x0 + side - 1  # bbox_to_mask's corners are inclusive
    boxes = torch.stack([torch.stack([x0, y0], -1), torch.stack([x1, y0], -1), torch.stack([x1, y1], -1),
                         torch.stack([x0, y1], -1)], 1).to(x.dtype)
    mask = _kornia().geometry.bbox.bbox_to_mask(boxes, x.shape[-1], x.shape[-2]).bool()
    return torch.where(mask.unsqueeze(1), ctx.fill.view(1, -1, 1, 1).to(x.dtype), x)


def _kornia_pad_crop(x: Tensor, v: Tensor, ctx: OpContext) -> Tensor:
    """``_pad_crop``'s windows (same draws) cut by ``crop_by_indices``: one ``cat`` of per-sample slices, which
    beat our gather on CPU (it reads the boxes back to the host: one sync per call on CUDA)."""
    h, w = x.shape[-2:]
    padded, oy, ox = _pad_crop_window(x, v, ctx)
    if padded is None:
        return x
    y1, x1 = oy + h - 1, ox + w - 1
    boxes = torch.stack([torch.stack([ox, oy], -1), torch.stack([x1, oy], -1), torch.stack([x1, y1], -1),
                         torch.stack([ox, y1], -1)], 1)
    return _kornia().geometry.transform.crop_by_indices(padded, boxes, size=(h, w))


#: Our written-out kernel of every op (``"warp"``: the fused affine warp of the geometric ops, which takes
#: ``(x, matrices (b, 2, 3), ctx)``).
OURS_KERNELS: dict[str, Callable[[Tensor, Tensor, OpContext], Tensor]] = {
    "warp": _warp, "identity": _identity, "brightness": _brightness, "color": _color, "contrast": _contrast,
    "sharpness": _sharpness, "posterize": _posterize, "solarize": _solarize, "solarize_add": _solarize_add,
    "autocontrast": _autocontrast, "equalize": _equalize, "invert": _invert, "grayscale": _grayscale,
    "hflip": _hflip, "cutout": _cutout, "pad_crop": _pad_crop,
}

#: Kornia's functional kernel of every op that has one, with per-sample magnitudes (``(b,)`` tensors), in the
#: same signature. ``benchmarks/kornia_kernels.py`` compares each with ours and with torchvision.
KORNIA_KERNELS: dict[str, Callable[[Tensor, Tensor, OpContext], Tensor]] = {
    "warp": _kornia_warp,
    "brightness": lambda x, v, ctx: _kornia().enhance.adjust_brightness_accumulative(x, v),
    "color": lambda x, v, ctx: _kornia().enhance.adjust_saturation_with_gray_subtraction(x, v),
    "contrast": lambda x, v, ctx: _kornia().enhance.adjust_contrast_with_mean_subtraction(x, v),
    "sharpness": _kornia_sharpness,
    "posterize": lambda x, v, ctx: _kornia().enhance.posterize(x, v.long()),
    "solarize": lambda x, v, ctx: _kornia().enhance.solarize(x, v),
    "autocontrast": lambda x, v, ctx: _kornia().enhance.normalize_min_max(x, 0.0, 1.0),
    "equalize": lambda x, v, ctx: _kornia().enhance.equalize(x),
    "invert": lambda x, v, ctx: _kornia().enhance.invert(x),
    "grayscale": _kornia_grayscale,
    "hflip": lambda x, v, ctx: _kornia().geometry.transform.hflip(x),
    "cutout": _kornia_cutout,
    "pad_crop": _kornia_pad_crop,
}

#: Which kernel each op runs: Kornia's where it matches torchvision within the golden tests' tolerance, takes
#: per-sample magnitudes and is not slower than ours; ours otherwise (measured by ``benchmarks/kornia_kernels.py``:
#: ``docs/results/kornia_kernels.md``; the reason per op in ``docs/design.md``, "Kernels: Kornia or ours").
KERNEL_SOURCE: dict[str, str] = {
    "warp": "ours", "identity": "ours", "brightness": "ours", "color": "ours", "contrast": "ours",
    "sharpness": "ours", "posterize": "ours", "solarize": "ours", "solarize_add": "ours", "autocontrast": "ours",
    "equalize": "ours", "invert": "ours", "grayscale": "ours", "hflip": "ours", "cutout": "ours", "pad_crop": "kornia",
}


def _chosen(name: str) -> Callable[[Tensor, Tensor, OpContext], Tensor]:
    return KORNIA_KERNELS[name] if KERNEL_SOURCE[name] == "kornia" else OURS_KERNELS[name]


warp = _chosen("warp")  # the fused warp of every stage's geometric ops (Augmenter)


# ---------------------------------------------------------------------------------------------
# The registry

_FACTOR = dict(bounds=(0.0, 2.0), identity=1.0, level_max=1.9, signed=True)

OPS: dict[str, OpSpec] = {
    spec.name: replace(spec, kernel=None if spec.geometric else _chosen(spec.name),
                       kernel_source=KERNEL_SOURCE["warp" if spec.geometric else spec.name])
    for spec in [
        OpSpec("identity", "no change"),
        OpSpec("shear_x", "horizontal shear; value = shear factor tan(angle), top-left origin",
               "factor", (-1.0, 1.0), 0.0, 0.3, signed=True, geometric=True),
        OpSpec("shear_y", "vertical shear; value = shear factor tan(angle), top-left origin",
               "factor", (-1.0, 1.0), 0.0, 0.3, signed=True, geometric=True),
        OpSpec("translate_x", "horizontal shift; value = fraction of the width (positive = right)",
               "fraction", (-1.0, 1.0), 0.0, 150.0 / 331.0, signed=True, geometric=True),
        OpSpec("translate_y", "vertical shift; value = fraction of the height (positive = down)",
               "fraction", (-1.0, 1.0), 0.0, 150.0 / 331.0, signed=True, geometric=True),
        OpSpec("rotate", "rotation about the centre; value = degrees, counter-clockwise",
               "degrees", (-180.0, 180.0), 0.0, 30.0, signed=True, geometric=True),
        OpSpec("brightness", "PIL Brightness: multiply by factor", "factor", **_FACTOR),
        OpSpec("color", "PIL Color: blend with grayscale by factor", "factor", **_FACTOR),
        OpSpec("contrast", "PIL Contrast: blend with the image's mean gray by factor",
               "factor", **_FACTOR),
        OpSpec("sharpness", "PIL Sharpness: blend with the 3x3 smoothed image by factor",
               "factor", **_FACTOR),
        OpSpec("posterize", "keep the top `bits` bits of each uint8 channel value",
               "bits", (0.0, 8.0), 8.0, 4.0, integer=True),
        OpSpec("solarize", "invert pixels >= threshold (fraction of the value range)",
               "threshold", (0.0, 1.0), 1.0, 0.0),
        OpSpec("solarize_add", "add `addition` (fraction of range) to pixels below 128/255, clip",
               "addition", (0.0, 0.5), 0.0, 110.0 / 255.0),
        OpSpec("autocontrast", "stretch each channel to [0, 1] (constant channels unchanged)"),
        OpSpec("equalize", "PIL histogram equalisation per channel"),
        OpSpec("invert", "1 - x"),
        OpSpec("grayscale", "ITU-R 601 luma replicated to every channel"),
        OpSpec("hflip", "mirror left-right"),
        OpSpec("cutout", "one fill-coloured square, side = fraction of min(H, W), centre uniform",
               "size", (0.0, 1.0), 0.0, 0.5),
        OpSpec("pad_crop", "pad by a fraction of the size (fill colour), crop back at a random offset",
               "padding", (0.0, 0.5), 0.0, 0.25),
    ]
}


# ---------------------------------------------------------------------------------------------
# Batch ops: mix pairs of samples and their (soft) labels.


def _beta(alpha: float, n: int, x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Beta(alpha, alpha) draws, seeded from ``generator`` (torch has no generator-aware Beta)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device if generator else None))
    draws = np.random.default_rng(seed).beta(alpha, alpha, size=n)
    return torch.as_tensor(draws, dtype=x.dtype, device=x.device)


def _mixup(x: Tensor, y: Tensor, alpha: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    b = x.shape[0]
    perm = torch.randperm(b, generator=generator, device=generator.device if generator else None).to(x.device)
    lam = _beta(alpha, b, x, generator)
    mixed = _per_sample(lam) * x + _per_sample(1.0 - lam) * x[perm]
    return mixed, lam.view(-1, 1) * y + (1.0 - lam.view(-1, 1)) * y[perm]


def _cutmix(x: Tensor, y: Tensor, alpha: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    b, _, h, w = x.shape
    perm = torch.randperm(b, generator=generator, device=generator.device if generator else None).to(x.device)
    lam = _beta(alpha, b, x, generator)
    cut = torch.sqrt(1.0 - lam)
    bh, bw = (cut * h).round(), (cut * w).round()
    cy = (uniform(b, generator, x.device) * h).floor()
    cx = (uniform(b, generator, x.device) * w).floor()
    y0, y1 = (cy - bh / 2).floor().clamp(0, h), (cy + bh / 2).floor().clamp(0, h)
    x0, x1 = (cx - bw / 2).floor().clamp(0, w), (cx + bw / 2).floor().clamp(0, w)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    box = (
        (rows >= y0.view(-1, 1, 1)) & (rows < y1.view(-1, 1, 1))
        & (cols >= x0.view(-1, 1, 1)) & (cols < x1.view(-1, 1, 1))
    )
    mixed = torch.where(box.unsqueeze(1), x[perm], x)
    lam_true = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # weight of the original after clipping
    return mixed, lam_true.view(-1, 1) * y + (1.0 - lam_true.view(-1, 1)) * y[perm]


@dataclass(frozen=True)
class BatchOpSpec:
    """A batch-level op: ``apply(x, y_soft, alpha, generator) -> (x, y_soft)``."""

    name: str
    doc: str
    apply: Callable[[Tensor, Tensor, float, torch.Generator | None], tuple[Tensor, Tensor]]


BATCH_OPS: dict[str, BatchOpSpec] = {
    "mixup": BatchOpSpec("mixup", "x = lam*x + (1-lam)*x[perm], lam ~ Beta(alpha, alpha) per sample", _mixup),
    "cutmix": BatchOpSpec(
        "cutmix", "paste a box of area (1-lam) from x[perm]; lam recomputed from the clipped box", _cutmix
    ),
}

