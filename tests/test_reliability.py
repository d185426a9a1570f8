"""Reliability: atomic result files on a full disk, Ctrl-C and resume, trial time limits and worker retries, a real
out-of-memory, resume with an edited config, and the signatures that guard Tune's pickled state.

The campaigns are the real ones (Tuner, CampaignSearch, ASHA, SQLite study, ``write_results``) on the bundled
sample; faults come from test trainables that hand out one fault per trial with file tickets (exclusive file
creation works across Ray workers), so every fault happens exactly once, whatever the machine's speed.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import torch
import yaml
from conftest import GATED_RUN_TRIAL, take_ticket  # tests/ is on sys.path under pytest
from optuna.trial import TrialState
from ray import cloudpickle, tune
from typer.testing import CliRunner

import search_spaces.files as files_module
from policy_search.campaign import (
    CampaignError,
    TrialJob,
    load_study,
    make_tuner,
    prepare_data,
    ray_session,
    resume_campaign,
    run_campaign,
    run_trial,
)
from policy_search.cli import app
from policy_search.config import load_config
from policy_search.objectives import ProxyObjective
from policy_search.reliability import (
    KEY_ENV,
    RESUME_LOG,
    STATE_SIGNATURES,
    UntrustedState,
    hmac_key,
    resume_plan,
    run_guarded,
    run_records_dir,
    sign_tuner_file,
    verify_tune_state,
)
from policy_search.results import trials_table, write_results
from policy_search.session import proxy_config, save_config, stale_numbers
from search_spaces import preset, save_policy
from search_spaces.files import FileWriteError, atomic_write_text
from trainers.data import load_dataset

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/

TINY = {"train_size": 300, "val_size": 150, "proxy.epochs": 1, "proxy.width": 8, "objective": "proxy",
        "space": "randaugment", "race.enabled": False, "max_concurrent": 2, "num_cpus": 2}
runner = CliRunner()


@pytest.fixture(autouse=True)
def signing_key(monkeypatch):
    """A test signing key (the real one lives in ~/.config/policy-search/key)."""
    monkeypatch.setenv(KEY_ENV, "test-key-for-policy-search-reliability")


def tiny(tmp_path: Path, name: str, **extra: Any):
    return load_config(overrides={**TINY, "name": name, "output": str(tmp_path), **extra})


def _no_space_at(monkeypatch, name: str) -> None:
    """``os.fsync`` fails with ENOSPC for the temporary file of ``name`` (the atomic writer's own temporaries are
    ``.<name>.<random>.tmp``), as a full disk does."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(files_module.os, "fsync", fsync)


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp")]


# ---------------------------------------------------------------------------------------------
# Atomic writes


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_text(path, "old\n")
    _no_space_at(monkeypatch, "summary.json")
    with pytest.raises(FileWriteError) as info:
        atomic_write_text(path, "new\n")
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "No space left on device" in message
    assert path.read_text() == "old\n" and not _temporaries(tmp_path)
    monkeypatch.undo()
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n" and not _temporaries(tmp_path)


@pytest.mark.parametrize("victim", ["trials.csv", "summary.json"])
def test_write_results_on_a_full_disk_keeps_the_previous_results(tmp_path, monkeypatch, victim):
    cfg = tiny(tmp_path, "full")
    cfg.folder.mkdir(parents=True)
    save_config(cfg)
    data = load_dataset("sample")
    row = {"number": 0, "trial_id": "aaaa0000", "status": "COMPLETE", "val_acc": 0.5, "val_se": 0.04,
           "best_val_acc": 0.5, "epochs": 1, "val_acc_history": "0.5000", "duration_s": 1.0, "node_id": "",
           "error": "", "param_num_ops": 2, "param_magnitude": 9}
    write_results(cfg, pd.DataFrame([row]), data, wall_s=1.0)
    before = {name: (cfg.folder / name).read_bytes() for name in ("trials.csv", "summary.json")}
    better = {**row, "trial_id": "bbbb1111", "number": 1, "val_acc": 0.6, "param_magnitude": 12}
    _no_space_at(monkeypatch, victim)
    with pytest.raises(FileWriteError) as info:
        write_results(cfg, pd.DataFrame([row, better]), data, wall_s=2.0)
    assert "\n" not in str(info.value) and str(cfg.folder / victim) in str(info.value)
    assert (cfg.folder / victim).read_bytes() == before[victim]  # the previous file, intact
    assert not _temporaries(cfg.folder)
    if victim == "summary.json":  # written last: trials.csv already has the new rows, the summary the old ones
        assert len(pd.read_csv(cfg.folder / "trials.csv")) == 2
        assert json.loads((cfg.folder / "summary.json").read_text())["num_trials"] == 1


def test_the_cli_shows_a_full_disk_as_one_line_with_exit_status_2(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, "cli-full")
    cfg.folder.mkdir(parents=True)
    save_config(cfg)
    save_policy(preset("randaugment"), cfg.folder / "top_k" / "rank1.json")
    _no_space_at(monkeypatch, "rank1.json")
    result = runner.invoke(app, ["export", str(cfg.folder), "--format", "json"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot write ") and "rank1.json" in lines[0]
    assert "No space left on device" in lines[0]
    assert not (cfg.folder / "export" / "json" / "rank1.json").exists() and not _temporaries(cfg.folder)


# ---------------------------------------------------------------------------------------------
# Resume with an edited config; Tune state signatures (no Ray needed: both are checked before any restore)


def _started_campaign(tmp_path: Path, name: str, **extra: Any) -> Path:
    """A campaign folder as ``run`` leaves it before the first trial: config files and a signed ``tuner.pkl``."""
    cfg = tiny(tmp_path, name, **extra)
    cfg.folder.mkdir(parents=True)
    save_config(cfg)
    (cfg.folder / "tune").mkdir()
    (cfg.folder / "tune" / "tuner.pkl").write_bytes(b"not a real pickle: resume must refuse before reading it")
    sign_tuner_file(cfg.folder)
    return cfg.folder


def _edit(folder: Path, **changes: Any) -> None:
    doc = yaml.safe_load((folder / "config.yaml").read_text())
    for key, value in changes.items():
        section, _, leaf = key.partition("__")
        if leaf:
            doc[section][leaf] = value
        else:
            doc[key] = value
    (folder / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def test_resume_refuses_a_config_change_that_changes_finished_trials(tmp_path):
    folder = _started_campaign(tmp_path, "edited", num_trials=4)
    _edit(folder, proxy__epochs=3, seed=7)
    with pytest.raises(CampaignError) as info:
        resume_campaign(folder)
    message = str(info.value)
    assert "\n" not in message and "proxy.epochs (1 -> 3)" in message and "seed (0 -> 7)" in message
    assert "config.started.yaml" in message
    result = runner.invoke(app, ["resume", str(folder), "-q"])  # the same through the CLI: one line, status 2
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "proxy.epochs" in result.output


def test_resume_plans_allowed_changes_and_refuses_fewer_trials(tmp_path):
    folder = _started_campaign(tmp_path, "plans", num_trials=4)
    cfg = load_config(folder / "config.yaml", {"output": str(tmp_path)})
    assert resume_plan(cfg).how == "restore" and resume_plan(cfg).changes == {}
    _edit(folder, trial_timeout_s=30.0, race__seeds=3)  # applied by a restore: the guard and the race read them
    plan = resume_plan(load_config(folder / "config.yaml", {"output": str(tmp_path)}))
    assert plan.how == "restore" and plan.changes == {"trial_timeout_s": [None, 30.0], "race.seeds": [2, 3]}
    _edit(folder, num_trials=6, max_concurrent=1)  # kept by Tune's saved experiment: continue from the study
    plan = resume_plan(load_config(folder / "config.yaml", {"output": str(tmp_path)}))
    assert plan.how == "continue" and plan.changes["num_trials"] == [4, 6] and "num_trials" in plan.reason
    _edit(folder, num_trials=3)
    with pytest.raises(CampaignError, match=r"num_trials: can only grow on resume \(the campaign has 4"):
        resume_plan(load_config(folder / "config.yaml", {"output": str(tmp_path)}))


def test_tune_state_that_does_not_match_its_signature_is_refused(tmp_path, monkeypatch):
    folder = _started_campaign(tmp_path, "signed")
    verify_tune_state(folder)  # as signed
    (folder / "tune" / "searcher-state-x.pkl").write_bytes(b"planted")  # a state file this machine never wrote
    with pytest.raises(UntrustedState, match=r"tune/searcher-state-x.pkl does not match its signature"):
        verify_tune_state(folder)
    (folder / "tune" / "searcher-state-x.pkl").unlink()
    (folder / "tune" / "tuner.pkl").write_bytes(b"tampered")  # a signed file, changed
    with pytest.raises(UntrustedState) as info:
        verify_tune_state(folder)
    assert "\n" not in str(info.value) and "tune/tuner.pkl" in str(info.value)
    assert "--from-study" in str(info.value) and "--trust" in str(info.value)
    result = runner.invoke(app, ["resume", str(folder), "-q"])  # refused before anything is unpickled
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "does not match" in result.output
    sign_tuner_file(folder)  # signed again with this key: accepted; with another key: refused
    verify_tune_state(folder)
    monkeypatch.setenv(KEY_ENV, "somebody-elses-key-0123456789")
    with pytest.raises(UntrustedState, match="does not match"):
        verify_tune_state(folder)
    (folder / STATE_SIGNATURES).unlink()
    with pytest.raises(UntrustedState, match=f"no {STATE_SIGNATURES}"):
        verify_tune_state(folder)


def test_the_signing_key_file_is_made_once_and_private(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    key = hmac_key()
    path = tmp_path / "policy-search" / "key"
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600 and hmac_key() == key
    path.chmod(0o644)
    with pytest.raises(CampaignError, match="readable by other users"):
        hmac_key()


@pytest.mark.parametrize("error", [ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379"),
                                   "authentication"])
def test_a_cluster_that_refuses_the_driver_is_one_line_naming_ray_address_and_the_token(tmp_path, monkeypatch, error):
    """A driver without the cluster's token (ray raises AuthenticationError) or with no cluster there
    (ConnectionError): `policy-search run --address` prints one line naming the key and the token, exit 2."""
    import ray
    from ray.exceptions import AuthenticationError

    exc = AuthenticationError("Token mismatch\nmore detail") if error == "authentication" else error

    def refuse(*args, **kwargs):
        raise exc

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # (another module's local Ray may still run)
    monkeypatch.setattr(ray, "init", refuse)
    result = CliRunner().invoke(app, ["run", "--address", "10.0.0.1:6379", "--output", str(tmp_path), "--trials",
                                      "1", "--train-size", "100", "--val-size", "50", "-q"])
    assert result.exit_code == 2, result.output
    line = f"error: ray_address: cannot join the Ray cluster at 10.0.0.1:6379 ({type(exc).__name__}: "
    errors = [text for text in result.output.splitlines() if text.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(line), result.output
    assert "RAY_AUTH_MODE=token" in errors[0] and "Traceback" not in result.output


def test_an_error_recorded_in_an_earlier_driver_run_is_not_replayed(tmp_path, monkeypatch):
    """A retry in the same driver run raises the recorded error without running; a resumed run (a new records
    folder) runs the trial, even if a worker of the killed run recorded an error for it late."""

    class Context:
        def get_trial_id(self) -> str:
            return "trial_1"

    monkeypatch.setattr(tune, "get_context", Context)
    killed_run, resumed_run = run_records_dir(tmp_path), run_records_dir(tmp_path)
    assert killed_run != resumed_run and killed_run.parent == resumed_run.parent == tmp_path / "trial_errors"
    calls = []

    def raises(config):
        calls.append(config)
        raise RuntimeError("gate released without a kill")

    for _ in range(2):  # the first attempt runs and records; the retry in the same run replays without running
        with pytest.raises(RuntimeError, match="gate released without a kill"):
            run_guarded(raises, {"x": 1}, str(killed_run), None)
    assert len(calls) == 1
    assert run_guarded(lambda config: config["x"] + 1, {"x": 1}, str(resumed_run), None) == 2


# ---------------------------------------------------------------------------------------------
# Trials that hang, lose their worker or run out of memory (real campaigns)



def _note(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text + "\n")


def hang_or_die_trial(config: dict[str, Any], *, job: TrialJob, payload: Any, tickets: str) -> None:
    """Ticket 0 hangs (waits for a file nobody creates); the trial that takes ticket 1 has its worker process
    killed on its first attempt; the others (and that trial's retry) are the campaign's real trial."""
    folder = Path(tickets)
    trial_id = tune.get_context().get_trial_id()
    _note(folder / f"attempts-{trial_id}", str(os.getpid()))
    if (folder / f"retry-{trial_id}").exists():  # the retry of the killed trial
        run_trial(config, job=job, payload=payload)
        return
    ticket = take_ticket(folder)
    if ticket == 0:
        (folder / "hung").write_text(trial_id)
        while not (folder / "never").exists():
            time.sleep(0.05)
    elif ticket == 1:
        (folder / "killed").write_text(trial_id)
        (folder / f"retry-{trial_id}").touch()
        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies: a system failure, not an error of the trial
    run_trial(config, job=job, payload=payload)


def _run_with(cfg, trial_fn, tickets: Path) -> pd.DataFrame:
    """What run_campaign does, with a test trainable (wrapped by make_tuner in the same trial guard)."""
    cfg.folder.mkdir(parents=True)
    save_config(cfg)
    data, _, proxy_data = prepare_data(cfg)
    job = TrialJob(cfg.space, dict(cfg.space_options), ProxyObjective(proxy_config(cfg)))
    trainable = tune.with_parameters(trial_fn, job=job, payload=proxy_data, tickets=str(tickets))
    with ray_session(cfg):
        grid = make_tuner(cfg, trainable).fit()
    write_results(cfg, trials_table(cfg, grid, load_study(cfg)), data, wall_s=1.0)
    return pd.read_csv(cfg.folder / "trials.csv")


@pytest.mark.slow
def test_a_hung_trial_times_out_and_a_killed_worker_is_retried_once(tmp_path, ray_local):
    tickets = tmp_path / "tickets"
    tickets.mkdir()
    cfg = tiny(tmp_path / "out", "hang", num_trials=4, trial_timeout_s=20, max_failures=1)  # real trials take ~3 s
    df = _run_with(cfg, hang_or_die_trial, tickets)
    hung, killed = (tickets / "hung").read_text(), (tickets / "killed").read_text()

    assert len(df) == 4 and df["trial_id"].is_unique  # the campaign completed its trials
    row = df.set_index("trial_id").loc[hung]
    assert row["status"] == "FAILED" and row["error"] == "TrialTimeout: timed out after 20 s (trial_timeout_s)"
    assert len((tickets / f"attempts-{hung}").read_text().split()) == 1  # its retry raised again, without running
    row = df.set_index("trial_id").loc[killed]
    assert row["status"] == "COMPLETE" and row["val_acc"] > 0  # retried after the worker died, counted once
    pids = (tickets / f"attempts-{killed}").read_text().split()
    assert len(pids) == 2 and pids[0] != pids[1]  # two attempts, in two worker processes
    assert (df["status"] == "COMPLETE").sum() == 3

    study = load_study(cfg)
    by_id = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert len(study.trials) == 4 and set(by_id) == set(df["trial_id"])
    assert by_id[hung].state == TrialState.FAIL and by_id[killed].state == TrialState.COMPLETE
    assert not study.get_trials(states=(TrialState.RUNNING,))


def oom_trial(config: dict[str, Any], *, job: TrialJob, payload: Any, tickets: str) -> None:
    """Ticket 0 caps its worker's address space (``RLIMIT_AS``) a little above what it uses, then allocates a
    tensor far past the cap, then restores the limit (the worker is reused by the next trial); the others are the
    campaign's real trial."""
    folder = Path(tickets)
    if take_ticket(folder) == 0:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        in_use = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (in_use + (512 << 20), hard))
        try:
            torch.zeros(16 << 30, dtype=torch.uint8)  # 16 GiB
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
            (folder / "limit-after").write_text(json.dumps([resource.getrlimit(resource.RLIMIT_AS), [soft, hard]]))
    run_trial(config, job=job, payload=payload)


@pytest.mark.slow
def test_a_real_out_of_memory_fails_its_trial_and_the_campaign_completes(tmp_path, ray_local):
    tickets = tmp_path / "tickets"
    tickets.mkdir()
    cfg = tiny(tmp_path / "out", "oom", num_trials=3, max_concurrent=1)
    df = _run_with(cfg, oom_trial, tickets)

    assert len(df) == 3 and df["trial_id"].is_unique
    failed = df[df["status"] == "FAILED"]
    assert len(failed) == 1, df[["status", "error"]]
    error = failed["error"].iloc[0]
    assert error.startswith("MemoryError: out of memory") and "can't allocate memory" in error
    assert (df["status"] == "COMPLETE").sum() == 2
    now, before = json.loads((tickets / "limit-after").read_text())
    assert now == before  # the limit was restored (a reused worker would keep it otherwise)
    study = load_study(cfg)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE", "FAIL"]


# ---------------------------------------------------------------------------------------------
# Ctrl-C, then resume; resume with more trials

FINISHED_BEFORE_CTRL_C = 2
CTRL_C_TRIALS = 4
# The driver runs `policy-search run` (the real CLI) with run_trial wrapped by a gate: the trial that claims slot
# FINISHED_BEFORE_CTRL_C blocks until the test has sent SIGINT (the same gate as test_campaign's kill -9 test).
_DRIVER = GATED_RUN_TRIAL + textwrap.dedent("""
    from policy_search.cli import app

    output, gate, finish = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    gate_trials(gate, finish, "a Ctrl-C")
    app(["run", "--output", output, "--name", "ctrlc", "--trials", sys.argv[4], "--max-concurrent", "1",
         "--train-size", "300", "--val-size", "150", "--objective", "proxy", "--space", "randaugment",
         "--epochs", "1", "--width", "8", "--no-race", "-q"], prog_name="policy-search")
""")


@pytest.mark.slow
def test_ctrl_c_marks_running_trials_interrupted_and_resume_completes(tmp_path, ray_local):
    gate = tmp_path / "gate"
    gate.mkdir()
    log = tmp_path / "driver.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-c", _DRIVER, str(tmp_path), str(gate), str(FINISHED_BEFORE_CTRL_C),
                                 str(CTRL_C_TRIALS)], env=dict(os.environ), start_new_session=True,
                                stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    cfg = load_config(overrides={"output": str(tmp_path), "name": "ctrlc"})
    folder = cfg.folder

    def finished_in_study() -> int:
        try:
            return sum(t.state == TrialState.COMPLETE for t in
                       optuna.load_study(study_name="ctrlc", storage=cfg.storage_url()).trials)
        except Exception:  # noqa: BLE001 - the driver creates the study a few seconds in
            return 0

    try:
        while not ((gate / "blocked").exists() and finished_in_study() == FINISHED_BEFORE_CTRL_C):
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "timed out waiting for the gated trial"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGINT)  # one Ctrl-C, to the driver only
        status = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        (gate / "release").touch()
    output = log.read_text(errors="replace")
    assert status == 130, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("interrupted: ")]
    assert lines == [f"interrupted: 1 unfinished trial(s) marked INTERRUPTED, results so far in {folder}; "
                     f"continue with: policy-search resume {folder}"], output[-3000:]

    df = pd.read_csv(folder / "trials.csv")
    assert sorted(df["status"]) == ["COMPLETE"] * FINISHED_BEFORE_CTRL_C + ["INTERRUPTED"]
    cut = df[df["status"] == "INTERRUPTED"].iloc[0]
    assert pd.isna(cut["val_acc"]) and "interrupted (Ctrl-C)" in cut["error"]
    assert json.loads((folder / "summary.json").read_text())["counts"]["INTERRUPTED"] == 1
    study = load_study(cfg)
    by_id = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert by_id[cut["trial_id"]].state == TrialState.FAIL and by_id[cut["trial_id"]].number in stale_numbers(study)
    assert not study.get_trials(states=(TrialState.RUNNING,))

    result = resume_campaign(folder)  # Tune's state is signed: restored; the interrupted trial runs again
    df = pd.read_csv(result.folder / "trials.csv")
    assert len(df) == CTRL_C_TRIALS and df["trial_id"].is_unique and (df["status"] == "COMPLETE").all()
    assert cut["trial_id"] in set(df["trial_id"])
    study = load_study(cfg)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.user_attrs["tune_trial_id"] for t in complete) == sorted(df["trial_id"])  # study == CSV
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert json.loads((folder / RESUME_LOG).read_text().splitlines()[-1])["tune_state"] == "signatures match"


@pytest.mark.slow
def test_resume_with_more_trials_continues_from_the_study(tmp_path, ray_local):
    cfg = tiny(tmp_path, "grow", num_trials=2)
    run_campaign(cfg)
    before = pd.read_csv(cfg.folder / "trials.csv")
    _edit(cfg.folder, num_trials=4)
    result = resume_campaign(cfg.folder)
    df = pd.read_csv(result.folder / "trials.csv")
    assert len(df) == 4 and df["trial_id"].is_unique and (df["status"] == "COMPLETE").all()
    assert set(before["trial_id"]) < set(df["trial_id"])  # the first two kept, two more run
    kept = df.set_index("trial_id").loc[before["trial_id"], "val_acc"]
    assert kept.tolist() == pytest.approx(before["val_acc"].tolist())
    study = load_study(cfg)
    assert sum(t.state.is_finished() for t in study.trials) == 4
    record = json.loads((cfg.folder / RESUME_LOG).read_text().splitlines()[-1])
    assert record["how"] == "continue" and record["changes"] == {"num_trials": [2, 4]}
    assert list((cfg.folder / "tune").glob("superseded-*/tuner.pkl"))  # the first experiment's state, set aside
    verify_tune_state(cfg.folder)  # the new experiment's state is signed
    assert json.loads((cfg.folder / "summary.json").read_text())["config"]["num_trials"] == 4
