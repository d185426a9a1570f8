"""Full pipelines that replay an exported policy: transfer learning, knowledge distillation, self-training.

All share :mod:`trainers.pipelines.common` (run folder, resumable stages) and the one training loop
:func:`trainers.engine.fit`.
"""

from .common import PIPELINES, PipelineError, Run, StageEvent, load_policy_arg, make_config, pipeline, prepare_data

__all__ = [
    "PIPELINES", "PipelineError", "Run", "StageEvent", "load_policy_arg", "make_config", "pipeline", "prepare_data",
]
