"""search_spaces: the op registry, the policy format, the per-sample batched augmenter and search spaces.

This package imports no other package of policy-search.
"""

from .augment import Augmenter, Plan
from .ops import BATCH_OPS, OPS, OpSpec
from .policy import (
    PRESETS,
    SCHEMA,
    BatchOp,
    Magnitude,
    OpConfig,
    Policy,
    PolicyError,
    dumps,
    load_policy,
    loads,
    preset,
    save_policy,
)

__all__ = [
    "Augmenter", "Plan", "OPS", "BATCH_OPS", "OpSpec", "PRESETS", "SCHEMA", "BatchOp", "Magnitude",
    "OpConfig", "Policy", "PolicyError", "dumps", "load_policy", "loads", "preset", "save_policy",
]
