"""The one validator of the policy format: every rule a policy or schedule obeys, written once.

The constructors of :class:`~search_spaces.policy_model.Policy` and :class:`~search_spaces.policy_model.Schedule`
run :func:`validate_policy` / :func:`validate_schedule`, so a policy built in Python and one read from JSON pass
the same checks: the JSON reader (:mod:`search_spaces.policy_io`) only maps a document's objects and arrays onto
the constructors, and checks what exists only in a document (schema, keys, input contract, size). Each failure
is a :class:`PolicyError` whose one-line message names the field (``policy.ops[2].prob: ...``).

This module reads the model through its attributes and imports nothing of it (the model imports this).

Limits, so that an untrusted document cannot make loading or augmenting unboundedly expensive:

========================================  ==========================================================
``MAX_DOCUMENT_BYTES``                    16 MiB of JSON text per document (a schedule included)
``MAX_NUMBER``                            every number is finite with magnitude below 2**63
``MAX_SUBPOLICIES``                       64 sub-policies (AutoAugment's CIFAR-10 policy has 25)
``MAX_OPS_PER_SUBPOLICY``                 16 ops in one sub-policy
``MAX_OPS``                               128 ops in ``ops`` (PBA with 20 ops x 4 copies uses 81)
``MAX_NUM_OPS``                           ``num_ops`` of ``rand_augment`` in [0, 16]
``MAX_BATCH_OPS``                         8 batch ops
``MAX_WEIGHT``                            op and sub-policy weights in [0, 1,000,000]
``MAX_SEGMENTS``                          4,096 segments in a schedule
``MAX_DATA_DEPTH``, ``MAX_DATA_VALUES``   free-form data (``provenance``, ``x-`` fields): 32 levels deep,
                                          100,000 values
========================================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .errors import PolicyError
from .ops import BATCH_OPS, OPS

POLICY_TYPES = ("subpolicy_choice", "rand_augment", "trivial_augment", "sequential")
INTERPOLATIONS = ("nearest", "bilinear")

MAX_DOCUMENT_BYTES = 16 << 20
MAX_NUMBER = 2**63
MAX_SUBPOLICIES = 64
MAX_OPS_PER_SUBPOLICY = 16
MAX_OPS = 128
MAX_NUM_OPS = 16
MAX_BATCH_OPS = 8
MAX_WEIGHT = 1e6
MAX_SEGMENTS = 4096
MAX_DATA_DEPTH = 32
MAX_DATA_VALUES = 100_000

__all__ = [
    "POLICY_TYPES", "INTERPOLATIONS", "MAX_DOCUMENT_BYTES", "MAX_NUMBER", "MAX_SUBPOLICIES", "MAX_OPS_PER_SUBPOLICY",
    "MAX_OPS", "MAX_NUM_OPS", "MAX_BATCH_OPS", "MAX_WEIGHT", "MAX_SEGMENTS", "MAX_DATA_DEPTH", "MAX_DATA_VALUES",
    "fail", "type_name", "check_policy_type", "json_number", "validate_policy", "validate_schedule",
]


def fail(path: str, msg: str) -> PolicyError:
    """The error for field ``path`` (``policy.ops[2].prob``; empty for the document itself)."""
    return PolicyError(f"{path}: {msg}" if path else msg)


def type_name(v: Any) -> str:
    """How a value's JSON type reads in a message: ``an object``, ``an array``, ``a string``, ``null``, ..."""
    names = {dict: "an object", list: "an array", tuple: "an array", str: "a string", bool: "a boolean",
             type(None): "null"}
    return names.get(type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


# ---------------------------------------------------------------------------------------------
# Values


def _show(v: int | float) -> str:
    """``repr`` of a number, or its size when the digits would not fit a message."""
    if isinstance(v, int) and abs(v) >= 10**30:
        return f"an integer of about {int(v.bit_length() * 0.30103) + 1:,} digits"
    return repr(v)


def _number(v: Any, path: str, what: str = "a number") -> None:
    """A real number (``bool`` is not one), finite, with magnitude below :data:`MAX_NUMBER`."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise fail(path, f"expected {what}, got {type_name(v)}")
    if not -MAX_NUMBER < v < MAX_NUMBER:  # False for NaN too
        raise fail(path, f"{_show(v)} is out of range (numbers must be finite, with magnitude below 2**63)")


def _whole(v: Any, path: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise fail(path, f"expected a whole number, got {type_name(v)}")


def _weight(v: Any, path: str) -> None:
    _number(v, path)
    if not 0.0 <= v <= MAX_WEIGHT:
        raise fail(path, f"must be a number in [0, {MAX_WEIGHT:,.0f}], got {v!r}")


def _array(v: Any, path: str, what: str, limit: int | None = None, noun: str = "") -> tuple | list:
    if not isinstance(v, (tuple, list)):
        raise fail(path, f"expected {what}, got {type_name(v)}")
    if limit is not None and len(v) > limit:
        raise fail(path, f"{len(v):,} {noun}; at most {limit:,} are allowed")
    return v


def _attrs(obj: Any, names: Iterable[str], path: str, what: str) -> None:
    if not all(hasattr(obj, n) for n in names):
        raise fail(path, f"expected {what}, got {type_name(obj)}")


def json_number(token: str) -> int | float:
    """A JSON number token read as Python's ``json`` reads it, or a PolicyError when it is out of range.

    ``json.loads``'s ``parse_int``/``parse_float``: ``1e999`` (which ``json`` reads as infinity, a value that
    cannot be saved again) and a 5,000-digit integer (which Python refuses to convert, a raw ``ValueError``)
    become one-line errors. Integers of more than 19 digits are refused before any conversion.
    """
    is_int = not any(c in token for c in ".eE")
    if not (is_int and len(token.lstrip("-")) > 19):
        value = int(token) if is_int else float(token)
        if -MAX_NUMBER < value < MAX_NUMBER:
            return value
    shown = token if len(token) <= 24 else f"{token[:20]}... ({len(token):,} characters)"
    raise fail("", f"number {shown} is out of range (numbers must be finite, with magnitude below 2**63)")


def _data(value: Any, path: str) -> None:
    """Free-form JSON data: at most :data:`MAX_DATA_DEPTH` levels and :data:`MAX_DATA_VALUES` values, numbers
    finite and in range. Values of other types are left to the JSON encoder (they come only from Python)."""
    count = 0
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        v, where, depth = stack.pop()
        if isinstance(v, (Mapping, list, tuple)):
            if depth >= MAX_DATA_DEPTH:
                raise fail(where, f"nested deeper than {MAX_DATA_DEPTH} levels")
            count += len(v)
            if count > MAX_DATA_VALUES:
                raise fail(path or "x- fields", f"more than {MAX_DATA_VALUES:,} values")
            if isinstance(v, Mapping):
                stack.extend((x, f"{where}.{k}" if where else str(k), depth + 1) for k, x in v.items())
            else:
                stack.extend((x, f"{where}[{i}]", depth + 1) for i, x in enumerate(v))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            _number(v, where)


def _document_fields(name: Any, provenance: Any, extras: Any) -> None:
    """What policies and schedules share: a name, free-form provenance, and vendor (``x-``) fields."""
    if not isinstance(name, str):
        raise fail("name", f"expected a string, got {type_name(name)}")
    if not isinstance(provenance, Mapping):
        raise fail("provenance", f"expected an object, got {type_name(provenance)}")
    _data(provenance, "provenance")
    if not isinstance(extras, Mapping):
        raise fail("extras", f"expected an object of 'x-' fields, got {type_name(extras)}")
    for key in extras:
        if not (isinstance(key, str) and key.startswith("x-")):
            raise fail(str(key), "unknown field (vendor fields must start with 'x-')")
    _data(extras, "")


# ---------------------------------------------------------------------------------------------
# Ops


def _probability(p: Any, path: str) -> None:
    _number(p, path)
    if not 0.0 <= p <= 1.0:
        raise fail(path, f"probability must be in [0, 1], got {p!r}")


def _op(o: Any, path: str) -> None:
    _attrs(o, ("op", "prob", "magnitude", "weight"), path, "an op")
    if not isinstance(o.op, str):
        raise fail(f"{path}.op", f"expected an op name, got {type_name(o.op)}")
    spec = OPS.get(o.op)
    if spec is None:
        raise fail(f"{path}.op", f"unknown op '{o.op}' (known: {', '.join(OPS)})")
    _probability(o.prob, f"{path}.prob")
    _weight(o.weight, f"{path}.weight")
    m = o.magnitude
    if m is None:
        if spec.has_magnitude:
            raise fail(f"{path}.magnitude", f"missing; op '{o.op}' needs its {spec.param}")
        return
    if not spec.has_magnitude:
        raise fail(f"{path}.magnitude", f"op '{o.op}' takes no magnitude")
    mpath = f"{path}.magnitude"
    _attrs(m, ("value", "low", "high", "std", "random_sign"), mpath, "a magnitude")
    if not isinstance(m.random_sign, bool):
        raise fail(f"{mpath}.random_sign", f"expected true or false, got {type_name(m.random_sign)}")
    for key in ("value", "low", "high", "std"):
        if getattr(m, key) is not None:
            _number(getattr(m, key), f"{mpath}.{key}")
    lo, hi = spec.bounds
    if m.low is not None or m.high is not None:
        if m.low is None or m.high is None or m.value is not None or m.std is not None:
            raise fail(mpath, "a uniform magnitude needs exactly 'low' and 'high'")
        if m.low > m.high:
            raise fail(mpath, f"low {m.low} > high {m.high}")
        values = {"low": m.low, "high": m.high}
    else:
        if m.value is None:
            raise fail(mpath, "needs 'value' (fixed/normal) or 'low' and 'high' (uniform)")
        if m.std is not None and m.std < 0:
            raise fail(f"{mpath}.std", f"must be a finite number >= 0, got {m.std!r}")
        values = {"value": m.value}
    for key, v in values.items():
        if not lo <= v <= hi:
            raise fail(f"{mpath}.{key}", f"{v!r} is outside {o.op}'s range [{lo:g}, {hi:g}] {spec.param}")
        if spec.integer and m.std is None and not float(v).is_integer():
            raise fail(f"{mpath}.{key}", f"{o.op} takes whole {spec.param}, got {v!r}")


# ---------------------------------------------------------------------------------------------
# Policies and schedules


def check_policy_type(ptype: Any) -> None:
    """``ptype`` names one of :data:`POLICY_TYPES` (the JSON reader dispatches on it first)."""
    if not isinstance(ptype, str):
        raise fail("policy.type", f"expected a policy type string, got {type_name(ptype)}")
    if ptype not in POLICY_TYPES:
        raise fail("policy.type", f"unknown policy type '{ptype}' (known: {', '.join(POLICY_TYPES)})")


def validate_policy(p: Any) -> None:
    """Every rule of a :class:`~search_spaces.policy_model.Policy`; the first broken one is a PolicyError."""
    check_policy_type(p.type)
    if p.type == "subpolicy_choice":
        if p.ops:
            raise fail("policy.ops", "subpolicy_choice holds 'subpolicies', not 'ops'")
        subs = _array(p.subpolicies, "policy.subpolicies", "an array of sub-policies", MAX_SUBPOLICIES,
                      "sub-policies")
        if not subs:
            raise fail("policy.subpolicies", "needs at least one sub-policy")
        for i, sp in enumerate(subs):
            _array(sp, f"policy.subpolicies[{i}]", "an array of ops", MAX_OPS_PER_SUBPOLICY, "ops")
            if not sp:
                raise fail(f"policy.subpolicies[{i}]", "a sub-policy needs at least one op")
            for j, o in enumerate(sp):
                _op(o, f"policy.subpolicies[{i}][{j}]")
        if p.weights is not None:
            _array(p.weights, "policy.weights", "an array of numbers or null")
            if len(p.weights) != len(subs):
                raise fail("policy.weights", f"{len(p.weights)} weights for {len(subs)} sub-policies")
            for i, w in enumerate(p.weights):
                _weight(w, f"policy.weights[{i}]")
            if sum(p.weights) <= 0:
                raise fail("policy.weights", "weights must be finite, >= 0 and not all zero")
    else:
        if p.subpolicies:
            raise fail("policy.subpolicies", f"{p.type} holds 'ops', not 'subpolicies'")
        ops = _array(p.ops, "policy.ops", "an array of ops", MAX_OPS, "ops")
        if not ops:
            raise fail("policy.ops", "needs at least one op")
        for j, o in enumerate(ops):
            _op(o, f"policy.ops[{j}]")
        if p.type in ("rand_augment", "trivial_augment") and sum(o.weight for o in ops) <= 0:
            raise fail("policy.ops", "op weights are all zero")
    if p.type == "rand_augment":
        _whole(p.num_ops, "policy.num_ops")
        if not 0 <= p.num_ops <= MAX_NUM_OPS:
            raise fail("policy.num_ops", f"must be a whole number in [0, {MAX_NUM_OPS}], got {p.num_ops!r}")
    total = 0.0
    for i, b in enumerate(_array(p.batch_ops, "batch_ops", "an array", MAX_BATCH_OPS, "batch ops")):
        path = f"batch_ops[{i}]"
        _attrs(b, ("op", "prob", "alpha"), path, "a batch op")
        if not isinstance(b.op, str):
            raise fail(f"{path}.op", f"expected a batch op name, got {type_name(b.op)}")
        if b.op not in BATCH_OPS:
            raise fail(f"{path}.op", f"unknown batch op '{b.op}' (known: {', '.join(BATCH_OPS)})")
        _probability(b.prob, f"{path}.prob")
        _number(b.alpha, f"{path}.alpha")
        if not 0 < b.alpha <= 100:
            raise fail(f"{path}.alpha", f"must be in (0, 100], got {b.alpha!r}")
        total += b.prob
    if total > 1.0 + 1e-9:
        raise fail("batch_ops", f"probabilities sum to {total:g} > 1 (at most one batch op runs per batch)")
    if not isinstance(p.interpolation, str):
        raise fail("defaults.interpolation", f"expected a string, got {type_name(p.interpolation)}")
    if p.interpolation not in INTERPOLATIONS:
        raise fail("defaults.interpolation", f"must be one of {', '.join(INTERPOLATIONS)}, got {p.interpolation!r}")
    fill = _array(p.fill, "defaults.fill", "a number or an array of numbers")
    if len(fill) in (1, 3):
        for i, f in enumerate(fill):
            _number(f, f"defaults.fill[{i}]")
    if len(fill) not in (1, 3) or not all(0.0 <= f <= 1.0 for f in fill):
        shown = f"{list(fill)!r}" if len(fill) <= 8 else f"{len(fill):,} numbers"
        raise fail("defaults.fill", f"must be 1 or 3 numbers in [0, 1], got {shown}")
    _document_fields(p.name, p.provenance, p.extras)


def validate_schedule(s: Any, policy_class: type) -> None:
    """Every rule of a :class:`~search_spaces.policy_model.Schedule`: segments in order, each non-empty, the
    first starting at 0, each starting where the previous ends, each holding a ``policy_class`` instance."""
    segments = s.segments
    if not segments:
        raise fail("segments", "needs at least one segment")
    if len(segments) > MAX_SEGMENTS:
        raise fail("segments", f"{len(segments):,} segments; at most {MAX_SEGMENTS:,} are allowed")
    end = 0
    for i, seg in enumerate(segments):
        path = f"segments[{i}]"
        for key in ("start_epoch", "end_epoch"):
            v = getattr(seg, key)
            _whole(v, f"{path}.{key}")
            if v < 0:
                raise fail(f"{path}.{key}", f"must be a whole number >= 0, got {v!r}")
        if not isinstance(seg.policy, policy_class):
            raise fail(f"{path}.policy", f"must be a Policy, got {type(seg.policy).__name__}")
        if seg.end_epoch <= seg.start_epoch:
            raise fail(f"{path}.end_epoch", f"must be > start_epoch {seg.start_epoch} (end is exclusive), "
                                            f"got {seg.end_epoch}")
        if seg.start_epoch < end:
            raise fail(f"{path}.start_epoch", f"overlap: epochs {seg.start_epoch}..{min(end, seg.end_epoch) - 1} "
                                              f"are already covered by segments[{i - 1}] (ends at {end})")
        if seg.start_epoch > end:
            where = f"segments[{i - 1}] ends at {end}" if i else "a schedule starts at epoch 0"
            raise fail(f"{path}.start_epoch", f"gap: epochs {end}..{seg.start_epoch - 1} are not covered ({where})")
        end = seg.end_epoch
    _document_fields(s.name, s.provenance, s.extras)
