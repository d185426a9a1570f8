"""Optuna storage on a real PostgreSQL server: a campaign runs and resumes against it, the password stays secret.

``.ci/run`` starts the server (``.ci/postgres``) and exports ``POLICY_SEARCH_TEST_PG_URL`` (no password) and
``POLICY_SEARCH_DB_PASSWORD``. Without them the test skips, except under CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from policy_search.campaign import STUDY_ATTR, resume_campaign, run_campaign
from policy_search.config import PASSWORD_ENV, load_config

URL_ENV = "POLICY_SEARCH_TEST_PG_URL"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostgreSQL required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def pg_url() -> str:
    """The server's URL without a password (the password is in ``$POLICY_SEARCH_DB_PASSWORD``)."""
    url, password = os.environ.get(URL_ENV), os.environ.get(PASSWORD_ENV)
    if not url or not password:
        _unavailable(f"${URL_ENV} and ${PASSWORD_ENV} not set (run: eval \"$(.ci/postgres)\")")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _unavailable("psycopg2 is not installed (the [postgres] extra)")
    import sqlalchemy
    from sqlalchemy.engine import make_url

    assert make_url(url).password is None, f"${URL_ENV} must not carry the password"
    engine = sqlalchemy.create_engine(make_url(url).set(password=password))
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except sqlalchemy.exc.OperationalError as exc:
        _unavailable(f"cannot connect to {url}: {str(exc).splitlines()[0]}")
    finally:
        engine.dispose()
    return url


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
        study = optuna.load_study(study_name=name, storage=storage)
        assert len(study.trials) == len(df) == 4 and (df["status"] == "COMPLETE").all()
        assert all(t.state == TrialState.COMPLETE for t in study.trials)
        by_tune_id = {t.user_attrs[STUDY_ATTR]: t for t in study.trials}
        assert set(by_tune_id) == set(df["trial_id"])
        for _, row in df.iterrows():
            trial = by_tune_id[row["trial_id"]]
            assert trial.number == row["number"] and trial.value == pytest.approx(row["val_acc"])

        again = resume_campaign(result.folder)  # the restored searcher reconnects with the password from the env
        assert sum(again.counts.values()) == 4
        assert len(optuna.load_study(study_name=name, storage=storage).trials) == 4

        assert _files_holding(result.folder, password.encode()) == []  # config, summary, Tune's state and pickles
        assert any((result.folder / "tune").rglob("*.pkl")), "Tune's pickled state was not scanned"
        out, err = capfd.readouterr()
        assert password not in out + err and password not in caplog.text
    finally:
        optuna.delete_study(study_name=name, storage=storage)


def test_an_inline_password_is_stripped_from_the_saved_config():
    cfg = load_config(overrides={"storage": "postgresql+psycopg2://user:s3cret-pw@db.example:5432/studies"})
    assert cfg.public_dict()["storage"] == "postgresql+psycopg2://user@db.example:5432/studies"
    assert "s3cret-pw" in cfg.storage_url()  # used to connect, never saved
