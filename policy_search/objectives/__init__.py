"""Objectives: how one trial scores one candidate policy. One module each, one small interface.

An objective is a picklable object built from the campaign config (:func:`make_objective`) with

* ``prepare(data) -> shared``: once per campaign, in the driver (data splits, a shared checkpoint, fold
  models); the result ships to every trial through Ray's object store;
* ``run(policy, shared, report)``: in a trial, score ``policy`` and call ``report(metrics)`` with at least
  ``val_acc`` (higher is better), ``val_se`` (its binomial standard error) and ``epoch``;
* ``scheduler()``: the Ray Tune trial scheduler that may stop trials early (or None);
* ``max_t``: the ``epoch`` value of a trial that ran to the end (earlier ones were stopped).

========== ======================================================= ===============================
objective  what a trial does                                      cost per trial
========== ======================================================= ===============================
finetune   continue one shared checkpoint (trained with crop+flip  (1 - fraction) of the target
           for ``finetune.fraction`` of the target) to the end of
           the target schedule with the candidate (AWS-style)
full       the target recipe end to end; ASHA stops trials only     one target training
           after a late grace period
proxy      a short, small proxy from scratch (ASHA per epoch)      ``proxy.epochs`` small epochs
density    Fast AutoAugment's density matching on fold models      seconds
========== ======================================================= ===============================

``val_folds: K`` (K > 1) wraps any of them but density in :class:`FoldedObjective`: K-fold validation over
the pooled training and validation images, for sources too small for a large validation split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Objective, Report
from .density import DensityObjective
from .finetune import FinetuneObjective
from .folds import FoldedObjective, make_folds
from .full import FullObjective
from .proxy import ProxyObjective

if TYPE_CHECKING:
    from ..config import CampaignConfig

__all__ = ["Objective", "Report", "make_objective", "OBJECTIVES", "ProxyObjective", "DensityObjective",
           "FinetuneObjective", "FullObjective", "FoldedObjective", "make_folds"]

OBJECTIVES = {"finetune": FinetuneObjective, "full": FullObjective, "proxy": ProxyObjective,
              "density": DensityObjective}


def make_objective(config: CampaignConfig, name: str | None = None) -> Objective:
    """The objective ``name`` (default: ``config.objective``) with its budget taken from ``config``; with
    ``val_folds > 1`` scored on every fold (:class:`FoldedObjective`)."""
    objective = OBJECTIVES[name or config.objective].from_config(config)
    if config.val_folds > 1 and objective.name != "density":
        return FoldedObjective(objective, config.val_folds, config.seed)
    return objective
