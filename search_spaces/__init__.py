"""search_spaces: the op registry, the policy format, the per-sample batched augmenter and search spaces.

This package imports no other package of policy-search.
"""

from .augment import Augmenter, Plan, ScheduledAugmenter, make_augmenter
from .ops import BATCH_OPS, OPS, OpSpec
from .policy import (
    PRESETS,
    SCHEDULE_SCHEMA,
    SCHEMA,
    BatchOp,
    Magnitude,
    OpConfig,
    Policy,
    PolicyError,
    Schedule,
    Segment,
    dumps,
    load_policy,
    load_policy_or_schedule,
    load_schedule,
    loads,
    loads_any,
    preset,
    save_policy,
)

__all__ = [
    "Augmenter", "Plan", "ScheduledAugmenter", "make_augmenter", "OPS", "BATCH_OPS", "OpSpec", "PRESETS", "SCHEMA",
    "SCHEDULE_SCHEMA", "BatchOp", "Magnitude", "OpConfig", "Policy", "PolicyError", "Schedule", "Segment", "dumps",
    "load_policy", "load_policy_or_schedule", "load_schedule", "loads", "loads_any", "preset", "save_policy",
]
