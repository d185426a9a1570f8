"""``Augmenter``: run a policy on a batch with per-sample randomness, on any device.

Every policy type compiles to ``S`` *stages*; in each stage every sample draws one op instance (or
none). Sampling is fully vectorised (:meth:`Augmenter.sample` returns a :class:`Plan`: the op and the
physical value per stage and sample). Execution groups samples by op: each op runs once per stage on
the subset that drew it, with per-sample magnitudes, and all geometric ops of a stage are fused into
one affine warp. kornia's ``auto`` presets and torchvision's v2 transforms draw one choice per batch;
here every image draws its own sub-policy, ops, coin flips, signs and magnitudes.

:class:`ScheduledAugmenter` replays a :class:`~search_spaces.policy.Schedule` (policies that change over
training): ``set_epoch(epoch)`` switches to the segment's policy, one cached :class:`Augmenter` per segment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .ops import BATCH_OPS, GEOMETRIC, OPS, OpContext, affine_matrices, uniform, warp
from .policy import Policy, Schedule, load_policy, load_policy_or_schedule, load_schedule

__all__ = ["Augmenter", "Plan", "ScheduledAugmenter", "make_augmenter", "OP_NAMES"]

OP_NAMES: tuple[str, ...] = tuple(OPS)
_DIST_CODE = {"fixed": 0, "uniform": 1, "normal": 2}
_IDENTITY = OP_NAMES.index("identity")
_NONE, _GEO = -1, -2  # group keys besides op indices: samples without an op, the fused geometric warp
# Sort ranks: 0 = no op, then the geometric ops (adjacent, so one warp covers them), then the others.
_BY_RANK = sorted(range(len(OP_NAMES)), key=lambda k: not OPS[OP_NAMES[k]].geometric)  # stable: registry order
_RANK_KEY: tuple[int, ...] = (_NONE,) + tuple(_GEO if OPS[OP_NAMES[k]].geometric else k for k in _BY_RANK)
_RANK = torch.tensor([0] + [1 + _BY_RANK.index(k) for k in range(len(OP_NAMES))])  # indexed by op + 1
_NUM_RANKS = len(_RANK_KEY)
_GEO_KIND = torch.tensor([GEOMETRIC.index(n) if n in GEOMETRIC else -1 for n in OP_NAMES])  # op -> warp kind


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
                                "inst_weight": torch.tensor([o.weight for o in instances]),
                                "rank": _RANK, "geo_kind": _GEO_KIND}
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
        self._fills: dict[tuple[torch.device, torch.dtype, int], Tensor] = {}
        self._zero_fill = not any(self.policy.fill)

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
        """Apply a sampled :class:`Plan` to ``x`` (same plan, same pixels: e.g. teacher and student).

        Each stage keeps the batch sorted by op (:meth:`_schedule`): every op group is a contiguous slice
        that its kernel reads without a gather and overwrites with its result (a plain copy), and one
        ``index_select`` per stage puts the batch in the next stage's order (the output's, after the last).
        """
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected a batch (B, C, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")
        is_uint8 = x.dtype == torch.uint8
        ops = plan.ops.to(x.device)
        if ops.shape[0] == 0 or ops.shape[1] == 0:
            out = x.float().div_(255.0) if is_uint8 else x.clone()
            return out.mul_(255.0).round_().to(torch.uint8) if is_uint8 else out
        tables = self._on(ops.device)
        order, source, groups = self._schedule(ops, tables["rank"])
        out = x.index_select(0, order[0])  # stage 0's order; also the copy that spares the caller's x
        out = out.float().div_(255.0) if is_uint8 else out
        values = plan.values.to(out.device, out.dtype).gather(1, order)
        ctx = OpContext(self._fill(out), self.policy.interpolation, generator, self._zero_fill)
        h, w = out.shape[-2:]
        for stage, stage_groups in enumerate(groups):
            for k, start, stop in stage_groups:
                if k == _NONE:
                    continue
                piece, v = out[start:stop], values[stage, start:stop]
                if k == _GEO:
                    kind = tables["geo_kind"][ops[stage, order[stage, start:stop]]]
                    result = warp(piece, affine_matrices(kind, v, h, w), ctx)
                else:
                    result = OPS[OP_NAMES[k]].kernel(piece, v, ctx)
                if result is not piece:
                    piece.copy_(result)  # this slice belongs to this group alone
            out = out.index_select(0, source[stage])
        return out.mul_(255.0).round_().to(torch.uint8) if is_uint8 else out

    @staticmethod
    def _schedule(ops: Tensor, ranks: Tensor) -> tuple[Tensor, Tensor, list[list[tuple[int, int, int]]]]:
        """Sort every stage's samples by op (one host sync for all stages).

        Returns ``order`` (S, B): the samples of each stage in op order (samples without an op first,
        then all geometric ops, then the other ops in registry order: the order the kernels draw from the
        generator in); ``source`` (S, B): the rows of stage ``s``'s order that make up the next stage's
        order (the output's, in sample order, after the last stage); and per stage the groups
        ``(key, start, stop)`` with ``key`` an op index, :data:`_GEO` or :data:`_NONE`.
        """
        s, b = ops.shape
        rank = ranks[ops + 1]  # _RANK on ops' device
        order = torch.argsort(rank, dim=1, stable=True)
        counts = torch.bincount((rank + _NUM_RANKS * torch.arange(s, device=ops.device).view(s, 1)).flatten(),
                                minlength=s * _NUM_RANKS).view(s, _NUM_RANKS).tolist()
        position = torch.argsort(order, dim=1)  # position[s, i]: row of sample i in stage s's order
        source = torch.cat([position[:-1].gather(1, order[1:]), position[-1:]])
        groups = []
        for row in counts:
            stage_groups, start = [], 0
            for r, count in enumerate(row):
                if not count:
                    continue
                key = _RANK_KEY[r]
                if stage_groups and key == _GEO and stage_groups[-1][0] == _GEO:  # one warp for all geometric ops
                    stage_groups[-1] = (_GEO, stage_groups[-1][1], start + count)
                else:
                    stage_groups.append((key, start, start + count))
                start += count
            groups.append(stage_groups)
        return order, source, groups

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
        """The fill colour ``(C,)`` for ``x`` (cached per device, dtype and channel count)."""
        key = (x.device, x.dtype, x.shape[1])
        if key not in self._fills:
            fill = torch.tensor(self.policy.fill, dtype=x.dtype, device=x.device)
            self._fills[key] = fill if fill.numel() == x.shape[1] else fill.mean().expand(x.shape[1])
        return self._fills[key]

    def extra_repr(self) -> str:
        return f"policy={self.policy.name or self.policy.type!r}, stages={self.num_stages}"


class ScheduledAugmenter(nn.Module):
    """Apply a :class:`Schedule`: the :class:`Augmenter` of the current epoch's segment.

    >>> aug = ScheduledAugmenter("best_schedule.json", total_epochs=200)   # a path or a Schedule
    >>> aug.set_epoch(0)                                # 0-based; trainers.engine.fit calls it every epoch
    >>> out = aug(images, generator=g)

    ``total_epochs`` stretches the schedule to a run of that length (see :meth:`Schedule.segment_index`);
    ``None`` maps epochs one to one. Each segment's Augmenter is built on first use and cached.
    """

    def __init__(self, schedule: Schedule | str | os.PathLike, total_epochs: int | None = None) -> None:
        super().__init__()
        self.schedule = load_schedule(schedule)
        self.total_epochs = total_epochs
        self._cache: dict[int, Augmenter] = {}
        self.epoch = 0
        self.segment = self.schedule.segment_index(0, total_epochs)

    def set_epoch(self, epoch: int) -> None:
        """Use the policy of 0-based ``epoch`` from now on."""
        self.segment = self.schedule.segment_index(epoch, self.total_epochs)
        self.epoch = epoch

    @property
    def current(self) -> Augmenter:
        """The Augmenter of the current segment."""
        if self.segment not in self._cache:
            self._cache[self.segment] = Augmenter(self.schedule.segments[self.segment].policy)
        return self._cache[self.segment]

    @property
    def policy(self) -> Policy:
        """The current segment's policy."""
        return self.schedule.segments[self.segment].policy

    def sample(self, batch_size: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Plan:
        """:meth:`Augmenter.sample` of the current segment."""
        return self.current.sample(batch_size, generator, device)

    def apply(self, x: Tensor, plan: Plan, generator: torch.Generator | None = None) -> Tensor:
        """:meth:`Augmenter.apply` of the current segment (a plan is only valid within its segment)."""
        return self.current.apply(x, plan, generator)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment ``x`` with the current segment's policy."""
        return self.current(x, generator=generator)

    def mix(self, x: Tensor, y: Tensor, num_classes: int,
            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`Augmenter.mix` of the current segment."""
        return self.current.mix(x, y, num_classes, generator)

    def extra_repr(self) -> str:
        return f"schedule={self.schedule.name!r}, segments={len(self.schedule.segments)}, epoch={self.epoch}"


def make_augmenter(source: Policy | Schedule | str | os.PathLike,
                   total_epochs: int | None = None) -> Augmenter | ScheduledAugmenter:
    """An :class:`Augmenter` for a policy, a :class:`ScheduledAugmenter` for a schedule (path, preset or object)."""
    loaded = load_policy_or_schedule(source)
    return ScheduledAugmenter(loaded, total_epochs) if isinstance(loaded, Schedule) else Augmenter(loaded)
