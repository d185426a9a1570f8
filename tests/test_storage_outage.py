"""Storage outage in the middle of a campaign: the searcher retries its study calls with backoff for
``storage_retry_s``; a short outage is invisible, a long one stops the campaign with one line and keeps the results
the study could not take in ``pending_tells.json``, which resume tells to the study first.

The campaign tests run against the real PostgreSQL server (``eval "$(.ci/postgres)"``; skipped without it, failed
under ``CI=true``) through a TCP relay in this process: the campaign's storage URL points at the relay, and
``relay.cut()`` drops every live connection and refuses new ones until ``relay.restore()``. A gated trial makes the
outage hit mid-campaign, whatever the machine's speed: the trial that takes ticket 1 waits until the test has cut
the relay, so its result reaches the driver while the database is unreachable.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import sqlalchemy
from conftest import take_ticket  # tests/ is on sys.path under pytest
from optuna.trial import TrialState
from ray import cloudpickle, tune
from ray.tune.search import Searcher

import policy_search.campaign as campaign
from policy_search.campaign import (
    STUDY_ATTR,
    CampaignSearch,
    StorageStop,
    StorageUnavailable,
    replay_pending,
    resume_campaign,
    run_campaign,
)
from policy_search.cli import _error_line
from policy_search.config import PASSWORD_ENV, load_config
from policy_search.reliability import PENDING_TELLS, RESUME_LOG, is_storage_outage, read_pending, retry_storage
from policy_search.session import create_campaign_study, load_study, stale_numbers, study_name, study_storage
from search_spaces.spaces import SPACES_BY_NAME

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/

GATED = 1  # the ticket of the trial whose result arrives during the outage
TRIALS = 3


def _down(what: str = "Connection refused") -> sqlalchemy.exc.OperationalError:
    """What SQLAlchemy raises when the database server cannot be reached."""
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError(111, what))


# ---------------------------------------------------------------------------------------------
# The retry helper and the searcher (no Ray, no server)


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _flaky(failures: int, error: Exception | None = None):
    calls = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise error or _down()
        return "told"

    return call, calls


URL = "postgresql+psycopg2://someone:s3cret-pw@db.example:5432/studies"


def test_retry_backs_off_and_succeeds_after_transient_errors():
    fake = FakeTime()
    call, calls = _flaky(4)
    assert retry_storage(call, window_s=60, storage=URL, sleep=fake.sleep, clock=fake.clock) == "told"
    assert len(calls) == 5 and fake.sleeps == [0.5, 1.0, 2.0, 4.0]  # doubling from 0.5 s
    wrapped = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    wrapped.__cause__ = _down()  # how Optuna's RDBStorage raises a failed commit
    call, calls = _flaky(1, wrapped)
    assert retry_storage(call, window_s=60, storage=URL, sleep=fake.sleep, clock=fake.clock) == "told"
    assert len(calls) == 2


def test_retry_gives_up_after_the_window_with_one_line_without_the_password():
    fake = FakeTime()
    call, calls = _flaky(1000)
    with pytest.raises(StorageUnavailable) as info:
        retry_storage(call, window_s=60, storage=URL, sleep=fake.sleep, clock=fake.clock)
    assert fake.sleeps[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]  # capped at 10 s
    assert sum(fake.sleeps) == pytest.approx(60) and fake.now == pytest.approx(160)  # the window, no more
    message = str(info.value)
    assert message == ("storage: postgresql+psycopg2://someone@db.example:5432/studies unreachable for 60 s "
                       "(ConnectionRefusedError: [Errno 111] Connection refused)")
    assert _error_line(info.value) == message  # the CLI prints it as it is: `error: <message>`, exit status 2
    fake = FakeTime()
    call, calls = _flaky(1000)
    with pytest.raises(StorageUnavailable, match="unreachable for 0 s"):
        retry_storage(call, window_s=0, storage=URL, sleep=fake.sleep, clock=fake.clock)
    assert len(calls) == 1 and fake.sleeps == []


def test_retry_does_not_retry_programming_errors():
    fake = FakeTime()
    integrity = optuna.exceptions.StorageInternalError("commit failed")
    integrity.__cause__ = sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key"))
    for error in (ValueError("bad value"), sqlalchemy.exc.ProgrammingError("SELECT", {}, Exception("syntax")),
                  integrity):
        call, calls = _flaky(1, error)
        with pytest.raises(type(error)):
            retry_storage(call, window_s=60, storage=URL, sleep=fake.sleep, clock=fake.clock)
        assert len(calls) == 1 and not is_storage_outage(error)
    assert fake.sleeps == []
    assert is_storage_outage(_down()) and is_storage_outage(ConnectionResetError())


def _sqlite_campaign(tmp_path: Path, name: str, **extra: Any):
    cfg = load_config(overrides={"name": name, "output": str(tmp_path), "space": "randaugment", "objective": "proxy",
                                 "proxy.epochs": 2, "race.enabled": False, **extra})
    create_campaign_study(cfg)
    storage = study_storage(cfg)
    search = CampaignSearch(partial(SPACES_BY_NAME["randaugment"]), metric="val_acc", mode="max",
                            study_name=study_name(cfg), storage=storage,
                            sampler=optuna.samplers.RandomSampler(seed=0), max_t=2, num_trials=5,
                            storage_retry_s=cfg.storage_retry_s, folder=cfg.folder)
    return cfg, search, storage


def _storage_down(*args: Any, **kwargs: Any) -> None:
    raise _down()


def _result(value: float, epoch: int) -> dict[str, Any]:
    return {"val_acc": value, "epoch": epoch, "training_iteration": epoch}


def test_the_searcher_keeps_what_the_study_could_not_take_and_resume_tells_it(tmp_path, monkeypatch):
    cfg, search, backend = _sqlite_campaign(tmp_path, "keep", storage_retry_s=0)
    stop = StorageStop(search)
    search.suggest("t1")
    search.suggest("t2")
    search.on_trial_result("t1", _result(0.3, 1))  # reaches the study
    search.on_trial_result("t2", _result(0.2, 1))
    for method in ("set_trial_intermediate_value", "set_trial_state_values"):  # the storage goes away
        monkeypatch.setattr(backend, method, _storage_down)
    assert search.storage_failure is None and not stop.stop_all()
    search.on_trial_result("t1", _result(0.5, 2))  # t1's final result: the report cannot be written
    assert search.storage_failure.startswith(f"storage: sqlite:///{cfg.folder / 'study.db'} unreachable for 0 s "
                                             f"(ConnectionRefusedError:")
    assert stop.stop_all() and not stop("t2", {})  # Tune ends the experiment, no single trial is stopped
    again = cloudpickle.loads(cloudpickle.dumps({"search_alg": search, "stop": stop}))  # as in Tune's tuner.pkl
    assert not again["stop"].stop_all()  # a resumed experiment starts without the failure
    with monkeypatch.context() as outage:  # and its stopper still follows its searcher: the storage of the copy fails
        outage.setattr(type(backend), "set_trial_state_values", _storage_down)
        again["search_alg"].on_trial_complete("t1", result=_result(0.5, 2))
        assert again["search_alg"].storage_failure is not None and again["stop"].stop_all()
    assert search.suggest("t3") == Searcher.FINISHED  # nothing more is asked of the storage
    search.on_trial_complete("t2", result=_result(0.2, 1), error=True)  # kept without trying the storage
    pending = read_pending(cfg.folder)
    assert pending["failure"] == search.storage_failure
    by_id = {t["tune_trial_id"]: t for t in pending["tells"]}
    assert by_id["t1"]["state"] == "COMPLETE" and by_id["t1"]["value"] == 0.5  # its last result was its final one
    assert by_id["t1"]["reports"] == {"1": 0.3, "2": 0.5}
    assert by_id["t2"]["state"] == "FAIL" and by_id["t2"]["value"] is None

    monkeypatch.undo()  # the storage is back
    study = load_study(cfg)
    assert {t.state for t in study.trials} == {TrialState.RUNNING}
    for _ in range(2):  # safe to repeat (a resume that died after telling them)
        assert replay_pending(cfg) == 2
    assert len(load_study(cfg).trials) == 2
    trials = {t.user_attrs[STUDY_ATTR]: t for t in load_study(cfg).trials}
    assert trials["t1"].state == TrialState.COMPLETE and trials["t1"].value == 0.5
    assert trials["t1"].intermediate_values == {1: 0.3, 2: 0.5}
    assert trials["t2"].state == TrialState.FAIL and trials["t2"].intermediate_values == {1: 0.2}


def test_an_ask_that_failed_after_its_commit_leaves_no_running_trial(tmp_path, monkeypatch):
    cfg, search, _ = _sqlite_campaign(tmp_path, "orphan", storage_retry_s=30)
    real_ask, calls = optuna.Study.ask, []

    def ask_then_fail(study, *args, **kwargs):
        trial = real_ask(study, *args, **kwargs)
        calls.append(trial.number)
        if len(calls) == 1:
            raise _down("server closed the connection unexpectedly")  # committed, but the answer is lost
        return trial

    monkeypatch.setattr(optuna.Study, "ask", ask_then_fail)
    search.suggest("t1")
    search.on_trial_complete("t1", result=_result(0.4, 2))
    study = load_study(cfg)
    assert len(calls) == 2 and search.storage_failure is None
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]
    orphan = next(t for t in study.trials if t.state == TrialState.FAIL)
    assert stale_numbers(study) == {orphan.number} and STUDY_ATTR not in orphan.user_attrs


# ---------------------------------------------------------------------------------------------
# Real campaigns on PostgreSQL through a relay the test cuts


class Relay:
    """A TCP relay 127.0.0.1:``port`` -> ``target`` (threads and sockets). ``cut()`` drops every live connection
    and then turns new ones away: accepted and closed at once (counted in ``refused``), or, with ``close_port``,
    refused by the kernel (the listening socket is closed). ``restore()`` relays again, on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.lock = threading.Lock()
        self.relaying = True
        self.refused = self.dropped = 0
        self.conns: set[socket.socket] = set()
        self.listener: socket.socket | None = None
        self.port = 0
        self._listen()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port, self.listener = listener.getsockname()[1], listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed
                return
            with self.lock:
                relaying = self.relaying
                if not relaying:
                    self.refused += 1
            if not relaying:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _close(s)
            with self.lock:
                self.conns -= {src, dst}

    def cut(self, close_port: bool = False) -> None:
        with self.lock:
            self.relaying = False
            conns, self.conns = list(self.conns), set()
            self.dropped += len(conns) // 2
        for s in conns:
            _close(s)
        if close_port and self.listener is not None:
            _close(self.listener)  # (shutdown wakes the accept)
            self.listener = None

    def restore(self) -> None:
        with self.lock:
            self.relaying = True
        if self.listener is None:
            self._listen()

    def close(self) -> None:
        self.cut(close_port=True)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


@pytest.fixture
def relay(pg_url):
    from sqlalchemy.engine import make_url

    url = make_url(pg_url)
    r = Relay((url.host or "127.0.0.1", url.port or 5432))
    r.url = url.set(host="127.0.0.1", port=r.port).render_as_string(hide_password=False)
    yield r
    r.close()


def _gated(gate: Path) -> Any:
    """``run_trial`` with a gate (shipped to the workers by value): every attempt is noted per Tune trial; the
    attempt that takes ticket ``GATED`` waits for ``<gate>/release`` before it trains."""
    real = campaign.run_trial

    def run_trial(config: dict[str, Any], **kwargs: Any) -> None:
        trial_id = tune.get_context().get_trial_id()
        with (gate / f"attempts-{trial_id}").open("a") as f:
            f.write(f"{os.getpid()}\n")
        if take_ticket(gate) == GATED:
            (gate / "gated").write_text(trial_id)
            (gate / "blocked").touch()
            deadline = time.monotonic() + 300
            while not (gate / "release").exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("the test never released the gate")
                time.sleep(0.05)
        real(config, **kwargs)

    return run_trial


class Controller(threading.Thread):
    """Cuts the relay once the gated trial waits, releases it, then (``restore_after_refusals``) restores the
    relay once the driver's reconnection attempts were turned away that many times."""

    def __init__(self, relay: Relay, gate: Path, close_port: bool, restore_after_refusals: int | None) -> None:
        super().__init__(daemon=True)
        self.relay, self.gate, self.close_port, self.restore_after = relay, gate, close_port, restore_after_refusals
        self.error: str | None = None

    def run(self) -> None:
        try:
            self._wait(lambda: (self.gate / "blocked").exists(), "the gated trial")
            self.relay.cut(close_port=self.close_port)
            (self.gate / "release").touch()
            if self.restore_after is not None:
                self._wait(lambda: self.relay.refused >= self.restore_after, "the driver's reconnection attempt")
                self.relay.restore()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = str(exc)
            self.relay.restore()
            (self.gate / "release").touch()

    @staticmethod
    def _wait(condition, what: str) -> None:
        deadline = time.monotonic() + 300
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.05)


def _campaign(tmp_path: Path, relay: Relay, name: str, **extra: Any):
    return load_config(overrides={
        "name": name, "output": str(tmp_path / "out"), "storage": relay.url, "num_trials": TRIALS,
        "max_concurrent": 1, "num_cpus": 2, "objective": "proxy", "space": "randaugment", "sampler": "random",
        "train_size": 300, "val_size": 150, "proxy.epochs": 1, "proxy.width": 8, "race.enabled": False, **extra})


def _delete_study(cfg) -> None:
    try:
        optuna.delete_study(study_name=study_name(cfg), storage=cfg.storage_url())
    except KeyError:
        pass


def _study_matches_trials_csv(cfg) -> tuple[optuna.Study, pd.DataFrame]:
    """The study and trials.csv agree trial by trial: the same COMPLETE trials, numbers, values and params."""
    study, df = load_study(cfg), pd.read_csv(cfg.folder / "trials.csv")
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(df) == TRIALS and df["trial_id"].is_unique and (df["status"] == "COMPLETE").all(), df
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.user_attrs[STUDY_ATTR] for t in complete) == sorted(df["trial_id"])
    for t in complete:
        row = df[df["trial_id"] == t.user_attrs[STUDY_ATTR]].iloc[0]
        assert row["number"] == t.number and row["val_acc"] == pytest.approx(t.value)
        assert {k: row[f"param_{k}"] for k in t.params} == t.params
    return study, df


def _runs(gate: Path) -> dict[str, int]:
    """Attempts per Tune trial id."""
    return {p.name.removeprefix("attempts-"): len(p.read_text().split()) for p in gate.glob("attempts-*")}


@pytest.mark.slow
def test_a_short_outage_mid_campaign_is_invisible(tmp_path, relay, ray_local, monkeypatch):
    gate = tmp_path / "gate"
    gate.mkdir()
    monkeypatch.setattr(campaign, "run_trial", _gated(gate))
    cfg = _campaign(tmp_path, relay, f"short-{uuid.uuid4().hex[:8]}")  # storage_retry_s: the default 60 s
    controller = Controller(relay, gate, close_port=False, restore_after_refusals=1)
    controller.start()
    try:
        result = run_campaign(cfg)
        controller.join(timeout=30)
        assert controller.error is None, controller.error
        assert relay.refused >= 1  # the driver met the outage (whether a pooled connection was live to drop varies)
        assert not (cfg.folder / PENDING_TELLS).exists()
        assert result.counts.get("COMPLETE") == TRIALS
        study, df = _study_matches_trials_csv(cfg)
        gated = (gate / "gated").read_text()
        assert gated in set(df["trial_id"]) and _runs(gate) == dict.fromkeys(df["trial_id"], 1)
        assert not stale_numbers(study)
    finally:
        relay.restore()
        (gate / "release").touch()
        _delete_study(cfg)


@pytest.mark.slow
def test_a_long_outage_stops_with_one_line_and_resume_keeps_the_result(tmp_path, relay, ray_local, monkeypatch):
    gate = tmp_path / "gate"
    gate.mkdir()
    monkeypatch.setattr(campaign, "run_trial", _gated(gate))
    cfg = _campaign(tmp_path, relay, f"long-{uuid.uuid4().hex[:8]}", storage_retry_s=2)
    controller = Controller(relay, gate, close_port=True, restore_after_refusals=None)  # no restore during the run
    controller.start()
    try:
        with pytest.raises(StorageUnavailable) as info:
            run_campaign(cfg)
        controller.join(timeout=30)
        assert controller.error is None, controller.error
        message = str(info.value)
        shown = relay.url  # the URL without the password
        assert message.startswith(f"storage: {shown} unreachable for 2 s (OperationalError: "), message
        assert message.endswith(f"; 1 finished result(s) kept in {PENDING_TELLS}; continue with: policy-search "
                                f"resume {cfg.folder}"), message
        assert "\n" not in message and os.environ[PASSWORD_ENV] not in message
        assert _error_line(info.value) == message  # the CLI: `error: <message>`, exit status 2

        gated = (gate / "gated").read_text()
        pending = json.loads((cfg.folder / PENDING_TELLS).read_text())
        assert [t["tune_trial_id"] for t in pending["tells"]] == [gated]
        kept = pending["tells"][0]
        assert kept["state"] == "COMPLETE"
        computed = [json.loads(line) for line in (cfg.folder / "tune" / gated / "result.json").read_text().splitlines()]
        assert kept["value"] == pytest.approx(computed[-1]["val_acc"])  # what the trial computed
        assert not (cfg.folder / "trials.csv").exists()  # nothing written from a study that could not be read
        assert os.environ[PASSWORD_ENV] not in (cfg.folder / PENDING_TELLS).read_text()

        relay.restore()
        result = resume_campaign(cfg.folder)
        assert not (cfg.folder / PENDING_TELLS).exists()
        assert result.counts.get("COMPLETE") == TRIALS
        study, df = _study_matches_trials_csv(cfg)
        assert df.loc[df["trial_id"] == gated, "val_acc"].tolist() == [pytest.approx(kept["value"])]  # kept
        assert study.get_trials(states=(TrialState.COMPLETE,))[0].number == 0
        assert _runs(gate)[gated] == 1 and sum(_runs(gate).values()) == TRIALS  # not re-run, nothing re-run
        assert not stale_numbers(study)
        record = json.loads((cfg.folder / RESUME_LOG).read_text().splitlines()[-1])
        assert record["how"] == "continue" and "storage outage" in record["reason"]
    finally:
        relay.restore()
        (gate / "release").touch()
        _delete_study(cfg)
