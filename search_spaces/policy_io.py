"""Reading and writing policy documents: JSON text <-> :class:`Policy` / :class:`Schedule`, files, presets.

Reading is pure JSON (no pickle, no eval). The reader checks what exists only in a document (the schema, the
keys of each object, the input contract, the size and the range of its numbers), maps its objects and arrays
onto the model's constructors, and leaves every value to the one validator they run
(:mod:`search_spaces.policy_validation`). Errors are one-line :class:`PolicyError` naming the field; errors in
a file are prefixed with the file's name. :func:`dumps` is canonical, so save -> load -> save is byte-identical.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import PolicyError
from .files import atomic_write_text
from .ops import OPS
from .policy_model import (
    INPUT_CONTRACT,
    SCHEDULE_SCHEMA,
    SCHEMA,
    BatchOp,
    Magnitude,
    OpConfig,
    Policy,
    Schedule,
    Segment,
)
from .policy_validation import MAX_DOCUMENT_BYTES, check_policy_type, fail, json_number, type_name

PRESETS = ("none", "crop_flip", "crop_flip_cutout", "randaugment", "trivialaugment_wide", "autoaugment_cifar10")

__all__ = ["from_dict", "schedule_from_dict", "loads", "loads_any", "dumps", "load_policy", "load_policy_or_schedule",
           "load_schedule", "save_policy", "preset", "PRESETS"]


# ---------------------------------------------------------------------------------------------
# Documents -> model (shape only; the constructors validate every value)


def _json_object(v: Any, path: str, what: str) -> dict:
    if not isinstance(v, dict):
        raise fail(path, f"expected {what}, got {type_name(v)}")
    return v


def _json_array(v: Any, path: str, what: str) -> list:
    if not isinstance(v, list):
        raise fail(path, f"expected {what}, got {type_name(v)}")
    return v


def _keys(d: dict, path: str, required: Sequence[str], optional: Sequence[str] = ()) -> None:
    for k in required:
        if k not in d:
            raise fail(f"{path}.{k}" if path else k, "missing required field")
    for k in d:
        if k not in required and k not in optional and not (isinstance(k, str) and k.startswith("x-")):
            raise fail(f"{path}.{k}" if path else k, "unknown field (vendor fields must start with 'x-')")


def _vendor(doc: dict) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if isinstance(k, str) and k.startswith("x-")}


def _op(d: Any, path: str, ptype: str) -> OpConfig:
    _json_object(d, path, "an op object")
    optional = ["prob", "magnitude"] + (["weight"] if ptype in ("rand_augment", "trivial_augment") else [])
    _keys(d, path, ["op"], optional)
    magnitude = None
    if "magnitude" in d:
        mpath = f"{path}.magnitude"
        m = _json_object(d["magnitude"], mpath, "a magnitude object")
        _keys(m, mpath, [], ["value", "low", "high", "std", "random_sign"])
        for key in ("value", "low", "high", "std"):
            if key in m and m[key] is None:  # null is not "absent": the model reads None as absent
                raise fail(f"{mpath}.{key}", "expected a number, got null")
        spec = OPS.get(d["op"]) if isinstance(d["op"], str) else None  # an unknown op: the validator names it
        sign = m.get("random_sign", spec.signed if spec is not None else False)
        magnitude = Magnitude(m.get("value"), m.get("low"), m.get("high"), m.get("std"), random_sign=sign)
    return OpConfig(d["op"], d.get("prob", 1.0), magnitude, d.get("weight", 1.0))


def from_dict(doc: Any) -> Policy:
    """Build the :class:`Policy` of a parsed ``augpolicy/1.0`` document (validated by its constructor)."""
    _json_object(doc, "", "a JSON object at the top level")
    if "schema" not in doc:
        raise fail("schema", f"missing required field (expected \"{SCHEMA}\")")
    schema = doc["schema"]
    if schema == SCHEDULE_SCHEMA:
        raise fail("schema", f"this is a schedule (\"{SCHEDULE_SCHEMA}\"), not a single policy; "
                             "load it with load_policy_or_schedule or load_schedule")
    if schema != SCHEMA:
        raise fail("schema", f"unsupported schema version {schema!r} (this build reads \"{SCHEMA}\")")
    _keys(doc, "", ["schema", "policy"], ["name", "batch_ops", "defaults", "input_contract", "provenance"])
    body = _json_object(doc["policy"], "policy", "a policy object")
    ptype = body.get("type")
    check_policy_type(ptype)  # which fields the body holds depends on it
    kwargs: dict[str, Any] = {"type": ptype}
    if ptype == "subpolicy_choice":
        _keys(body, "policy", ["type", "subpolicies"], ["weights"])
        subs = _json_array(body["subpolicies"], "policy.subpolicies", "an array of sub-policies")
        kwargs["subpolicies"] = tuple(
            tuple(_op(o, f"policy.subpolicies[{i}][{j}]", ptype)
                  for j, o in enumerate(_json_array(sp, f"policy.subpolicies[{i}]", "an array of ops")))
            for i, sp in enumerate(subs)
        )
        if body.get("weights") is not None:
            kwargs["weights"] = tuple(_json_array(body["weights"], "policy.weights", "an array of numbers or null"))
    else:
        _keys(body, "policy", ["type", "ops"] + (["num_ops"] if ptype == "rand_augment" else []))
        ops = _json_array(body["ops"], "policy.ops", "an array of ops")
        kwargs["ops"] = tuple(_op(o, f"policy.ops[{j}]", ptype) for j, o in enumerate(ops))
        if ptype == "rand_augment":
            kwargs["num_ops"] = body["num_ops"]
    batch = []
    for i, b in enumerate(_json_array(doc.get("batch_ops", []), "batch_ops", "an array")):
        path = f"batch_ops[{i}]"
        _json_object(b, path, "a batch op object")
        _keys(b, path, ["op"], ["prob", "alpha"])
        batch.append(BatchOp(b["op"], b.get("prob", 1.0), b.get("alpha", 1.0)))
    defaults = _json_object(doc.get("defaults", {}), "defaults", "an object")
    _keys(defaults, "defaults", [], ["interpolation", "fill"])
    fill = defaults.get("fill", [0.0])
    contract = _json_object(doc.get("input_contract", INPUT_CONTRACT), "input_contract", "an object")
    _keys(contract, "input_contract", [], list(INPUT_CONTRACT))
    for key, value in contract.items():
        if key in INPUT_CONTRACT and value != INPUT_CONTRACT[key]:
            supported = INPUT_CONTRACT[key]
            raise fail(f"input_contract.{key}", f"{value!r} is not supported (this build takes {supported!r})")
    return Policy(
        **kwargs,
        batch_ops=tuple(batch),
        name=doc.get("name", ""),
        interpolation=defaults.get("interpolation", "bilinear"),
        fill=tuple(fill) if isinstance(fill, list) else (fill,),  # a number is short for [number]
        provenance=doc.get("provenance", {}),
        extras=_vendor(doc),
    )


def schedule_from_dict(doc: Any) -> Schedule:
    """Build the :class:`Schedule` of a parsed ``augschedule/1.0`` document (validated by its constructor)."""
    _json_object(doc, "", "a JSON object at the top level")
    if doc.get("schema") != SCHEDULE_SCHEMA:
        raise fail("schema", f"expected \"{SCHEDULE_SCHEMA}\", got {doc.get('schema')!r}")
    _keys(doc, "", ["schema", "segments"], ["name", "provenance"])
    segments = []
    for i, seg in enumerate(_json_array(doc["segments"], "segments", "an array of segments")):
        path = f"segments[{i}]"
        _json_object(seg, path, "a segment object")
        for k in ("start_epoch", "end_epoch", "policy"):
            if k not in seg:
                raise fail(f"{path}.{k}", "missing required field")
        for k in seg:
            if k not in ("start_epoch", "end_epoch", "policy"):
                raise fail(f"{path}.{k}", "unknown field (a segment holds start_epoch, end_epoch and policy)")
        try:
            policy = from_dict(seg["policy"])
        except PolicyError as e:
            raise PolicyError(f"{path}.policy: {e}") from None
        segments.append(Segment(seg["start_epoch"], seg["end_epoch"], policy))
    return Schedule(tuple(segments), name=doc.get("name", ""), provenance=doc.get("provenance", {}),
                    extras=_vendor(doc))


# ---------------------------------------------------------------------------------------------
# JSON text


def _reject_constant(name: str) -> None:
    raise PolicyError(f"invalid JSON number {name} (NaN and Infinity are not allowed)")


def _parse_json(text: str | bytes) -> Any:
    if len(text) > MAX_DOCUMENT_BYTES:
        raise PolicyError(f"document of {len(text):,} bytes; at most {MAX_DOCUMENT_BYTES:,} are allowed")
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_int=json_number, parse_float=json_number)
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
        raise fail("schema", f"unsupported schema version {doc['schema']!r} "
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


# ---------------------------------------------------------------------------------------------
# Files and presets


def _load(source: str | os.PathLike, parse: Callable[[bytes], Policy | Schedule]) -> Policy | Schedule:
    """A preset by name, or ``parse`` of a file's bytes; errors name the file."""
    path = Path(source)
    if path.suffix != ".json" and str(source) in PRESETS:
        return preset(str(source))
    if not path.is_file():
        raise PolicyError(f"{source}: no such policy file or preset (presets: {', '.join(PRESETS)})")
    try:
        with path.open("rb") as f:
            text = f.read(MAX_DOCUMENT_BYTES + 1)  # one byte past the limit is enough to refuse it
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
    """Write a policy or schedule as canonical JSON and return the path: atomically (the old file stays intact on
    failure; :class:`~search_spaces.files.FileWriteError`, one line naming the file)."""
    return atomic_write_text(path, dumps(policy))


def preset(name: str) -> Policy:
    """A shipped preset policy by name (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise PolicyError(f"unknown preset '{name}' (presets: {', '.join(PRESETS)})")
    return loads(resources.files("search_spaces").joinpath("presets", f"{name}.json").read_bytes())
