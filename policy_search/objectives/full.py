"""``objective: full``: the target recipe end to end, per trial.

The most faithful and the most expensive objective. Validation runs at five points of training; ASHA may
stop a trial only after a grace period of ``GRACE`` of the schedule (short-epoch ranks favour weak policies,
so an early cut would stop exactly the strong-augmentation trials that win at the end).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from search_spaces import Policy, Schedule
from trainers.proxy import ProxyConfig, ProxyData, train_proxy

from ..session import target_config
from .base import Report, epoch_metrics

if TYPE_CHECKING:
    from ..config import CampaignConfig

GRACE = 0.6  # ASHA's first rung: 60% of the target's epochs
REPORTS = 5  # validation points per trial


@dataclass(frozen=True)
class FullObjective:
    target: ProxyConfig
    name: str = "full"

    @classmethod
    def from_config(cls, config: CampaignConfig) -> FullObjective:
        return cls(target_config(config))

    @property
    def max_t(self) -> int:
        return self.target.epochs

    @property
    def eval_every(self) -> int:
        return max(1, self.target.epochs // REPORTS)

    def prepare(self, data: ProxyData) -> ProxyData:
        return data

    def run(self, policy: Policy | Schedule, shared: ProxyData, report: Report) -> None:
        cfg = self.target.model_copy(update={"eval_every": self.eval_every})
        train_proxy(policy, shared, cfg,
                    on_epoch=lambda m: report(epoch_metrics(m, len(shared.val_y))) if m.val_acc is not None else None)

    @property
    def grace_period(self) -> int:
        """The first epoch at which ASHA may stop a trial: the first validation point at or after ``GRACE``."""
        return self.eval_every * math.ceil(GRACE * self.max_t / self.eval_every)

    def scheduler(self) -> TrialScheduler | None:
        if self.grace_period >= self.max_t:
            return None
        return ASHAScheduler(time_attr="epoch", max_t=self.max_t, grace_period=self.grace_period, reduction_factor=2)

    def describe(self) -> dict[str, Any]:
        return {"objective": self.name, "epochs": self.target.epochs, "width": self.target.width}
