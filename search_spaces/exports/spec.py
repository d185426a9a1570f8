"""A policy as plain Python data: the literal that the self-contained export files embed.

:func:`plain_spec` flattens a :class:`~search_spaces.policy.Policy` into dicts, lists, strings and numbers
(every value the runtimes need: distribution, random sign, identity, bounds, rounding), so an exported
file holds the policy as a literal and imports nothing of this package.
"""

from __future__ import annotations

from typing import Any

from ..ops import OPS
from ..policy import OpConfig, Policy

__all__ = ["ExportError", "plain_spec", "plain_op"]


class ExportError(ValueError):
    """The policy cannot be expressed in the requested target (one line, naming the op or feature)."""


def plain_op(o: OpConfig) -> dict[str, Any]:
    """One op instance as plain data."""
    spec = OPS[o.op]
    out: dict[str, Any] = {"op": o.op, "prob": float(o.prob), "weight": float(o.weight), "magnitude": None}
    m = o.magnitude
    if m is not None:
        out["magnitude"] = {
            "dist": m.dist, "value": m.value, "low": m.low, "high": m.high, "std": m.std,
            "random_sign": bool(m.random_sign), "identity": float(spec.identity),
            "bounds": [float(spec.bounds[0]), float(spec.bounds[1])], "integer": bool(spec.integer),
        }
    return out


def plain_spec(policy: Policy) -> dict[str, Any]:
    """The policy (without batch ops) as a plain literal: type, stages, ops, interpolation and fill."""
    spec: dict[str, Any] = {"name": policy.name, "type": policy.type, "interpolation": policy.interpolation,
                            "fill": [float(f) for f in policy.fill]}
    if policy.type == "subpolicy_choice":
        spec["weights"] = list(policy.weights) if policy.weights is not None else None
        spec["subpolicies"] = [[plain_op(o) for o in sp] for sp in policy.subpolicies]
    else:
        spec["num_ops"] = {"sequential": len(policy.ops), "trivial_augment": 1}.get(policy.type, policy.num_ops)
        spec["ops"] = [plain_op(o) for o in policy.ops]
    spec["batch_ops"] = [{"op": b.op, "prob": float(b.prob), "alpha": float(b.alpha)} for b in policy.batch_ops]
    return spec
