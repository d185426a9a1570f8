"""The policy format, schema ``augpolicy/1.0``: one JSON document per policy.

A document holds the policy (one of four types), optional batch ops, the input contract, rendering
defaults and free-form provenance::

    {
      "schema": "augpolicy/1.0",
      "name": "autoaugment-cifar10",
      "policy": {"type": "subpolicy_choice", "weights": null, "subpolicies": [[OP, OP], ...]},
      "batch_ops": [{"op": "cutmix", "prob": 0.5, "alpha": 1.0}],
      "defaults": {"interpolation": "nearest", "fill": [0.0, 0.0, 0.0]},
      "input_contract": {"value_range": [0.0, 1.0], "dtypes": ["uint8", "float32"], "channels": [1, 3]},
      "provenance": {...}
    }

where ``OP`` is ``{"op": "rotate", "prob": 0.7, "magnitude": {"value": 6.0, "random_sign": true}}``.
A magnitude is fixed (``value``), uniform (``low``/``high``) or normal (``value``/``std``, clipped to the
op's bounds), always in the op's physical unit (see :mod:`search_spaces.ops`). Policy types:

* ``subpolicy_choice`` (AutoAugment): each sample draws one sub-policy (uniform or by ``weights``) and
  applies its ops in order, each with its own probability.
* ``rand_augment``: each sample draws ``num_ops`` ops with replacement (uniform or by each op's
  ``weight``) and applies them in order.
* ``trivial_augment``: ``rand_augment`` with one op per sample.
* ``sequential``: every op in order, each with its own probability.

Batch ops: per batch at most one runs; op ``i`` is chosen with probability ``prob_i`` (their sum is at
most 1). Loading validates everything and raises :class:`PolicyError` with a one-line message naming the
field. Loading is pure JSON (no pickle, no eval); unknown keys are rejected unless they start with
``x-`` (kept verbatim). :func:`dumps` is canonical, so save -> load -> save is byte-identical.

Schedules, schema ``augschedule/1.0`` (what a PBT campaign learns): policies that change over training::

    {
      "schema": "augschedule/1.0",
      "name": "pbt-best",
      "segments": [
        {"start_epoch": 0, "end_epoch": 3, "policy": {"schema": "augpolicy/1.0", ...}},
        {"start_epoch": 3, "end_epoch": 10, "policy": {"schema": "augpolicy/1.0", ...}}
      ],
      "provenance": {...}
    }

Epochs are 0-based and ``end_epoch`` is exclusive; the segments must cover ``[0, epochs)`` in order, without
gaps or overlaps (``epochs`` = the last ``end_epoch``). Each segment holds a complete policy document.
:func:`load_policy` and :func:`loads` return a :class:`Policy` only (a schedule is a one-line error there);
:func:`load_policy_or_schedule` / :func:`loads_any` return either, :func:`load_schedule` a :class:`Schedule`
(a plain policy becomes a one-segment schedule only with ``epochs``). :func:`dumps` and :func:`save_policy`
write both.
"""

from __future__ import annotations

import bisect
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NamedTuple

from .ops import BATCH_OPS, OPS

SCHEMA = "augpolicy/1.0"
SCHEDULE_SCHEMA = "augschedule/1.0"
POLICY_TYPES = ("subpolicy_choice", "rand_augment", "trivial_augment", "sequential")
INTERPOLATIONS = ("nearest", "bilinear")
PolicyType = Literal["subpolicy_choice", "rand_augment", "trivial_augment", "sequential"]

__all__ = [
    "SCHEMA", "SCHEDULE_SCHEMA", "PolicyError", "Magnitude", "OpConfig", "BatchOp", "Policy", "Segment", "Schedule",
    "load_policy", "load_schedule", "load_policy_or_schedule", "loads", "loads_any", "dumps", "save_policy",
    "preset", "PRESETS",
]


class PolicyError(ValueError):
    """A policy document is malformed; the message (always one printable line) names the offending field."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(text: str) -> str:
    """``text`` with control characters escaped (``\\n``), so an error message stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


# ---------------------------------------------------------------------------------------------
# Data model


@dataclass(frozen=True)
class Magnitude:
    """Distribution of an op's physical value: fixed, uniform(low, high) or normal(value, std)."""

    value: float | None = None
    low: float | None = None
    high: float | None = None
    std: float | None = None
    random_sign: bool = False

    @property
    def dist(self) -> str:
        if self.low is not None:
            return "uniform"
        return "normal" if self.std is not None else "fixed"

    @property
    def center(self) -> float:
        """The fixed value, the mean, or the middle of the uniform range."""
        return self.value if self.low is None else (self.low + self.high) / 2.0


@dataclass(frozen=True)
class OpConfig:
    """One op instance inside a policy."""

    op: str
    prob: float = 1.0
    magnitude: Magnitude | None = None
    weight: float = 1.0  # selection weight (rand_augment / trivial_augment only)


@dataclass(frozen=True)
class BatchOp:
    """A batch-level mixing op (``mixup``/``cutmix``), chosen for a batch with probability ``prob``."""

    op: str
    prob: float = 1.0
    alpha: float = 1.0


@dataclass(frozen=True)
class Policy:
    """A validated policy document. Build with :func:`loads`/:func:`load_policy` or directly."""

    type: PolicyType
    ops: tuple[OpConfig, ...] = ()
    subpolicies: tuple[tuple[OpConfig, ...], ...] = ()
    weights: tuple[float, ...] | None = None  # sub-policy weights (subpolicy_choice)
    num_ops: int = 1  # rand_augment
    batch_ops: tuple[BatchOp, ...] = ()
    name: str = ""
    interpolation: str = "bilinear"
    fill: tuple[float, ...] = (0.0,)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    extras: Mapping[str, Any] = field(default_factory=dict)  # preserved "x-" keys

    def __post_init__(self) -> None:
        _validate_policy(self)

    def with_provenance(self, **info: Any) -> Policy:
        """A copy with ``info`` merged into the provenance."""
        return replace(self, provenance={**self.provenance, **info})

    def all_ops(self) -> tuple[OpConfig, ...]:
        """Every op instance, in document order."""
        return tuple(o for sp in self.subpolicies for o in sp) if self.subpolicies else self.ops

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON document."""
        body: dict[str, Any] = {"type": self.type}
        if self.type == "subpolicy_choice":
            body["weights"] = list(self.weights) if self.weights is not None else None
            body["subpolicies"] = [[_op_to_dict(o, self.type) for o in sp] for sp in self.subpolicies]
        else:
            if self.type == "rand_augment":
                body["num_ops"] = self.num_ops
            body["ops"] = [_op_to_dict(o, self.type) for o in self.ops]
        doc: dict[str, Any] = {"schema": SCHEMA, "name": self.name, "policy": body}
        doc["batch_ops"] = [{"op": b.op, "prob": b.prob, "alpha": b.alpha} for b in self.batch_ops]
        doc["defaults"] = {"interpolation": self.interpolation, "fill": list(self.fill)}
        doc["input_contract"] = dict(INPUT_CONTRACT)
        doc["provenance"] = dict(self.provenance)
        doc.update(self.extras)
        return doc

    def to_torchvision(self, seed: int | None = None):
        """A ``torchvision.transforms.v2`` transform replaying this policy per image (exact)."""
        from .export import to_torchvision

        return to_torchvision(self, seed)

    def to_timm(self) -> str:
        """A timm ``auto_augment`` config string, where one exists (see :func:`export.to_timm`)."""
        from .export import to_timm

        return to_timm(self)

    def fidelity(self) -> dict[str, dict[str, Any]]:
        """How faithfully each export target reproduces this policy."""
        from .export import fidelity_report

        return fidelity_report(self)


INPUT_CONTRACT = {"value_range": [0.0, 1.0], "dtypes": ["uint8", "float32"], "channels": [1, 3]}


class Segment(NamedTuple):
    """Epochs ``start_epoch .. end_epoch - 1`` (0-based; ``end_epoch`` exclusive) train with ``policy``."""

    start_epoch: int
    end_epoch: int
    policy: Policy


@dataclass(frozen=True)
class Schedule:
    """Policies over training: segments covering epochs ``[0, epochs)`` in order, without gaps or overlaps.

    Build with :func:`loads_any`/:func:`load_schedule` or directly (validated either way);
    :meth:`policy_at` gives the policy of a 0-based epoch.
    """

    segments: tuple[Segment, ...]
    name: str = ""
    provenance: Mapping[str, Any] = field(default_factory=dict)
    extras: Mapping[str, Any] = field(default_factory=dict)  # preserved "x-" keys

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(Segment(*s) for s in self.segments))
        _validate_segments(self.segments)

    @property
    def epochs(self) -> int:
        """How many epochs the schedule covers (the last ``end_epoch``)."""
        return self.segments[-1].end_epoch

    @classmethod
    def constant(cls, policy: Policy, epochs: int, name: str | None = None) -> Schedule:
        """One segment: ``policy`` for all ``epochs``."""
        return cls((Segment(0, epochs, policy),), name=policy.name if name is None else name,
                   provenance=dict(policy.provenance))

    def segment_index(self, epoch: int, total_epochs: int | None = None) -> int:
        """Index of the segment that 0-based ``epoch`` trains with.

        With ``total_epochs`` (the length of the run replaying the schedule) the schedule is stretched to the
        run, as PBA replays its schedules: epoch ``e`` reads the schedule at ``floor(e * epochs / total_epochs)``.
        Without it, epochs map one to one and one past the end is a :class:`PolicyError`.
        """
        if total_epochs is not None:
            if isinstance(total_epochs, bool) or not isinstance(total_epochs, int) or total_epochs < 1:
                raise PolicyError(f"total_epochs: must be a whole number >= 1, got {total_epochs!r}")
            if not 0 <= epoch < total_epochs:
                raise PolicyError(f"epoch: {epoch} is outside the run's epochs [0, {total_epochs})")
            epoch = epoch * self.epochs // total_epochs
        if not 0 <= epoch < self.epochs:
            raise PolicyError(f"epoch: {epoch} is outside the schedule's epochs [0, {self.epochs}) "
                              "(pass total_epochs to stretch the schedule to a longer run)")
        return bisect.bisect_right([s.end_epoch for s in self.segments], epoch)

    def policy_at(self, epoch: int, total_epochs: int | None = None) -> Policy:
        """The policy of 0-based ``epoch`` (see :meth:`segment_index` for ``total_epochs``)."""
        return self.segments[self.segment_index(epoch, total_epochs)].policy

    def with_provenance(self, **info: Any) -> Schedule:
        """A copy with ``info`` merged into the provenance."""
        return replace(self, provenance={**self.provenance, **info})

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON document."""
        doc: dict[str, Any] = {"schema": SCHEDULE_SCHEMA, "name": self.name, "segments": [
            {"start_epoch": s.start_epoch, "end_epoch": s.end_epoch, "policy": s.policy.to_dict()}
            for s in self.segments]}
        doc["provenance"] = dict(self.provenance)
        doc.update(self.extras)
        return doc


def _validate_segments(segments: tuple[Segment, ...]) -> None:
    """Segments in order, each non-empty, the first starting at 0, each starting where the previous ends."""
    if not segments:
        raise _fail("segments", "needs at least one segment")
    end = 0
    for i, seg in enumerate(segments):
        path = f"segments[{i}]"
        for key in ("start_epoch", "end_epoch"):
            v = getattr(seg, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise _fail(f"{path}.{key}", f"must be a whole number >= 0, got {v!r}")
        if not isinstance(seg.policy, Policy):
            raise _fail(f"{path}.policy", f"must be a Policy, got {type(seg.policy).__name__}")
        if seg.end_epoch <= seg.start_epoch:
            raise _fail(f"{path}.end_epoch", f"must be > start_epoch {seg.start_epoch} (end is exclusive), "
                                             f"got {seg.end_epoch}")
        if seg.start_epoch < end:
            raise _fail(f"{path}.start_epoch", f"overlap: epochs {seg.start_epoch}..{min(end, seg.end_epoch) - 1} "
                                               f"are already covered by segments[{i - 1}] (ends at {end})")
        if seg.start_epoch > end:
            where = f"segments[{i - 1}] ends at {end}" if i else "a schedule starts at epoch 0"
            raise _fail(f"{path}.start_epoch", f"gap: epochs {end}..{seg.start_epoch - 1} are not covered ({where})")
        end = seg.end_epoch


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() and abs(x) < 2**53 else float(x)


def _op_to_dict(o: OpConfig, ptype: str) -> dict[str, Any]:
    spec = OPS[o.op]
    d: dict[str, Any] = {"op": o.op, "prob": o.prob}
    if ptype in ("rand_augment", "trivial_augment"):
        d["weight"] = o.weight
    if o.magnitude is not None:
        cast = _num if spec.integer else float
        m: dict[str, Any] = {}
        for key in ("value", "low", "high", "std"):
            v = getattr(o.magnitude, key)
            if v is not None:
                m[key] = float(v) if key == "std" else cast(v)
        m["random_sign"] = o.magnitude.random_sign
        d["magnitude"] = m
    return d


# ---------------------------------------------------------------------------------------------
# Validation (shared by the constructor and the JSON loader)


def _fail(path: str, msg: str) -> PolicyError:
    return PolicyError(f"{path}: {msg}" if path else msg)


def _validate_op(o: OpConfig, path: str) -> None:
    spec = OPS.get(o.op)
    if spec is None:
        raise _fail(f"{path}.op", f"unknown op '{o.op}' (known: {', '.join(OPS)})")
    _check_prob(o.prob, f"{path}.prob")
    if not (math.isfinite(o.weight) and o.weight >= 0):
        raise _fail(f"{path}.weight", f"must be a finite number >= 0, got {o.weight!r}")
    if o.magnitude is None:
        if spec.has_magnitude:
            raise _fail(f"{path}.magnitude", f"missing; op '{o.op}' needs its {spec.param}")
        return
    if not spec.has_magnitude:
        raise _fail(f"{path}.magnitude", f"op '{o.op}' takes no magnitude")
    m, lo, hi = o.magnitude, *spec.bounds
    if m.low is not None or m.high is not None:
        if m.low is None or m.high is None or m.value is not None or m.std is not None:
            raise _fail(f"{path}.magnitude", "a uniform magnitude needs exactly 'low' and 'high'")
        if m.low > m.high:
            raise _fail(f"{path}.magnitude", f"low {m.low} > high {m.high}")
        values = {"low": m.low, "high": m.high}
    else:
        if m.value is None:
            raise _fail(f"{path}.magnitude", "needs 'value' (fixed/normal) or 'low' and 'high' (uniform)")
        if m.std is not None and not (math.isfinite(m.std) and m.std >= 0):
            raise _fail(f"{path}.magnitude.std", f"must be a finite number >= 0, got {m.std!r}")
        values = {"value": m.value}
    for key, v in values.items():
        if not (math.isfinite(v) and lo <= v <= hi):
            raise _fail(f"{path}.magnitude.{key}", f"{v!r} is outside {o.op}'s range [{lo:g}, {hi:g}] {spec.param}")
        if spec.integer and m.std is None and not float(v).is_integer():
            raise _fail(f"{path}.magnitude.{key}", f"{o.op} takes whole {spec.param}, got {v!r}")


def _check_prob(p: float, path: str) -> None:
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise _fail(path, f"probability must be in [0, 1], got {p!r}")


def _validate_policy(p: Policy) -> None:
    if p.type not in POLICY_TYPES:
        raise _fail("policy.type", f"unknown policy type '{p.type}' (known: {', '.join(POLICY_TYPES)})")
    if p.type == "subpolicy_choice":
        if p.ops:
            raise _fail("policy.ops", "subpolicy_choice holds 'subpolicies', not 'ops'")
        if not p.subpolicies:
            raise _fail("policy.subpolicies", "needs at least one sub-policy")
        for i, sp in enumerate(p.subpolicies):
            if not sp:
                raise _fail(f"policy.subpolicies[{i}]", "a sub-policy needs at least one op")
            for j, o in enumerate(sp):
                _validate_op(o, f"policy.subpolicies[{i}][{j}]")
        if p.weights is not None:
            if len(p.weights) != len(p.subpolicies):
                raise _fail("policy.weights", f"{len(p.weights)} weights for {len(p.subpolicies)} sub-policies")
            if not all(math.isfinite(w) and w >= 0 for w in p.weights) or sum(p.weights) <= 0:
                raise _fail("policy.weights", "weights must be finite, >= 0 and not all zero")
    else:
        if p.subpolicies:
            raise _fail("policy.subpolicies", f"{p.type} holds 'ops', not 'subpolicies'")
        if not p.ops:
            raise _fail("policy.ops", "needs at least one op")
        for j, o in enumerate(p.ops):
            _validate_op(o, f"policy.ops[{j}]")
        if p.type in ("rand_augment", "trivial_augment") and sum(o.weight for o in p.ops) <= 0:
            raise _fail("policy.ops", "op weights are all zero")
    if p.type == "rand_augment" and not (isinstance(p.num_ops, int) and 0 <= p.num_ops <= 16):
        raise _fail("policy.num_ops", f"must be a whole number in [0, 16], got {p.num_ops!r}")
    total = 0.0
    for i, b in enumerate(p.batch_ops):
        if b.op not in BATCH_OPS:
            raise _fail(f"batch_ops[{i}].op", f"unknown batch op '{b.op}' (known: {', '.join(BATCH_OPS)})")
        _check_prob(b.prob, f"batch_ops[{i}].prob")
        if not (math.isfinite(b.alpha) and 0 < b.alpha <= 100):
            raise _fail(f"batch_ops[{i}].alpha", f"must be in (0, 100], got {b.alpha!r}")
        total += b.prob
    if total > 1.0 + 1e-9:
        raise _fail("batch_ops", f"probabilities sum to {total:g} > 1 (at most one batch op runs per batch)")
    if p.interpolation not in INTERPOLATIONS:
        raise _fail("defaults.interpolation", f"must be one of {', '.join(INTERPOLATIONS)}, got {p.interpolation!r}")
    if len(p.fill) not in (1, 3) or not all(math.isfinite(f) and 0.0 <= f <= 1.0 for f in p.fill):
        raise _fail("defaults.fill", f"must be 1 or 3 numbers in [0, 1], got {list(p.fill)!r}")


# ---------------------------------------------------------------------------------------------
# JSON parsing: strict types, one-line errors


def _reject_constant(name: str) -> None:
    raise PolicyError(f"invalid JSON number {name} (NaN and Infinity are not allowed)")


def _expect(d: Any, path: str, kind: type | tuple[type, ...], what: str) -> Any:
    if kind in (float, int, (int, float)):
        if isinstance(d, bool) or not isinstance(d, (int, float)):
            raise _fail(path, f"expected {what}, got {_type_name(d)}")
        return d
    if not isinstance(d, kind):
        raise _fail(path, f"expected {what}, got {_type_name(d)}")
    return d


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__
    )


def _keys(d: dict, path: str, required: Sequence[str], optional: Sequence[str] = ()) -> None:
    for k in required:
        if k not in d:
            raise _fail(f"{path}.{k}" if path else k, "missing required field")
    for k in d:
        if k not in required and k not in optional and not (isinstance(k, str) and k.startswith("x-")):
            raise _fail(f"{path}.{k}" if path else k, "unknown field (vendor fields must start with 'x-')")


def _num_field(d: dict, key: str, path: str, default: float | None = None) -> float | None:
    if key not in d:
        return default
    return float(_expect(d[key], f"{path}.{key}", (int, float), "a number"))


def _parse_op(d: Any, path: str, ptype: str) -> OpConfig:
    _expect(d, path, dict, "an op object")
    optional = ["prob", "magnitude"] + (["weight"] if ptype in ("rand_augment", "trivial_augment") else [])
    _keys(d, path, ["op"], optional)
    name = _expect(d["op"], f"{path}.op", str, "an op name")
    if name not in OPS:
        raise _fail(f"{path}.op", f"unknown op '{name}' (known: {', '.join(OPS)})")
    magnitude = None
    if "magnitude" in d:
        m = _expect(d["magnitude"], f"{path}.magnitude", dict, "a magnitude object")
        mpath = f"{path}.magnitude"
        _keys(m, mpath, [], ["value", "low", "high", "std", "random_sign"])
        sign = m.get("random_sign", OPS[name].signed)
        _expect(sign, f"{mpath}.random_sign", bool, "true or false")
        magnitude = Magnitude(*(_num_field(m, k, mpath) for k in ("value", "low", "high", "std")), random_sign=sign)
    return OpConfig(name, _num_field(d, "prob", path, 1.0), magnitude, _num_field(d, "weight", path, 1.0))


def from_dict(doc: Any) -> Policy:
    """Validate a parsed JSON document and build the :class:`Policy`."""
    _expect(doc, "", dict, "a JSON object at the top level")
    if "schema" not in doc:
        raise _fail("schema", f"missing required field (expected \"{SCHEMA}\")")
    schema = doc["schema"]
    if schema == SCHEDULE_SCHEMA:
        raise _fail("schema", f"this is a schedule (\"{SCHEDULE_SCHEMA}\"), not a single policy; "
                              "load it with load_policy_or_schedule or load_schedule")
    if schema != SCHEMA:
        raise _fail("schema", f"unsupported schema version {schema!r} (this build reads \"{SCHEMA}\")")
    _keys(doc, "", ["schema", "policy"], ["name", "batch_ops", "defaults", "input_contract", "provenance"])
    body = _expect(doc["policy"], "policy", dict, "a policy object")
    ptype = _expect(body.get("type"), "policy.type", str, "a policy type string")
    if ptype not in POLICY_TYPES:
        raise _fail("policy.type", f"unknown policy type '{ptype}' (known: {', '.join(POLICY_TYPES)})")
    kwargs: dict[str, Any] = {"type": ptype}
    if ptype == "subpolicy_choice":
        _keys(body, "policy", ["type", "subpolicies"], ["weights"])
        subs = _expect(body["subpolicies"], "policy.subpolicies", list, "an array of sub-policies")
        kwargs["subpolicies"] = tuple(
            tuple(_parse_op(o, f"policy.subpolicies[{i}][{j}]", ptype)
                  for j, o in enumerate(_expect(sp, f"policy.subpolicies[{i}]", list, "an array of ops")))
            for i, sp in enumerate(subs)
        )
        if body.get("weights") is not None:
            w = _expect(body["weights"], "policy.weights", list, "an array of numbers or null")
            kwargs["weights"] = tuple(float(_expect(x, f"policy.weights[{i}]", (int, float), "a number"))
                                      for i, x in enumerate(w))
    else:
        _keys(body, "policy", ["type", "ops"] + (["num_ops"] if ptype == "rand_augment" else []))
        ops = _expect(body["ops"], "policy.ops", list, "an array of ops")
        kwargs["ops"] = tuple(_parse_op(o, f"policy.ops[{j}]", ptype) for j, o in enumerate(ops))
        if ptype == "rand_augment":
            n = body["num_ops"]
            if isinstance(n, bool) or not isinstance(n, int):
                raise _fail("policy.num_ops", f"expected a whole number, got {_type_name(n)}")
            kwargs["num_ops"] = n
    batch = []
    for i, b in enumerate(_expect(doc.get("batch_ops", []), "batch_ops", list, "an array")):
        path = f"batch_ops[{i}]"
        _expect(b, path, dict, "a batch op object")
        _keys(b, path, ["op"], ["prob", "alpha"])
        batch.append(BatchOp(_expect(b["op"], f"{path}.op", str, "a batch op name"),
                             _num_field(b, "prob", path, 1.0), _num_field(b, "alpha", path, 1.0)))
    defaults = _expect(doc.get("defaults", {}), "defaults", dict, "an object")
    _keys(defaults, "defaults", [], ["interpolation", "fill"])
    fill = defaults.get("fill", [0.0])
    fill = [fill] if isinstance(fill, (int, float)) and not isinstance(fill, bool) else fill
    _expect(fill, "defaults.fill", list, "a number or an array of numbers")
    contract = _expect(doc.get("input_contract", INPUT_CONTRACT), "input_contract", dict, "an object")
    _keys(contract, "input_contract", [], list(INPUT_CONTRACT))
    for key, value in contract.items():
        if key in INPUT_CONTRACT and value != INPUT_CONTRACT[key]:
            supported = INPUT_CONTRACT[key]
            raise _fail(f"input_contract.{key}", f"{value!r} is not supported (this build takes {supported!r})")
    return Policy(
        **kwargs,
        batch_ops=tuple(batch),
        name=_expect(doc.get("name", ""), "name", str, "a string"),
        interpolation=_expect(defaults.get("interpolation", "bilinear"), "defaults.interpolation", str, "a string"),
        fill=tuple(float(_expect(f, f"defaults.fill[{i}]", (int, float), "a number")) for i, f in enumerate(fill)),
        provenance=_expect(doc.get("provenance", {}), "provenance", dict, "an object"),
        extras={k: v for k, v in doc.items() if isinstance(k, str) and k.startswith("x-")},
    )


def _int_field(d: dict, key: str, path: str) -> int:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(f"{path}.{key}", f"expected a whole number, got {_type_name(v)}")
    return v


def schedule_from_dict(doc: Any) -> Schedule:
    """Validate a parsed ``augschedule/1.0`` document and build the :class:`Schedule`."""
    _expect(doc, "", dict, "a JSON object at the top level")
    if doc.get("schema") != SCHEDULE_SCHEMA:
        raise _fail("schema", f"expected \"{SCHEDULE_SCHEMA}\", got {doc.get('schema')!r}")
    _keys(doc, "", ["schema", "segments"], ["name", "provenance"])
    segments = []
    for i, seg in enumerate(_expect(doc["segments"], "segments", list, "an array of segments")):
        path = f"segments[{i}]"
        _expect(seg, path, dict, "a segment object")
        for k in ("start_epoch", "end_epoch", "policy"):
            if k not in seg:
                raise _fail(f"{path}.{k}", "missing required field")
        for k in seg:
            if k not in ("start_epoch", "end_epoch", "policy"):
                raise _fail(f"{path}.{k}", "unknown field (a segment holds start_epoch, end_epoch and policy)")
        try:
            policy = from_dict(seg["policy"])
        except PolicyError as e:
            raise PolicyError(f"{path}.policy: {e}") from None
        segments.append(Segment(_int_field(seg, "start_epoch", path), _int_field(seg, "end_epoch", path), policy))
    return Schedule(
        tuple(segments),
        name=_expect(doc.get("name", ""), "name", str, "a string"),
        provenance=_expect(doc.get("provenance", {}), "provenance", dict, "an object"),
        extras={k: v for k, v in doc.items() if isinstance(k, str) and k.startswith("x-")},
    )


def _parse_json(text: str | bytes) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise PolicyError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (UnicodeDecodeError, RecursionError) as e:
        raise PolicyError(f"not valid JSON: {type(e).__name__}") from None


def loads(text: str | bytes) -> Policy:
    """Parse and validate a policy document from JSON text (a schedule is a :class:`PolicyError`)."""
    return from_dict(_parse_json(text))


def loads_any(text: str | bytes) -> Policy | Schedule:
    """Parse and validate a policy (``augpolicy/1.0``) or a schedule (``augschedule/1.0``) from JSON text."""
    doc = _parse_json(text)
    if isinstance(doc, dict) and doc.get("schema") == SCHEDULE_SCHEMA:
        return schedule_from_dict(doc)
    if isinstance(doc, dict) and "schema" in doc and doc["schema"] != SCHEMA:
        raise _fail("schema", f"unsupported schema version {doc['schema']!r} "
                              f"(this build reads \"{SCHEMA}\" and \"{SCHEDULE_SCHEMA}\")")
    return from_dict(doc)


def _pretty(obj: Any, indent: int = 0, width: int = 110) -> str:
    """JSON with each container on one line when it fits in ``width`` columns, else one item per line."""
    flat = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))
    if not isinstance(obj, (dict, list)) or not obj or indent + len(flat) <= width:
        return flat
    pad = " " * (indent + 2)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {_pretty(v, indent + 2, width)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    return "[\n" + ",\n".join(pad + _pretty(v, indent + 2, width) for v in obj) + "\n" + " " * indent + "]"


def dumps(policy: Policy | Schedule) -> str:
    """Canonical JSON text of a policy or schedule (stable: dumps(loads_any(dumps(p))) == dumps(p))."""
    return _pretty(policy.to_dict()) + "\n"


def _load(source: str | os.PathLike, parse: Any) -> Policy | Schedule:
    """A preset by name, or ``parse`` of a file's bytes; errors name the file."""
    path = Path(source)
    if path.suffix != ".json" and str(source) in PRESETS:
        return preset(str(source))
    if not path.is_file():
        raise PolicyError(f"{source}: no such policy file or preset (presets: {', '.join(PRESETS)})")
    try:
        text = path.read_bytes()
    except OSError as e:
        raise PolicyError(f"{source}: cannot read ({e.strerror})") from None
    try:
        return parse(text)
    except PolicyError as e:
        raise PolicyError(f"{path.name}: {e}") from None


def load_policy(source: str | os.PathLike | Policy) -> Policy:
    """Load a policy from a file path, a preset name, or pass a :class:`Policy` through.

    A schedule file is a one-line :class:`PolicyError`: use :func:`load_policy_or_schedule` where both are fine.
    """
    if isinstance(source, Policy):
        return source
    if isinstance(source, Schedule):
        raise PolicyError(f"schedule {source.name!r}: expected a single policy, got a schedule "
                          "(use load_policy_or_schedule)")
    return _load(source, loads)


def load_policy_or_schedule(source: str | os.PathLike | Policy | Schedule) -> Policy | Schedule:
    """Load a policy or a schedule from a file path or a preset name, or pass either object through."""
    if isinstance(source, Policy | Schedule):
        return source
    return _load(source, loads_any)


def load_schedule(source: str | os.PathLike | Policy | Schedule, epochs: int | None = None) -> Schedule:
    """Load a schedule; a single policy (file, preset or object) becomes a constant schedule of ``epochs``."""
    loaded = load_policy_or_schedule(source)
    if isinstance(loaded, Schedule):
        return loaded
    if epochs is None:
        raise PolicyError(f"{getattr(loaded, 'name', '') or source}: a single policy, not a schedule "
                          "(pass epochs to use it as a constant schedule)")
    return Schedule.constant(loaded, epochs)


def save_policy(policy: Policy | Schedule, path: str | os.PathLike) -> Path:
    """Write a policy or schedule as canonical JSON (atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(policy), encoding="utf-8")
    os.replace(tmp, path)
    return path


PRESETS = ("none", "crop_flip", "crop_flip_cutout", "randaugment", "trivialaugment_wide", "autoaugment_cifar10")


def preset(name: str) -> Policy:
    """A shipped preset policy by name (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise PolicyError(f"unknown preset '{name}' (presets: {', '.join(PRESETS)})")
    return loads(resources.files("search_spaces").joinpath("presets", f"{name}.json").read_bytes())
