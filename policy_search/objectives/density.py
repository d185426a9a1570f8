"""``objective: density``: Fast AutoAugment's density matching (seconds per trial).

``k`` fold models train once (proxy budget, base augmentation only); a policy's score is their accuracy on
their held-out folds augmented by it. It rewards "in distribution" views, which is not what helps training
most: its measured rank agreement with the target is in docs/results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import TrialScheduler

from search_spaces import Policy, Schedule
from trainers.proxy import DensityMatcher, ProxyConfig, ProxyData, accuracy_se

from ..session import proxy_config
from .base import Report

if TYPE_CHECKING:
    from ..config import CampaignConfig


@dataclass(frozen=True)
class DensityObjective:
    proxy: ProxyConfig
    k: int
    seed: int
    name: str = "density"
    max_t: int = 1

    @classmethod
    def from_config(cls, config: CampaignConfig) -> DensityObjective:
        return cls(proxy_config(config), config.density_k, config.seed)

    def prepare(self, data: ProxyData) -> DensityMatcher:
        return DensityMatcher.fit(data, self.proxy, k=self.k)

    def run(self, policy: Policy | Schedule, shared: DensityMatcher, report: Report) -> None:
        if isinstance(policy, Schedule):  # a schedule is scored by the policy it ends with
            policy = policy.segments[-1].policy
        score = shared.score(policy, seed=self.seed)
        n = sum(len(f["y"]) for f in shared.folds)
        report({"val_acc": score, "val_se": accuracy_se(score, n), "epoch": 1})

    def scheduler(self) -> TrialScheduler | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"objective": self.name, "folds": self.k, "epochs": self.proxy.epochs}
