"""``objective: proxy``: a short, small proxy trained from scratch; ASHA stops the weakest after each epoch.

Cheap, but short trainings favour weak augmentation (the best magnitude grows with training length and
model size; see docs/design.md): its measured rank agreement with the target is in docs/results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from search_spaces import Policy, Schedule
from trainers.proxy import ProxyConfig, ProxyData, train_proxy

from ..session import proxy_config
from .base import Report, epoch_metrics

if TYPE_CHECKING:
    from ..config import CampaignConfig


@dataclass(frozen=True)
class ProxyObjective:
    proxy: ProxyConfig
    name: str = "proxy"

    @classmethod
    def from_config(cls, config: CampaignConfig) -> ProxyObjective:
        return cls(proxy_config(config))

    @property
    def max_t(self) -> int:
        return self.proxy.epochs

    def prepare(self, data: ProxyData) -> ProxyData:
        return data

    def run(self, policy: Policy | Schedule, shared: ProxyData, report: Report) -> None:
        train_proxy(policy, shared, self.proxy, on_epoch=lambda m: report(epoch_metrics(m, len(shared.val_y))))

    def scheduler(self) -> TrialScheduler | None:
        return ASHAScheduler(time_attr="training_iteration", max_t=self.max_t, grace_period=1, reduction_factor=2)

    def describe(self) -> dict[str, Any]:
        return {"objective": self.name, "epochs": self.proxy.epochs, "width": self.proxy.width}
