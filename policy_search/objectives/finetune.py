"""``objective: finetune``: late-phase scoring (after Augmentation-wise Weight Sharing, arXiv 2009.14737).

``prepare`` trains one shared model with the base augmentation (crop+flip) through the first
``finetune.fraction`` of the target schedule and keeps that checkpoint (model and optimizer; the learning
rate is a function of the global step, so the schedule continues exactly). Each trial continues it to the end
of the target schedule, learning-rate decay included, with its candidate policy after crop+flip, and reports
validation accuracy once. Every trial shares initial weights, data order and augmentation seeds (common
random numbers), so trials differ only by their policy. A trial costs ``1 - fraction`` of a target training.

The base augmentation stays on in every candidate: switching all augmentation off for the last epochs scores
*above* crop+flip late-phase while it is the worst policy for a whole training (measured, see
``../shared/reference/search-that-wins.md``); the config refuses ``finetune`` with ``target.base_augment: false``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import TrialScheduler

from search_spaces import Policy, Schedule
from trainers.proxy import ProxyConfig, ProxyData, shared_checkpoint, train_proxy

from ..session import target_config
from .base import Report, epoch_metrics

if TYPE_CHECKING:
    from ..config import CampaignConfig


@dataclass(frozen=True)
class FinetuneObjective:
    target: ProxyConfig
    shared_epochs: int
    name: str = "finetune"

    @classmethod
    def from_config(cls, config: CampaignConfig) -> FinetuneObjective:
        return cls(target_config(config), config.finetune_epochs())

    @property
    def max_t(self) -> int:
        return self.target.epochs

    def prepare(self, data: ProxyData) -> dict[str, Any]:
        return {"data": data, "state": shared_checkpoint(data, self.target, self.shared_epochs)}

    def run(self, policy: Policy | Schedule, shared: dict[str, Any], report: Report) -> None:
        data = shared["data"]
        train_proxy(policy, data, self.target, resume=shared["state"],
                    on_epoch=lambda m: report(epoch_metrics(m, len(data.val_y))) if m.val_acc is not None else None)

    def scheduler(self) -> TrialScheduler | None:
        return None  # one report per trial

    def describe(self) -> dict[str, Any]:
        return {"objective": self.name, "shared_epochs": self.shared_epochs, "epochs": self.target.epochs}
