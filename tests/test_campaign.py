"""Campaign loop end to end on the bundled sample: both objectives, failures, resume after kill -9 (two Ray nodes:
tests/test_cluster.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import GATED_RUN_TRIAL, wait_for_driver  # tests/ is on sys.path under pytest
from optuna.trial import TrialState

from policy_search.campaign import CampaignError, load_study, resume_campaign, run_campaign
from policy_search.config import load_config
from policy_search.export import export_campaign
from search_spaces import load_policy

TINY = {"train_size": 500, "val_size": 250, "proxy.epochs": 2, "proxy.width": 8, "num_trials": 4,
        "objective": "proxy", "space": "randaugment", "race.enabled": False,
        "max_concurrent": 2, "num_cpus": 2}


def tiny(tmp_path: Path, name: str, **extra):
    return load_config(overrides={**TINY, "name": name, "output": str(tmp_path), **extra})


def _check_outputs(folder: Path, n: int) -> pd.DataFrame:
    for name in ("trials.csv", "best_policy.json", "summary.json", "splits.json", "config.yaml", "history.png",
                 "importances.png", "best_policy_preview.png", "top_k/rank1.json"):
        assert (folder / name).is_file(), name
    df = pd.read_csv(folder / "trials.csv")
    assert len(df) == n and df["trial_id"].is_unique and df["number"].is_unique
    best = load_policy(folder / "best_policy.json")
    prov = best.provenance
    assert prov["score"] == pytest.approx(df.loc[df["status"] == "COMPLETE", "val_acc"].max())
    assert {"torch", "kornia", "ray", "optuna"} <= set(prov["versions"])
    assert prov["campaign"] == folder.name and prov["dataset"] == "sample"
    summary = json.loads((folder / "summary.json").read_text())
    assert sum(summary["counts"].values()) == n
    return df


@pytest.mark.slow
def test_proxy_campaign_end_to_end(tmp_path, ray_local):
    cfg = tiny(tmp_path, "proxy")
    seen = []
    result = run_campaign(cfg, on_progress=seen.append)
    df = _check_outputs(result.folder, 4)
    assert set(df["status"]) <= {"COMPLETE", "PRUNED"}
    first = df.iloc[0]
    assert (first["param_num_ops"], first["param_magnitude"]) == (2, 9)  # RandAugment(2, 9) baseline runs first
    full = df[df["status"] == "COMPLETE"]
    assert (full["epochs"] == 2).all() and full["val_acc_history"].str.count(";").eq(1).all()
    study = load_study(cfg)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert seen and seen[-1].total == 4
    with pytest.raises(CampaignError, match="already exists"):
        run_campaign(cfg)
    files = export_campaign(result.folder, top=2, fmt="torchvision")
    assert [p.name for p in files] == ["rank1.py", "rank2.py"]  # one self-contained file per policy


@pytest.mark.slow
def test_density_campaign_end_to_end(tmp_path, ray_local):
    cfg = tiny(tmp_path, "density", objective="density", space="autoaugment",
               space_options={"num_subpolicies": 2}, sampler="random")
    result = run_campaign(cfg)
    df = _check_outputs(result.folder, 4)
    assert (df["status"] == "COMPLETE").all() and (df["epochs"] == 1).all()
    assert load_policy(result.folder / "best_policy.json").type == "subpolicy_choice"


@pytest.mark.slow
def test_failing_trials_are_recorded_and_the_campaign_completes(tmp_path, ray_local):
    cfg = tiny(tmp_path, "diverge", num_trials=3, **{"proxy.lr": 1e30})  # every trial diverges
    result = run_campaign(cfg)
    df = pd.read_csv(result.folder / "trials.csv")
    assert len(df) == 3 and (df["status"] == "FAILED").all()
    assert df["error"].str.startswith("TrainingDiverged").all()
    assert result.counts == {"COMPLETE": 0, "PRUNED": 0, "FAILED": 3} and result.best_score is None
    study = load_study(cfg)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3
    assert not (result.folder / "best_policy.json").exists()


KILLED_TRIALS = 10
FINISHED_BEFORE_KILL = 3
# The driver runs the campaign with run_trial gated (conftest.GATED_RUN_TRIAL): exactly FINISHED_BEFORE_KILL
# trials finish and one runs when the test kills the driver.
_DRIVER = GATED_RUN_TRIAL + textwrap.dedent("""
    from policy_search.config import load_config

    output, num_trials, gate, finish = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    gate_trials(gate, finish, "a kill")
    campaign.run_campaign(load_config(overrides=dict(
        output=output, name="killed", num_trials=num_trials, max_concurrent=1, train_size=300, val_size=150,
        num_cpus=2, objective="proxy", **{"proxy.epochs": 1, "proxy.width": 8, "race.enabled": False})))
""")


def _tune_finished(folder: Path) -> int:
    """Trials TERMINATED in the latest Tune experiment snapshot of a campaign folder."""
    latest = max((folder / "tune").glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    states = json.loads(latest.read_text())["trial_data"]
    return sum(json.loads(state)["status"] == "TERMINATED" for state, _ in states)


def _completed(storage: str) -> dict[str, float]:
    """Tune trial id -> value of the COMPLETE trials of the study (empty while the study does not exist)."""
    try:
        trials = optuna.load_study(study_name="killed", storage=storage).trials
    except Exception:  # noqa: BLE001 - the driver creates the database a few seconds in
        return {}
    return {t.user_attrs["tune_trial_id"]: t.value for t in trials if t.state == TrialState.COMPLETE}


@pytest.mark.slow
@pytest.mark.parametrize("snapshot_s", ["1", "3600"])  # 3600: every trial finishes after Tune's last snapshot
def test_resume_after_kill_9(tmp_path, ray_local, snapshot_s):
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": snapshot_s}
    log = tmp_path / "driver.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-c", _DRIVER, str(tmp_path), str(KILLED_TRIALS), str(gate),
                                 str(FINISHED_BEFORE_KILL)], env=env, start_new_session=True,
                                stdout=sink, stderr=subprocess.STDOUT)
    cfg = load_config(overrides={"output": str(tmp_path), "name": "killed", "num_trials": KILLED_TRIALS})
    storage = cfg.storage_url()
    deadline = time.monotonic() + 240

    def wait_for(condition, what: str) -> None:
        wait_for_driver(proc, log, deadline, condition, what)

    def tune_snapshot_has_them() -> bool:
        try:
            return _tune_finished(cfg.folder) >= FINISHED_BEFORE_KILL
        except (ValueError, OSError):  # no snapshot yet, or one being written
            return False

    try:
        wait_for(lambda: (gate / "blocked").exists(), "the gated trial")
        wait_for(lambda: len(_completed(storage)) == FINISHED_BEFORE_KILL, "the finished trials in the study")
        if snapshot_s == "1":  # the driver loops on while the gated trial blocks: a snapshot follows in ~1 s
            wait_for(tune_snapshot_has_them, "a Tune snapshot holding the finished trials")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        proc.wait()
        (gate / "release").touch()  # a gated worker that outlived the kill exits
    before = _completed(storage)
    assert len(before) == FINISHED_BEFORE_KILL
    running = optuna.load_study(study_name="killed", storage=storage).get_trials(states=(TrialState.RUNNING,))
    assert len(running) == 1  # the gated trial, left RUNNING by the kill
    if snapshot_s == "3600":  # the gap under test: the study is ahead of Tune's snapshot
        assert _tune_finished(tmp_path / "killed") < len(before)

    result = resume_campaign(tmp_path / "killed")
    df = pd.read_csv(result.folder / "trials.csv")
    assert len(df) == KILLED_TRIALS and df["trial_id"].is_unique
    assert (df["status"] == "COMPLETE").sum() == KILLED_TRIALS
    for trial_id, value in before.items():  # completed before the kill: kept exactly once, with its value
        rows = df[df["trial_id"] == trial_id]
        assert len(rows) == 1 and rows["val_acc"].iloc[0] == pytest.approx(value)
    study = optuna.load_study(study_name="killed", storage=storage)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.user_attrs["tune_trial_id"] for t in complete) == sorted(df["trial_id"])  # study == CSV
    for t in complete:
        assert df.loc[df["trial_id"] == t.user_attrs["tune_trial_id"], "val_acc"].iloc[0] == pytest.approx(t.value)
