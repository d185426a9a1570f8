"""``Augmenter``: run a policy on a batch with per-sample randomness, on any device.

Every policy type compiles to ``S`` *stages*; in each stage every sample draws one op instance (or
none). Sampling is fully vectorised (:meth:`Augmenter.sample` returns a :class:`Plan`: the op and the
physical value per stage and sample). Execution groups samples by op: each op runs once per stage on
the subset that drew it, with per-sample magnitudes, and all geometric ops of a stage are fused into
one affine warp. kornia's ``auto`` presets and torchvision's v2 transforms draw one choice per batch;
here every image draws its own sub-policy, ops, coin flips, signs and magnitudes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .ops import BATCH_OPS, GEOMETRIC, OPS, OpContext, affine_matrices, uniform, warp
from .policy import Policy, load_policy

__all__ = ["Augmenter", "Plan", "OP_NAMES"]

OP_NAMES: tuple[str, ...] = tuple(OPS)
_DIST_CODE = {"fixed": 0, "uniform": 1, "normal": 2}
_IDENTITY = OP_NAMES.index("identity")


@dataclass(frozen=True)
class Plan:
    """Per-sample draws for one batch: ``ops[s, i]`` is the registry index of the op sample ``i`` runs
    at stage ``s`` (``-1``: none) and ``values[s, i]`` its physical value."""

    ops: Tensor  # (S, B) int64
    values: Tensor  # (S, B) float32

    def op_names(self) -> list[list[str | None]]:
        return [[OP_NAMES[k] if k >= 0 else None for k in row] for row in self.ops.tolist()]


class Augmenter(nn.Module):
    """Apply ``policy`` to a batch ``(B, C, H, W)`` (uint8, or float in [0, 1]; C = 1 or 3).

    >>> aug = Augmenter("randaugment")                  # a preset name, a JSON path or a Policy
    >>> g = torch.Generator().manual_seed(0)
    >>> out = aug(images, generator=g)                  # same dtype and shape as ``images``

    The generator may live on any device; draws move to the images' device.
    """

    def __init__(self, policy: Policy | str | os.PathLike) -> None:
        super().__init__()
        self.policy = load_policy(policy)
        p = self.policy
        instances = list(p.all_ops())
        mags = [o.magnitude for o in instances]
        rows = []
        for o, m in zip(instances, mags, strict=True):
            spec = OPS[o.op]
            lo, hi = spec.bounds or (0.0, 0.0)
            a, b = ((m.low, m.high) if m.dist == "uniform" else (m.value, m.std or 0.0)) if m else (0.0, 0.0)
            rows.append([OP_NAMES.index(o.op), o.prob, _DIST_CODE[m.dist] if m else 0, a, b,
                         float(bool(m and m.random_sign)), lo, hi, spec.identity or 0.0, float(spec.integer)])
        # one row per op instance: op, prob, dist, a, b, random_sign, low bound, high bound, identity, integer
        t: dict[str, Tensor] = {"inst": torch.tensor(rows, dtype=torch.float64),
                                "inst_weight": torch.tensor([o.weight for o in instances])}
        if p.type == "subpolicy_choice":
            width = max(len(sp) for sp in p.subpolicies)
            table, start = [], 0
            for sp in p.subpolicies:
                table.append([start + j if j < len(sp) else -1 for j in range(width)])
                start += len(sp)
            t["sub_table"] = torch.tensor(table, dtype=torch.long)
            t["sub_weight"] = torch.tensor(p.weights or [1.0] * len(p.subpolicies), dtype=torch.float)
            self.num_stages = width
        else:
            self.num_stages = {"sequential": len(p.ops), "trivial_augment": 1}.get(p.type, p.num_ops)
        self._tables = {torch.device("cpu"): t}

    def _on(self, device: torch.device) -> dict[str, Tensor]:
        """The lookup tables on ``device`` (copied once per device)."""
        if device not in self._tables:
            self._tables[device] = {k: v.to(device) for k, v in self._tables[torch.device("cpu")].items()}
        return self._tables[device]

    # -- sampling -------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, batch_size: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Plan:
        """Draw every sample's ops and values for one batch (no pixels touched).

        Draws happen on the generator's device (CPU without one) and the plan moves to ``device``.
        """
        dev = generator.device if generator is not None else torch.device(device or "cpu")
        s, b, t = self.num_stages, batch_size, self._on(dev)
        if s == 0 or b == 0:
            ops, values = torch.full((s, b), -1, dtype=torch.long), torch.zeros(s, b)
        else:
            ops, values = self._draw(s, b, t, generator, dev)
        target = torch.device(device) if device is not None else dev
        return Plan(ops.to(target), values.to(target))

    def _draw(self, s: int, b: int, t: dict[str, Tensor], g: torch.Generator | None,
              dev: torch.device) -> tuple[Tensor, Tensor]:
        ptype = self.policy.type
        if ptype == "sequential":
            inst = torch.arange(s, device=dev).view(s, 1).expand(s, b)
        elif ptype == "subpolicy_choice":
            k = torch.multinomial(t["sub_weight"], b, replacement=True, generator=g)
            inst = t["sub_table"][k].T
        else:
            inst = torch.multinomial(t["inst_weight"], s * b, replacement=True, generator=g).view(s, b)
        valid = inst >= 0
        gate, u, sign_u = torch.rand(3, s, b, generator=g, device=dev, dtype=torch.float64)
        normal = torch.randn(s, b, generator=g, device=dev, dtype=torch.float64)
        op, prob, dist, a, hi, sign, lo_bound, hi_bound, ident, is_int = t["inst"][inst.clamp(min=0)].unbind(-1)
        op, is_int = op.long(), is_int.bool()
        uniform_value = torch.where(is_int, (a + (hi - a + 1.0) * u).floor().minimum(hi), a + (hi - a) * u)
        value = torch.where(dist == 0, a, torch.where(dist == 1, uniform_value, a + hi * normal))
        value = torch.where((sign > 0) & (sign_u < 0.5), 2.0 * ident - value, value)
        value = value.clamp(lo_bound, hi_bound)
        value = torch.where(is_int, value.round(), value)
        applied = valid & (gate < prob) & (op != _IDENTITY)
        return torch.where(applied, op, torch.full_like(op, -1)), value.float()

    # -- execution ------------------------------------------------------------------------------

    @torch.no_grad()
    def apply(self, x: Tensor, plan: Plan, generator: torch.Generator | None = None) -> Tensor:
        """Apply a sampled :class:`Plan` to ``x`` (same plan, same pixels: e.g. teacher and student)."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected a batch (B, C, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")
        is_uint8 = x.dtype == torch.uint8
        out = x.float().div_(255.0) if is_uint8 else x.clone()
        ctx = OpContext(self._fill(out), self.policy.interpolation, generator)
        ops, values = plan.ops.to(out.device), plan.values.to(out.device, out.dtype)
        h, w = out.shape[-2:]
        for stage_ops, stage_values in zip(ops, values, strict=True):
            kernels, geometric = self._groups(stage_ops)
            if geometric:
                idx = torch.cat([i for _, i in geometric])
                kind = torch.cat([torch.full_like(i, GEOMETRIC.index(OP_NAMES[k])) for k, i in geometric])
                matrices = affine_matrices(kind, stage_values[idx], h, w)
                out.index_copy_(0, idx, warp(out[idx], matrices, ctx))
            for k, idx in kernels:
                kernel = OPS[OP_NAMES[k]].kernel
                if idx.numel() == out.shape[0]:
                    out = kernel(out, stage_values, ctx)
                else:
                    out.index_copy_(0, idx, kernel(out[idx], stage_values[idx], ctx))
        return out.mul_(255.0).round_().to(torch.uint8) if is_uint8 else out

    @staticmethod
    def _groups(stage_ops: Tensor) -> tuple[list[tuple[int, Tensor]], list[tuple[int, Tensor]]]:
        """Sample indices per op (one host sync per stage), split into kernel ops and geometric ops."""
        order = torch.argsort(stage_ops, stable=True)
        counts = torch.bincount(stage_ops + 1, minlength=len(OP_NAMES) + 1).tolist()
        kernels, geometric, start = [], [], counts[0]  # counts[0]: samples without an op
        for k, count in enumerate(counts[1:]):
            if count:
                (geometric if OPS[OP_NAMES[k]].geometric else kernels).append((k, order[start:start + count]))
                start += count
        return kernels, geometric

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment ``x``; every sample draws its own ops and magnitudes."""
        return self.apply(x, self.sample(x.shape[0], generator, device=x.device), generator)

    def mix(self, x: Tensor, y: Tensor, num_classes: int,
            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Run the policy's batch ops (at most one per batch) on float ``x`` and labels ``y``.

        ``y`` is int64 ``(B,)`` or soft ``(B, K)``; the result's labels are always soft ``(B, K)``.
        ``lam`` is the weight of the original sample.
        """
        soft = y if y.is_floating_point() else nn.functional.one_hot(y, num_classes).to(x.dtype)
        if not self.policy.batch_ops:
            return x, soft
        draw = float(uniform(1, generator, x.device))
        edge = 0.0
        for op in self.policy.batch_ops:
            edge += op.prob
            if draw < edge:
                return BATCH_OPS[op.op].apply(x, soft, op.alpha, generator)
        return x, soft

    def _fill(self, x: Tensor) -> Tensor:
        fill = torch.tensor(self.policy.fill, dtype=x.dtype, device=x.device)
        return fill if fill.numel() == x.shape[1] else fill.mean().expand(x.shape[1])

    def extra_repr(self) -> str:
        return f"policy={self.policy.name or self.policy.type!r}, stages={self.num_stages}"
