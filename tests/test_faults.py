"""Faulty trials inside a real campaign: one raises, one runs out of memory, one diverges to NaN.

The Tuner, CampaignSearch, ASHA, SQLite study, ``write_results`` and ``policy-search status`` are the real
ones; only the trainable is a test wrapper around the real one that hands out one fault to each of the first
three trials to start (a file-based ticket, so it works across Ray workers):

* raises: a malformed policy file reaches ``load_policy`` inside ``train_proxy`` (PolicyError);
* out of memory: ``torch.OutOfMemoryError`` (what CUDA raises) from inside the training loop, after the
  first epoch was reported to Tune;
* NaN: an absurd learning rate makes the real training loop raise ``TrainingDiverged``.

The all-trials-diverge case (no best policy at all) is in ``tests/test_campaign.py``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from conftest import take_ticket  # tests/ is on sys.path under pytest
from optuna.trial import TrialState
from ray import cloudpickle, tune
from typer.testing import CliRunner

from policy_search.campaign import TrialJob, load_study, make_tuner, prepare_data, ray_session, run_trial
from policy_search.cli import app
from policy_search.config import load_config
from policy_search.objectives import ProxyObjective
from policy_search.results import trials_table, write_results
from policy_search.session import proxy_config, save_config
from trainers.proxy import train_proxy

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/



def faulty_trial(config: dict[str, Any], *, job: TrialJob, payload: Any, tickets: str) -> None:
    """The first three trials fail (raise, out of memory, NaN); the others are the campaign's real trial."""
    ticket = take_ticket(Path(tickets))
    proxy = job.objective.proxy
    if ticket == 0:
        broken = Path(tickets) / "broken-policy.json"
        broken.write_text('{"schema": "augpolicy/1.0", "policy": {"type": "sequential", "ops": 7}}')
        train_proxy(str(broken), payload, proxy)
    elif ticket == 1:
        def on_epoch(m: Any) -> None:
            tune.report({"val_acc": m.val_acc, "epoch": m.epoch})
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        train_proxy(None, payload, proxy, on_epoch=on_epoch)
    elif ticket == 2:
        diverging = ProxyObjective(proxy.model_copy(update={"lr": 1e30}))
        run_trial(config, job=dataclasses.replace(job, objective=diverging), payload=payload)
    else:
        run_trial(config, job=job, payload=payload)


@pytest.mark.slow
def test_raise_oom_and_nan_are_recorded_and_the_campaign_completes(tmp_path, ray_local):
    cfg = load_config(overrides={"name": "faults", "output": str(tmp_path / "out"), "num_trials": 6,
                                 "max_concurrent": 2, "num_cpus": 2, "train_size": 400, "val_size": 200,
                                 "proxy.epochs": 2, "proxy.width": 8, "objective": "proxy",
                                 "space": "randaugment", "race.enabled": False})
    (tmp_path / "tickets").mkdir()
    cfg.folder.mkdir(parents=True)
    save_config(cfg)
    t0 = time.monotonic()
    data, _, proxy_data = prepare_data(cfg)  # from here on, what run_campaign does, with the wrapped trainable
    job = TrialJob(cfg.space, dict(cfg.space_options), ProxyObjective(proxy_config(cfg)))
    trainable = tune.with_resources(
        tune.with_parameters(faulty_trial, job=job, payload=proxy_data, tickets=str(tmp_path / "tickets")),
        {"cpu": 1})
    with ray_session(cfg):
        grid = make_tuner(cfg, trainable).fit()
    result = write_results(cfg, trials_table(cfg, grid, load_study(cfg)), data, wall_s=time.monotonic() - t0)

    df = pd.read_csv(result.folder / "trials.csv")
    assert len(df) == 6 and df["trial_id"].is_unique  # the requested number of trials ran
    failed = df[df["status"] == "FAILED"]
    reasons = sorted(e.split(":")[0] for e in failed["error"])
    assert reasons == ["OutOfMemoryError", "PolicyError", "TrainingDiverged"], failed["error"].tolist()
    assert failed["error"].str.contains("out of memory|policy.ops|loss", regex=True).all(), failed["error"].tolist()
    oom = failed[failed["error"].str.startswith("OutOfMemoryError")].iloc[0]
    assert oom["epochs"] == 1 and pd.isna(oom["val_acc"])  # reported once, then failed: not a score
    assert df.loc[df["status"] != "FAILED", "val_acc"].notna().all() and len(df[df["status"] != "FAILED"]) == 3
    assert result.counts["FAILED"] == 3 and result.best_score is not None

    study = load_study(cfg)
    states = [t.state for t in study.trials]
    assert len(states) == 6 and states.count(TrialState.FAIL) == 3 and TrialState.RUNNING not in states
    failed_numbers = {t.number for t in study.trials if t.state == TrialState.FAIL}
    assert failed_numbers == set(failed["number"])

    shown = CliRunner().invoke(app, ["status", str(result.folder)], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "6/6 trials" in shown.output
    for _, row in failed.iterrows():  # each failed trial with its reason
        assert f"trial {int(row['number'])} ({row['trial_id']}) FAILED: {row['error']}" in shown.output
