"""Where a campaign's trials are logged besides its own folder, through Ray Tune's logger callbacks.

* TensorBoard: always; Ray Tune writes event files into every trial folder (``tensorboard --logdir
  results/<campaign>/tune``), nothing to configure.
* ``tracking: [mlflow]``: MLflow runs in a local SQLite store, ``results/<campaign>/mlflow.db`` (``mlflow ui
  --backend-store-uri sqlite:///results/<campaign>/mlflow.db``), one run per trial with its params and metrics.
* ``tracking: [wandb]``: Weights & Biases in offline mode (``wandb sync`` uploads later), under the folder.

The libraries are optional (``pip install 'policy-search[tracking]'`` for MLflow; ``pip install wandb``); a
missing one is a one-line error before any trial starts.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from .config import CampaignConfig, ConfigError

__all__ = ["tracking_callbacks", "mlflow_uri", "TRACKERS"]

TRACKERS = {"mlflow": "mlflow", "wandb": "wandb"}  # tracking name -> module it needs


def mlflow_uri(config: CampaignConfig) -> str:
    """The campaign's MLflow store: SQLite in the folder (MLflow's file store is in maintenance mode)."""
    return f"sqlite:///{config.folder / 'mlflow.db'}"


def tracking_callbacks(config: CampaignConfig, group: str = "search") -> list[Any]:
    """Ray Tune logger callbacks for ``config.tracking`` (``group`` names the experiment part: search, race)."""
    callbacks: list[Any] = []
    for name in config.tracking:
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ConfigError(f"tracking: {name} needs the {TRACKERS[name]} package "
                              f"(pip install {'mlflow-skinny' if name == 'mlflow' else 'wandb'})")
        if name == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            config.folder.mkdir(parents=True, exist_ok=True)
            callbacks.append(MLflowLoggerCallback(tracking_uri=mlflow_uri(config),
                                                  experiment_name=f"{config.name}-{group}", save_artifact=False))
        else:
            from ray.air.integrations.wandb import WandbLoggerCallback

            callbacks.append(WandbLoggerCallback(project=config.name, group=group, mode="offline",
                                                 dir=str(config.folder)))
    return callbacks
