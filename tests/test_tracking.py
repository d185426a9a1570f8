"""Tracking: TensorBoard event files in every trial folder, MLflow runs in the campaign's local file store, and
a one-line error for a tracker whose library is missing."""

from __future__ import annotations

import importlib.util

import pytest

from policy_search.campaign import run_campaign
from policy_search.config import ConfigError, load_config
from policy_search.tracking import TRACKERS, mlflow_uri, tracking_callbacks

TINY = {"train_size": 300, "val_size": 150, "objective": "proxy", "space": "randaugment", "proxy.epochs": 2,
        "proxy.width": 8, "num_trials": 2, "max_concurrent": 2, "num_cpus": 2, "race.enabled": False}


@pytest.mark.slow
def test_campaign_logs_to_tensorboard_and_mlflow(tmp_path, ray_local):
    pytest.importorskip("mlflow")
    import mlflow

    cfg = load_config(overrides={**TINY, "name": "tracked", "output": str(tmp_path), "tracking": ["mlflow"]})
    result = run_campaign(cfg)
    trial_dirs = [p for p in (result.folder / "tune").iterdir() if p.is_dir()]
    assert len(trial_dirs) == 2
    for d in trial_dirs:  # TensorBoard: always on
        assert list(d.glob("events.out.tfevents.*")), d
    client = mlflow.tracking.MlflowClient(tracking_uri=mlflow_uri(cfg))
    experiment = client.get_experiment_by_name("tracked-search")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    assert all("val_acc" in r.data.metrics and "num_ops" in r.data.params for r in runs)


def test_a_missing_tracker_is_a_one_line_error(tmp_path, monkeypatch):
    cfg = load_config(overrides={"name": "t", "output": str(tmp_path), "tracking": ["wandb"]})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == TRACKERS["wandb"]
                        else real(name, *a))
    with pytest.raises(ConfigError, match=r"^tracking: wandb needs the wandb package \(pip install wandb\)$"):
        tracking_callbacks(cfg)
    with pytest.raises(ConfigError, match="tracking.0: must be one of"):
        load_config(overrides={"tracking": ["neptune"]})
