"""Optuna define-by-run search spaces over augmentation policies, and the way back to a :class:`Policy`.

Each space is a module-level function ``space(trial, **options)`` that only *suggests* parameters (so it can
be pickled into an ``OptunaSearch`` checkpoint, directly or through ``functools.partial``); the flat
``params`` dict that Optuna and Ray Tune hold is turned into a policy by :func:`policy_from_params` with the
same options. Parameter names never contain ``/`` (Tune would nest them).

* ``randaugment``: ``num_ops`` in 1..max_n and ``magnitude`` bin in 0..num_bins-1 (RandAugment(N, M)).
* ``randaugment_plus`` (the default): RandAugment over its full magnitude range (bins 0..30 reach the
  AutoAugment maxima; torchvision's ``RandAugment(2, 9)`` sits at bin 9) with a selection weight per op
  (``w_<op>`` in {0, 0.25, ..., 1}: which ops to keep at this scale), optionally a magnitude ramp over training
  (``ramp``: linear from 0 to M, returned as an ``augschedule/1.0`` schedule, as PBA's learned schedules and
  EfficientTrain do) and optionally CutMix with probability ``cutmix_p`` in {0, 0.1, ..., 0.5}.
* ``autoaugment``: ``num_subpolicies`` x ``ops_per_subpolicy`` slots; slot ``s{i}_{j}`` has an op
  (categorical), a probability in {0, 0.1, ..., 1} and, for ops with a magnitude, a level bin in 0..10.
* ``custom``: the user lists ops with a level range ``(low, high)`` in [0, 1]; each op gets a probability
  in {0, 0.1, ..., 1} and (ops with a magnitude) a level in its range; the policy applies them in order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import optuna

from .magnitudes import AUTOAUGMENT_OPS, RAND_AUGMENT_OPS, op_at_level, rand_augment
from .ops import OPS
from .policy import BatchOp, OpConfig, Policy, PolicyError, Schedule, Segment, preset

__all__ = ["randaugment", "randaugment_plus", "autoaugment", "custom", "policy_from_params", "baseline_params",
           "grid_space", "check_ops", "SPACES_BY_NAME", "AUTOAUGMENT_OPS", "LEVEL_BINS"]

LEVEL_BINS = 10  # autoaugment levels are bins 0..LEVEL_BINS (level = bin / LEVEL_BINS)
TORCHVISION_RENDERING = {"interpolation": "nearest"}  # how torchvision renders AutoAugment/RandAugment ops


def check_ops(ops: Sequence[str], where: str) -> tuple[str, ...]:
    """``ops`` as a tuple of registry names, or a one-line :class:`PolicyError` naming ``where``."""
    ops = tuple(ops)
    if not ops:
        raise PolicyError(f"{where}: needs at least one op")
    for op in ops:
        if op not in OPS:
            raise PolicyError(f"{where}: unknown op '{op}' (known: {', '.join(OPS)})")
    return ops


# ---------------------------------------------------------------------------------------------
# Spaces


def randaugment(trial: optuna.Trial, ops: Sequence[str] = RAND_AUGMENT_OPS, max_n: int = 3,
                num_bins: int = 31) -> None:
    """RandAugment(N, M): ``num_ops`` in 1..max_n, ``magnitude`` in 0..num_bins-1."""
    trial.suggest_int("num_ops", 1, max_n)
    trial.suggest_int("magnitude", 0, num_bins - 1)


RAMP_STEPS = 10  # segments of a ramped schedule (stretched to the run's epochs)
WEIGHT_STEP = 0.25


def randaugment_plus(trial: optuna.Trial, ops: Sequence[str] = RAND_AUGMENT_OPS, max_n: int = 3, num_bins: int = 31,
                     weights: bool = True, ramp: bool = True, mix: bool = False) -> None:
    """RandAugment(N, M) over the full range, with per-op weights, an optional ramp and optional CutMix."""
    trial.suggest_int("num_ops", 1, max_n)
    trial.suggest_int("magnitude", 0, num_bins - 1)
    if weights:
        for op in ops:
            trial.suggest_float(f"w_{op}", 0.0, 1.0, step=WEIGHT_STEP)
    if ramp:
        trial.suggest_categorical("ramp", [False, True])
    if mix:
        trial.suggest_float("cutmix_p", 0.0, 0.5, step=0.1)


def autoaugment(trial: optuna.Trial, num_subpolicies: int = 5, ops_per_subpolicy: int = 2,
                ops: Sequence[str] = AUTOAUGMENT_OPS) -> None:
    """AutoAugment-style sub-policies: per slot an op, a probability (step 0.1) and a level bin (0..10)."""
    ops = tuple(ops)
    for i in range(num_subpolicies):
        for j in range(ops_per_subpolicy):
            op = trial.suggest_categorical(f"s{i}_{j}_op", ops)
            trial.suggest_float(f"s{i}_{j}_p", 0.0, 1.0, step=0.1)
            if OPS[op].has_magnitude:
                trial.suggest_int(f"s{i}_{j}_m", 0, LEVEL_BINS)


def custom(trial: optuna.Trial, ops: Mapping[str, Sequence[float]]) -> None:
    """User-listed ops applied in order: ``{op}_p`` (step 0.1) and ``{op}_level`` in the op's (low, high)."""
    for op, (low, high) in ops.items():
        trial.suggest_float(f"{op}_p", 0.0, 1.0, step=0.1)
        if OPS[op].has_magnitude:
            if low == high:
                continue  # fixed level: nothing to search
            trial.suggest_float(f"{op}_level", float(low), float(high))


SPACES_BY_NAME: dict[str, Callable[..., None]] = {
    "randaugment": randaugment, "randaugment_plus": randaugment_plus, "autoaugment": autoaugment, "custom": custom,
}


# ---------------------------------------------------------------------------------------------
# Params -> Policy


def _param(params: Mapping[str, Any], key: str) -> Any:
    if key not in params:
        raise PolicyError(f"params.{key}: missing")
    return params[key]


def _randaugment_plus(params: Mapping[str, Any], ops: Sequence[str] = RAND_AUGMENT_OPS, max_n: int = 3,
                      num_bins: int = 31, weights: bool = True, ramp: bool = True, mix: bool = False
                      ) -> Policy | Schedule:
    ops = check_ops(ops, "space_options.ops")
    n, m = int(_param(params, "num_ops")), int(_param(params, "magnitude"))
    if not 0 <= m < num_bins:
        raise PolicyError(f"params.magnitude: must be in [0, {num_bins - 1}], got {m}")
    w = [round(float(_param(params, f"w_{op}")), 10) if weights else 1.0 for op in ops]
    if not any(w):
        w = [1.0] * len(ops)  # every op dropped: TPE may propose it; read as "no preference"
    cutmix = round(float(params.get("cutmix_p", 0.0)), 10) if mix else 0.0
    batch_ops = (BatchOp("cutmix", cutmix, 1.0),) if cutmix > 0 else ()
    name = f"randaugment-plus-n{n}-m{m}"

    def at(bin_index: int) -> Policy:
        base = rand_augment(n, bin_index, ops=ops, num_bins=num_bins, **TORCHVISION_RENDERING)
        kept = tuple(replace(o, weight=wi) for o, wi in zip(base.ops, w, strict=True) if wi > 0)
        return replace(base, ops=kept, batch_ops=batch_ops, name=name)

    if not (ramp and bool(params.get("ramp", False))):
        return at(m)
    segments = [Segment(i, i + 1, at(round(m * i / (RAMP_STEPS - 1)))) for i in range(RAMP_STEPS)]
    return Schedule(tuple(segments), name=f"{name}-ramp")


def policy_from_params(space: str, params: Mapping[str, Any], **space_options: Any) -> Policy | Schedule:
    """Rebuild the policy that ``params`` (a flat Optuna/Tune dict) encodes in ``space``.

    Extra keys in ``params`` are ignored, so a Tune config with constants works as well. Raises
    :class:`PolicyError` (one line, naming the key) when a key is missing or a value is invalid.
    """
    if space == "randaugment":
        ops = check_ops(space_options.get("ops", RAND_AUGMENT_OPS), "space_options.ops")
        num_bins = int(space_options.get("num_bins", 31))
        n, m = int(_param(params, "num_ops")), int(_param(params, "magnitude"))
        if not 0 <= m < num_bins:
            raise PolicyError(f"params.magnitude: must be in [0, {num_bins - 1}], got {m}")
        return rand_augment(n, m, ops=ops, num_bins=num_bins, **TORCHVISION_RENDERING)
    if space == "randaugment_plus":
        return _randaugment_plus(params, **space_options)
    if space == "autoaugment":
        ops = check_ops(space_options.get("ops", AUTOAUGMENT_OPS), "space_options.ops")
        subs = []
        for i in range(int(space_options.get("num_subpolicies", 5))):
            sub = []
            for j in range(int(space_options.get("ops_per_subpolicy", 2))):
                op = str(_param(params, f"s{i}_{j}_op"))
                if op not in ops:
                    raise PolicyError(f"params.s{i}_{j}_op: '{op}' is not in the space's ops")
                prob = round(float(_param(params, f"s{i}_{j}_p")), 10)  # step 0.1: 0.30000000000000004 -> 0.3
                level = int(_param(params, f"s{i}_{j}_m")) / LEVEL_BINS if OPS[op].has_magnitude else 0.0
                sub.append(op_at_level(op, level, prob))
            subs.append(tuple(sub))
        return Policy("subpolicy_choice", subpolicies=tuple(subs), name="autoaugment-search", **TORCHVISION_RENDERING)
    if space == "custom":
        spec = space_options.get("ops")
        if not spec:
            raise PolicyError("space_options.ops: the custom space needs {op: [low, high]} entries")
        check_ops(list(spec), "space_options.ops")
        out: list[OpConfig] = []
        for op, (low, _high) in spec.items():
            prob = round(float(_param(params, f"{op}_p")), 10)
            if OPS[op].has_magnitude:
                level = float(params[f"{op}_level"]) if f"{op}_level" in params else float(low)
                out.append(op_at_level(op, level, prob))
            else:
                out.append(OpConfig(op, prob))
        return Policy("sequential", ops=tuple(out), name="custom-search")
    raise PolicyError(f"space: unknown space '{space}' (known: {', '.join(SPACES_BY_NAME)})")


# ---------------------------------------------------------------------------------------------
# Baselines and grids


def baseline_params(space: str, preset_name: str, **space_options: Any) -> dict[str, Any]:
    """The params that make ``space`` reproduce preset ``preset_name``, for ``points_to_evaluate``.

    Representable: ``randaugment`` in the randaugment space (the preset's N and M, when the space's ops are
    torchvision's); ``none`` in every space (all probabilities 0, or the identity op alone for
    randaugment). Anything else raises :class:`PolicyError` naming the preset.
    """
    preset(preset_name)  # unknown preset -> PolicyError
    if space == "randaugment":
        ops = tuple(space_options.get("ops", RAND_AUGMENT_OPS))
        if preset_name == "randaugment" and ops == RAND_AUGMENT_OPS and space_options.get("num_bins", 31) == 31:
            ref = preset("randaugment")
            return {"num_ops": ref.num_ops, "magnitude": 9}
    elif space == "randaugment_plus":
        ops = tuple(space_options.get("ops", RAND_AUGMENT_OPS))
        if preset_name == "randaugment" and ops == RAND_AUGMENT_OPS and space_options.get("num_bins", 31) == 31:
            params = {"num_ops": preset("randaugment").num_ops, "magnitude": 9}
            if space_options.get("weights", True):
                params.update({f"w_{op}": 1.0 for op in ops})
            if space_options.get("ramp", True):
                params["ramp"] = False
            if space_options.get("mix", False):
                params["cutmix_p"] = 0.0
            return params
    elif preset_name == "none" and space == "autoaugment":
        ops = tuple(space_options.get("ops", AUTOAUGMENT_OPS))
        n, k = int(space_options.get("num_subpolicies", 5)), int(space_options.get("ops_per_subpolicy", 2))
        params: dict[str, Any] = {}
        for i in range(n):
            for j in range(k):
                params[f"s{i}_{j}_op"] = ops[0]
                params[f"s{i}_{j}_p"] = 0.0
                if OPS[ops[0]].has_magnitude:
                    params[f"s{i}_{j}_m"] = 0
        return params
    elif preset_name == "none" and space == "custom":
        params = {}
        for op, (low, high) in dict(space_options.get("ops") or {}).items():
            params[f"{op}_p"] = 0.0
            if OPS[op].has_magnitude and low != high:
                params[f"{op}_level"] = float(low)
        return params
    raise PolicyError(f"baselines: preset '{preset_name}' cannot be expressed in the {space} space")


def grid_space(space: str, **space_options: Any) -> dict[str, list[Any]]:
    """The full grid for ``optuna.samplers.GridSampler`` (randaugment only: every (N, M))."""
    if space != "randaugment":
        raise PolicyError(f"sampler: grid search is only available for the randaugment space, not {space}")
    max_n, num_bins = int(space_options.get("max_n", 3)), int(space_options.get("num_bins", 31))
    return {"num_ops": list(range(1, max_n + 1)), "magnitude": list(range(num_bins))}
