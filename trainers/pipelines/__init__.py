"""Full pipelines that replay an exported policy: transfer learning, knowledge distillation, self-training.

All share :mod:`trainers.pipelines.common` (config base, run folder, resumable stages), the data preparation
:func:`trainers.data.prepare_data` and the one training loop :func:`trainers.engine.fit`.
"""

from ..data import prepare_data
from .common import (
    PIPELINES,
    PipelineConfig,
    PipelineError,
    Run,
    StageEvent,
    load_policy_arg,
    make_config,
    pipeline,
)

__all__ = [
    "PIPELINES", "PipelineConfig", "PipelineError", "Run", "StageEvent", "load_policy_arg", "make_config", "pipeline",
    "prepare_data",
]
