"""The objective interface (see :mod:`policy_search.objectives`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ray.tune.schedulers import TrialScheduler

from search_spaces import Policy, Schedule
from trainers.engine import EpochMetrics
from trainers.proxy import ProxyData, accuracy_se

Report = Callable[[dict[str, Any]], None]

__all__ = ["Objective", "Report", "epoch_metrics"]


class Objective(Protocol):
    """How one trial scores one policy; see the package docstring."""

    name: str
    max_t: int

    def prepare(self, data: ProxyData) -> Any: ...

    def run(self, policy: Policy | Schedule, shared: Any, report: Report) -> None: ...

    def scheduler(self) -> TrialScheduler | None: ...


def epoch_metrics(m: EpochMetrics, num_val: int) -> dict[str, Any]:
    """The metrics a training trial reports after an evaluated epoch."""
    return {"val_acc": m.val_acc, "val_se": accuracy_se(m.val_acc, num_val), "val_loss": m.val_loss,
            "train_loss": m.train_loss, "train_acc": m.train_acc, "epoch": m.epoch, "images_per_s": m.images_per_s}
