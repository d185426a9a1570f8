"""Optuna storage on a real PostgreSQL server: a campaign runs and resumes (after it finished, and after a kill -9
mid-run) against it, the password stays secret, and two campaigns of one name share the database but never a
study (a third namesake is refused without ``--attach``).

``.ci/run`` starts the server (``.ci/postgres``) and exports ``POLICY_SEARCH_TEST_PG_URL`` (no password) and
``POLICY_SEARCH_DB_PASSWORD``. Without them the test skips, except under CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import GATED_RUN_TRIAL, wait_for_driver  # tests/ is on sys.path under pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from policy_search.campaign import STUDY_ATTR, resume_campaign, run_campaign
from policy_search.cli import app
from policy_search.config import PASSWORD_ENV, load_config
from policy_search.session import campaign_id, load_study, stale_numbers, study_name


def _delete_study(cfg) -> None:
    """The database outlives the test: drop the campaign's study (if it got that far)."""
    try:
        optuna.delete_study(study_name=study_name(cfg), storage=cfg.storage_url())
    except KeyError:
        pass


def _files_holding(root: Path, secret: bytes) -> list[str]:
    return [str(p.relative_to(root)) for p in sorted(root.rglob("*")) if p.is_file() and secret in p.read_bytes()]


@pytest.mark.slow
def test_campaign_on_postgresql_keeps_the_password_out(tmp_path, pg_url, ray_local, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    password = os.environ[PASSWORD_ENV]
    name = f"pg-{uuid.uuid4().hex[:10]}"  # the database outlives the test: a fresh study per run
    cfg = load_config(overrides={"name": name, "output": str(tmp_path), "storage": pg_url, "objective": "density",
                                 "race.enabled": False, "space": "autoaugment", "space_options": {"num_subpolicies": 2},
                                 "sampler": "random", "num_trials": 4, "max_concurrent": 2, "num_cpus": 2,
                                 "train_size": 300, "val_size": 100, "proxy.epochs": 1, "proxy.width": 8})
    storage = cfg.storage_url()
    assert password in storage and password not in cfg.storage
    try:
        result = run_campaign(cfg)
        assert not (result.folder / "study.db").exists()  # the study lives in PostgreSQL
        df = pd.read_csv(result.folder / "trials.csv")
        study = load_study(cfg)
        assert study.study_name == f"{name}-{campaign_id(cfg.folder)[:8]}"
        assert len(study.trials) == len(df) == 4 and (df["status"] == "COMPLETE").all()
        assert all(t.state == TrialState.COMPLETE for t in study.trials)
        by_tune_id = {t.user_attrs[STUDY_ATTR]: t for t in study.trials}
        assert set(by_tune_id) == set(df["trial_id"])
        for _, row in df.iterrows():
            trial = by_tune_id[row["trial_id"]]
            assert trial.number == row["number"] and trial.value == pytest.approx(row["val_acc"])

        again = resume_campaign(result.folder)  # the restored searcher reconnects with the password from the env
        assert sum(again.counts.values()) == 4
        assert len(load_study(cfg).trials) == 4

        assert _files_holding(result.folder, password.encode()) == []  # config, summary, Tune's state and pickles
        assert any((result.folder / "tune").rglob("*.pkl")), "Tune's pickled state was not scanned"
        out, err = capfd.readouterr()
        assert password not in out + err and password not in caplog.text
    finally:
        _delete_study(cfg)


def test_an_inline_password_is_stripped_from_the_saved_config():
    cfg = load_config(overrides={"storage": "postgresql+psycopg2://user:s3cret-pw@db.example:5432/studies"})
    assert cfg.public_dict()["storage"] == "postgresql+psycopg2://user@db.example:5432/studies"
    assert "s3cret-pw" in cfg.storage_url()  # used to connect, never saved


# A campaign driver in its own process with its own local Ray (one CPU), on the PostgreSQL storage, attached
# (a namesake may run at the same time). With a gate folder, trials claim slots 0, 1, ... (one file each, created
# exclusively) and the one that claims slot ``finish`` blocks on a release file the test creates only after it
# killed the driver: the driver dies with exactly ``finish`` finished trials and one running, whatever the
# machine's speed (the pattern of tests/test_campaign.py::test_resume_after_kill_9). The wrapper lives in
# __main__, so cloudpickle ships it to the workers by value; its __name__ stays "run_trial" for Tuner.restore.
_DRIVER = GATED_RUN_TRIAL + textwrap.dedent("""
    from policy_search.config import load_config

    output, name, storage, num_trials, objective, gate, finish = sys.argv[1:8]
    if gate:
        gate_trials(gate, int(finish), "a kill")
    campaign.run_campaign(load_config(overrides=dict(
        output=output, name=name, storage=storage, num_trials=int(num_trials), objective=objective,
        space="autoaugment", space_options={"num_subpolicies": 2}, sampler="random", max_concurrent=1,
        num_cpus=1, train_size=300, val_size=100, **{"proxy.epochs": 1, "proxy.width": 8,
                                                     "race.enabled": False})), attach=True)
""")


def _driver(output: Path, name: str, pg_url: str, num_trials: int, objective: str, log: Path,
            gate: Path | None = None, finish: int = 0, **env: str) -> subprocess.Popen:
    with log.open("wb") as sink:
        return subprocess.Popen([sys.executable, "-c", _DRIVER, str(output), name, pg_url, str(num_trials), objective,
                                 str(gate or ""), str(finish)], env={**os.environ, **env}, start_new_session=True,
                                stdout=sink, stderr=subprocess.STDOUT)


def _pg_config(output: Path, name: str, pg_url: str, **extra):
    return load_config(overrides={"output": str(output), "name": name, "storage": pg_url, **extra})


@pytest.mark.slow
def test_two_campaigns_of_one_name_on_one_database_keep_their_own_studies(tmp_path, pg_url):
    name = f"same-{uuid.uuid4().hex[:8]}"
    cfgs = [_pg_config(tmp_path / side, name, pg_url) for side in ("a", "b")]
    third = _pg_config(tmp_path / "c", name, pg_url)
    logs = [tmp_path / f"driver-{side}.log" for side in ("a", "b")]
    procs = [_driver(cfg.output, name, pg_url, 3, "density", log) for cfg, log in zip(cfgs, logs, strict=True)]
    try:
        for proc, log in zip(procs, logs, strict=True):
            try:
                status = proc.wait(timeout=480)
            except subprocess.TimeoutExpired:
                pytest.fail(f"driver still running after 480 s:\n{log.read_text(errors='replace')[-3000:]}")
            assert status == 0, f"driver failed ({status}):\n{log.read_text(errors='replace')[-3000:]}"

        studies = [load_study(cfg) for cfg in cfgs]
        assert studies[0].study_name != studies[1].study_name  # one name, two studies
        tune_ids = []
        for cfg, study in zip(cfgs, studies, strict=True):
            assert study.user_attrs["campaign_folder"] == str(cfg.folder)
            assert study.user_attrs["campaign_id"] == campaign_id(cfg.folder)
            df = pd.read_csv(cfg.folder / "trials.csv")
            assert len(df) == 3 and (df["status"] == "COMPLETE").all()
            by_tune_id = {t.user_attrs[STUDY_ATTR]: t for t in study.trials}
            assert len(study.trials) == 3 and set(by_tune_id) == set(df["trial_id"])  # exactly its own trials
            for _, row in df.iterrows():
                trial = by_tune_id[row["trial_id"]]
                assert trial.number == row["number"] and trial.value == pytest.approx(row["val_acc"])
            tune_ids.append(set(df["trial_id"]))
        assert not tune_ids[0] & tune_ids[1]

        # a third campaign of that name on the database, without --attach: one line naming a study and its folder
        result = CliRunner().invoke(app, ["run", "--name", name, "--output", str(tmp_path / "c"), "--storage", pg_url,
                                          "--objective", "density", "--trials", "2", "--no-race", "-q"],
                                    terminal_width=400)
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.output
        assert any(f"'{s.study_name}'" in errors[0] and str(c.folder) in errors[0]
                   for s, c in zip(studies, cfgs, strict=True))
        assert "--attach" in errors[0] and not third.folder.exists()
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for cfg in cfgs:
            _delete_study(cfg)


KILLED_TRIALS = 4
FINISHED_BEFORE_KILL = 2


@pytest.mark.slow
def test_an_interrupted_campaign_resumes_on_postgresql(tmp_path, pg_url, ray_local):
    name = f"killed-{uuid.uuid4().hex[:8]}"
    cfg = _pg_config(tmp_path, name, pg_url, num_trials=KILLED_TRIALS)
    gate = tmp_path / "gate"
    gate.mkdir()
    log = tmp_path / "driver.log"
    # no experiment snapshot after the start: every finished trial is ahead of Tune's snapshot, the hard case
    proc = _driver(tmp_path, name, pg_url, KILLED_TRIALS, "proxy", log, gate, FINISHED_BEFORE_KILL,
                   TUNE_GLOBAL_CHECKPOINT_S="3600")
    deadline = time.monotonic() + 300

    def completed() -> dict[str, float]:
        try:
            trials = load_study(cfg).trials
        except KeyError:  # the driver creates the study a few seconds in
            return {}
        return {t.user_attrs[STUDY_ATTR]: t.value for t in trials if t.state == TrialState.COMPLETE}

    def wait_for(condition, what: str) -> None:
        wait_for_driver(proc, log, deadline, condition, what)

    try:
        try:
            wait_for(lambda: (gate / "blocked").exists(), "the gated trial")
            wait_for(lambda: len(completed()) == FINISHED_BEFORE_KILL, "the finished trials in the study")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
            proc.wait()
            (gate / "release").touch()  # a gated worker that outlived the kill exits
        before = completed()
        running = load_study(cfg).get_trials(states=(TrialState.RUNNING,))
        assert len(before) == FINISHED_BEFORE_KILL and len(running) == 1  # the gated trial, left RUNNING

        result = resume_campaign(cfg.folder)
        df = pd.read_csv(result.folder / "trials.csv")
        assert len(df) == KILLED_TRIALS and df["trial_id"].is_unique and df["number"].is_unique
        assert (df["status"] == "COMPLETE").all()
        for trial_id, value in before.items():  # finished before the kill: kept once, with its first value
            assert df.loc[df["trial_id"] == trial_id, "val_acc"].tolist() == [pytest.approx(value)]
        study = load_study(cfg)
        assert not study.get_trials(states=(TrialState.RUNNING,))
        assert stale_numbers(study) == {running[0].number}  # FAILed by resume, then re-run as a new trial
        complete = study.get_trials(states=(TrialState.COMPLETE,))
        assert sorted(t.user_attrs[STUDY_ATTR] for t in complete) == sorted(df["trial_id"])
        for t in complete:  # the study and trials.csv agree trial by trial
            row = df[df["trial_id"] == t.user_attrs[STUDY_ATTR]].iloc[0]
            assert row["number"] == t.number and row["val_acc"] == pytest.approx(t.value)
            assert {k: row[f"param_{k}"] for k in t.params} == t.params
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _delete_study(cfg)
