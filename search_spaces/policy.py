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

Limits (a document from an untrusted source cannot make loading or augmenting unboundedly expensive; each
is a one-line :class:`PolicyError`): a document is at most 16 MiB; every number is finite with magnitude
below 2**63 (``1e999`` and a 5,000-digit integer are refused); at most 64 sub-policies of at most 16 ops
each, at most 128 ops in ``ops``, ``num_ops`` at most 16, at most 8 batch ops, weights at most 1,000,000;
a schedule has at most 4,096 segments; ``provenance`` and ``x-`` fields nest at most 32 levels and hold at
most 100,000 values. The constants live in :mod:`search_spaces.policy_validation`.

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

# The format lives in three modules: the data model (frozen dataclasses), the one validator every
# constructor runs, and reading/writing (JSON, files, presets). This module is their public face.
from .errors import PolicyError, one_line
from .policy_io import (
    PRESETS,
    dumps,
    from_dict,
    load_policy,
    load_policy_or_schedule,
    load_schedule,
    loads,
    loads_any,
    preset,
    save_policy,
    schedule_from_dict,
)
from .policy_model import (
    INPUT_CONTRACT,
    SCHEDULE_SCHEMA,
    SCHEMA,
    BatchOp,
    Magnitude,
    OpConfig,
    Policy,
    PolicyType,
    Schedule,
    Segment,
)
from .policy_validation import INTERPOLATIONS, POLICY_TYPES

__all__ = [
    "SCHEMA", "SCHEDULE_SCHEMA", "PolicyError", "Magnitude", "OpConfig", "BatchOp", "Policy", "Segment", "Schedule",
    "load_policy", "load_schedule", "load_policy_or_schedule", "loads", "loads_any", "dumps", "save_policy",
    "preset", "PRESETS", "from_dict", "schedule_from_dict", "one_line", "INPUT_CONTRACT", "POLICY_TYPES",
    "INTERPOLATIONS", "PolicyType",
]
