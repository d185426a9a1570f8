"""What keeps a search campaign's results sound when things go wrong: a trial that hangs, raises or loses its
worker, a Ctrl-C, a resume with an edited config, and Tune's pickled state on disk.

* **Trial guard** (:func:`guard_trainable`, runs in the Ray worker): a trial running longer than
  ``trial_timeout_s`` gets :class:`TrialTimeout` ("timed out after N s"). Ray Tune's ``FailureConfig(max_failures)``
  retries every failed trial, the ones that raised included, so the guard keeps errors from being retried: a trial
  that raises records its error (``<folder>/trial_errors/<driver run>/<trial id>.json``) and a retry of it in the
  same driver run raises the same error again at once, without running. Only a trial whose worker process died (a
  system failure: no record) really runs again, up to ``max_failures`` times. An allocation past the memory limit
  is reported as ``MemoryError: out of memory ...``.
* **Ctrl-C** (:class:`InterruptWatch`, a Tune callback in the driver): the first SIGINT still ends the Tune run
  gracefully (Tune's own handler: it saves the experiment), and the callback records which trials were cut
  short, so the campaign marks them ``INTERRUPTED`` (``trials.csv``) and FAIL (study, as stale), writes the results,
  skips the race and raises :class:`CampaignInterrupted` (one line saying how to resume).
* **Tune state trust** (:class:`StateSigner`, :func:`verify_tune_state`): ``Tuner.restore`` unpickles the files in
  ``tune/`` (running code), so every state file this driver writes is signed (HMAC-SHA256 with a per-user key) in
  ``<folder>/tune_state.sha256``, and resume refuses state whose signature does not match.
* **Resume config** (:func:`resume_plan`): resume compares ``config.yaml`` with ``config.started.yaml`` (written
  when the campaign started); a change that alters what the finished trials mean is refused, naming the keys.
* **Storage outage** (:func:`retry_storage`, :class:`StorageUnavailable`): every study call of the searcher retries
  an unreachable storage with backoff for ``storage_retry_s``; past that the searcher keeps the results the study
  could not take in ``<folder>/pending_tells.json`` (:func:`write_pending`), the experiment stops and resume tells
  them to the study before anything else.
"""

from __future__ import annotations

import builtins
import ctypes
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from ray import tune

from search_spaces.errors import one_line
from search_spaces.files import atomic_write_text

from .config import CampaignConfig, validate_config
from .session import STARTED_CONFIG, CampaignError, tune_dir

__all__ = ["CampaignInterrupted", "TrialTimeout", "UntrustedState", "StorageUnavailable", "INTERRUPTED", "MARKER_DIR",
           "STATE_SIGNATURES", "KEY_ENV", "STARTED_CONFIG", "RESUME_LOG", "guard_trainable", "run_records_dir",
           "clear_trial_records",
           "InterruptWatch", "take_interrupted", "mark_interrupted", "StateSigner", "sign_tuner_file",
           "verify_tune_state", "set_tune_state_aside", "ResumePlan", "resume_plan", "log_resume", "hmac_key",
           "PENDING_TELLS", "is_storage_outage", "retry_storage", "write_pending", "read_pending", "outage_message"]

logger = logging.getLogger(__name__)

INTERRUPTED = "INTERRUPTED"  # trials.csv status of a trial cut short by Ctrl-C (resume runs it again)
MARKER_DIR = "trial_errors"  # <folder>/trial_errors/<run>/<trial id>.json: the error a retry (same run) raises again
INTERRUPT_FILE = "interrupted.json"  # written by InterruptWatch when a SIGINT ended the Tune run
STATE_SIGNATURES = "tune_state.sha256"  # signed digests of the Tune state files this machine wrote
KEY_ENV = "POLICY_SEARCH_HMAC_KEY"  # overrides the key file (tests, shared service accounts)
RESUME_LOG = "resume_log.jsonl"  # one line per resume: when, what changed, how it resumed
PENDING_TELLS = "pending_tells.json"  # results a storage outage kept from the study (resume tells them)
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 10.0  # storage retries: the first wait, doubling up to this


class CampaignInterrupted(CampaignError):
    """The campaign was interrupted (Ctrl-C); the results so far are written; the message says how to resume."""


class TrialTimeout(RuntimeError):
    """A trial ran longer than ``trial_timeout_s``."""


class UntrustedState(CampaignError):
    """Tune's saved state in ``tune/`` does not match the signatures this machine wrote (or has none)."""


class StorageUnavailable(CampaignError):
    """The study's storage stayed unreachable for ``storage_retry_s``; one line naming the storage (never its
    password), how long and the last error."""


# ---------------------------------------------------------------------------------------------
# Trial guard (runs in the Ray worker)


class _TimeUp(BaseException):
    """Raised asynchronously in the trial's thread at its deadline (a BaseException: no ``except Exception`` in
    the training code swallows it)."""


def guard_trainable(config: CampaignConfig, trainable: Callable[[dict[str, Any]], Any]) -> Callable:
    """``trainable`` (a function trainable, e.g. ``tune.with_parameters(run_trial, ...)``) wrapped by the trial
    guard (see the module docstring), with the campaign's per-trial resources. The wrapper keeps the trainable's
    name, the key ``Tuner.restore`` checks."""
    markers = str(run_records_dir(config.folder))
    timeout = config.trial_timeout_s

    def guarded(trial_config: dict[str, Any]) -> Any:
        return run_guarded(trainable, trial_config, markers, timeout)

    guarded.__name__ = guarded.__qualname__ = getattr(trainable, "__name__", "trainable")
    return tune.with_resources(guarded, {"cpu": config.resources.cpu, "gpu": config.resources.gpu})


def run_records_dir(folder: str | os.PathLike) -> Path:
    """A new folder for one driver run's trial error records, ``<folder>/trial_errors/<random>``. A resume is a new
    run: a worker of a killed driver that outlives it and records its error late cannot make the resumed run's
    attempt of that trial replay the error."""
    return Path(folder) / MARKER_DIR / secrets.token_hex(6)


def run_guarded(trainable: Callable[[dict[str, Any]], Any], config: dict[str, Any], markers: str,
                timeout_s: float | None) -> Any:
    """Run one trial attempt under the guard (worker side)."""
    marker = Path(markers) / f"{tune.get_context().get_trial_id()}.json"
    recorded = _read_record(marker)
    if recorded is not None:  # a retry after the trial raised: raise that error again, do not run it again
        raise _replay(recorded)
    deadline = _Deadline(timeout_s, marker) if timeout_s else None
    try:
        try:
            return trainable(config)
        finally:
            if deadline is not None:
                deadline.stop()
    except _TimeUp:
        exc: Exception = TrialTimeout(f"timed out after {timeout_s:g} s (trial_timeout_s)")
        _write_record(marker, exc)
        raise exc from None
    except RuntimeError as exc:
        if "can't allocate memory" not in str(exc):  # torch's CPU allocator
            _write_record(marker, exc)
            raise
        oom = MemoryError(f"out of memory: {one_line(str(exc).strip().splitlines()[-1])}")
        _write_record(marker, oom)
        raise oom from None
    except MemoryError as exc:
        oom = MemoryError(f"out of memory: {one_line(str(exc)) if str(exc) else 'an allocation failed'}")
        _write_record(marker, oom)
        raise oom from None
    except Exception as exc:
        _write_record(marker, exc)
        raise


class _Deadline:
    """Raises :class:`_TimeUp` in the trial's thread after ``seconds``; if the thread does not get back to Python
    (stuck in one native call) within a grace period, records the timeout and ends the worker process (the retry
    then raises :class:`TrialTimeout` without running)."""

    GRACE_S = 30.0

    def __init__(self, seconds: float, marker: Path) -> None:
        self.seconds, self.marker = seconds, marker
        self.ident = threading.get_ident()
        self.lock = threading.Lock()
        self.done = self.fired = False
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True
        self.hard: threading.Timer | None = None
        self.timer.start()

    def _fire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.fired = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.ident), ctypes.py_object(_TimeUp))
            self.hard = threading.Timer(self.GRACE_S, self._kill)
            self.hard.daemon = True
            self.hard.start()

    def _kill(self) -> None:
        with self.lock:
            if self.done:
                return
        _write_record(self.marker, TrialTimeout(f"timed out after {self.seconds:g} s (trial_timeout_s; the trial "
                                                f"did not stop within {self.GRACE_S:g} s, its worker was ended)"))
        os._exit(70)  # the trial's worker process: Tune sees a dead worker and retries, which raises the timeout

    def stop(self) -> None:
        with self.lock:
            self.done = True
            self.timer.cancel()
            if self.hard is not None:
                self.hard.cancel()
            if not self.fired:
                return
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.ident), None)  # drop a pending one
        raise _TimeUp


def _write_record(marker: Path, exc: BaseException) -> None:
    """Record a trial's error for its retries (best effort: a worker that cannot write it lets Tune retry)."""
    try:
        atomic_write_text(marker, json.dumps({"type": type(exc).__name__, "message": str(exc)[:4000]}))
    except OSError:
        pass


def _read_record(marker: Path) -> dict[str, str] | None:
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(record, dict) and isinstance(record.get("type"), str)):
        return None
    return {"type": record["type"], "message": str(record.get("message", ""))}


def _replay(record: dict[str, str]) -> Exception:
    """The recorded error again: a built-in exception type as itself, any other as an exception class of that
    name (the record is JSON, never unpickled: nothing in it runs)."""
    name = record["type"] if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,99}", record["type"]) else "TrialError"
    cls = getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = TrialTimeout if name == TrialTimeout.__name__ else type(name, (RuntimeError,), {})
    try:
        return cls(record["message"])
    except Exception:  # noqa: BLE001 - a built-in that takes other arguments
        return type(name, (RuntimeError,), {})(record["message"])


def clear_trial_records(folder: Path) -> None:
    """Forget the recorded trial errors (before resuming: ``--retry-errored`` runs errored trials again)."""
    shutil.rmtree(Path(folder) / MARKER_DIR, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Ctrl-C (driver side)


def _campaign_folder(trials: Iterable[Any], fallback: str) -> Path:
    """The campaign folder: where the (restored, maybe moved) experiment's trials live, else ``fallback``."""
    for trial in trials:
        path = getattr(trial, "path", None)
        if path:
            return Path(path).parent.parent  # <folder>/tune/<trial id>
    return Path(fallback)


class InterruptWatch(tune.Callback):
    """Records the trials a SIGINT cut short. Tune installs its SIGINT handler (end the run gracefully, once)
    before it calls :meth:`setup`; this callback puts a handler in front of it that notes the signal and passes
    it on. At the end of the experiment, if a SIGINT came, ``<folder>/interrupted.json`` lists the trials that
    were running or waiting (read it with :func:`take_interrupted`)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = str(folder)
        self._reset()

    def _reset(self) -> None:
        self.interrupted = False
        self.started: set[str] = set()
        self.ended: set[str] = set()
        self.chained: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder}  # Tune pickles its callbacks: no handler, no run state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.folder = state["folder"]
        self._reset()

    def setup(self, **info: Any) -> None:
        self._reset()
        (Path(self.folder) / INTERRUPT_FILE).unlink(missing_ok=True)
        if threading.current_thread() is threading.main_thread():
            self.chained = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.interrupted = True
        if callable(self.chained):
            self.chained(signum, frame)  # Tune's handler: stop after a last snapshot (it then restores its own)
        else:
            raise KeyboardInterrupt

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == self._on_sigint:
            signal.signal(signal.SIGINT, self.chained if self.chained is not None else signal.default_int_handler)
        if not self.interrupted:
            return
        cut = [t.trial_id for t in trials
               if (t.trial_id in self.started and t.trial_id not in self.ended) or t.status in ("PENDING", "PAUSED")]
        atomic_write_text(_campaign_folder(trials, self.folder) / INTERRUPT_FILE,
                          json.dumps({"trial_ids": cut, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")


def take_interrupted(folder: Path) -> list[str] | None:
    """The Tune trial ids a SIGINT cut short in the run that just ended (``None``: no SIGINT); consumes the
    record."""
    path = Path(folder) / INTERRUPT_FILE
    try:
        ids = json.loads(path.read_text())["trial_ids"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    path.unlink(missing_ok=True)
    return [str(i) for i in ids]


def mark_interrupted(df: pd.DataFrame, trial_ids: Iterable[str]) -> pd.DataFrame:
    """``trials.csv`` rows of the interrupted trials: status ``INTERRUPTED``, no score, the reason as error."""
    ids = set(trial_ids)
    if df.empty or not ids:
        return df
    df = df.copy()
    cut = df["trial_id"].isin(ids)
    df.loc[cut, "status"] = INTERRUPTED
    for col in ("val_acc", "val_se"):
        if col in df:
            df.loc[cut, col] = math.nan
    df["error"] = df["error"].astype(object)
    df.loc[cut, "error"] = "interrupted (Ctrl-C) while running; resume runs it again"
    return df


# ---------------------------------------------------------------------------------------------
# Tune state trust


def hmac_key() -> bytes:
    """The per-user signing key: ``$POLICY_SEARCH_HMAC_KEY``, else ``~/.config/policy-search/key`` (created on
    first use, mode 0600, 32 random bytes as hex)."""
    env = os.environ.get(KEY_ENV)
    if env:
        return env.encode()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "policy-search"
    path = base / "key"
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        if path.stat().st_mode & 0o077:
            raise CampaignError(f"{path}: the signing key is readable by other users; chmod 600 it (or delete it: "
                                "campaigns signed with it then need --trust to resume)")
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise CampaignError(f"{path}: cannot read or create the signing key ({one_line(exc)}); "
                            f"set ${KEY_ENV} instead") from None
    if len(key) < 16:
        raise CampaignError(f"{path}: the signing key is too short; delete it to make a new one")
    return key


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _mac(key: bytes, campaign: str, relpath: str, digest: str) -> str:
    return hmac.new(key, f"{campaign}\0{relpath}\0{digest}".encode(), hashlib.sha256).hexdigest()


def _read_signatures(folder: Path, key: bytes) -> dict[str, list[str]] | None:
    """relpath -> digests with a valid signature, newest last (``None``: no signature file)."""
    path = folder / STATE_SIGNATURES
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    signed: dict[str, list[str]] = {}
    for line in lines:
        parts = line.split("  ", 2)
        if len(parts) != 3 or line.startswith("#"):
            continue
        mac, digest, relpath = parts
        if hmac.compare_digest(mac, _mac(key, folder.name, relpath, digest)):
            signed.setdefault(relpath, []).append(digest)
    return signed


def _sign(folder: Path, files: Mapping[str, Path]) -> None:
    """Add the digests of ``files`` (relpath in ``tune/`` -> the file to hash) to the signature file, keeping the
    two newest per file (Tune's copy to ``tune/`` may lag one snapshot behind)."""
    if not files:
        return
    key = hmac_key()
    signed = _read_signatures(folder, key) or {}
    for relpath, path in sorted(files.items()):
        try:
            digest = _sha256(path)
        except OSError:
            continue
        kept = [d for d in signed.get(relpath, []) if d != digest][-1:]
        signed[relpath] = [*kept, digest]
    lines = ["# Signed digests of the Ray Tune state files in tune/ (HMAC-SHA256 of campaign, file, sha256 with the",
             "# per-user key); resume refuses state that does not match. Format: hmac  sha256  file"]
    for relpath in sorted(signed):
        lines += [f"{_mac(key, folder.name, relpath, d)}  {d}  {relpath}" for d in signed[relpath]]
    atomic_write_text(folder / STATE_SIGNATURES, "\n".join(lines) + "\n")


def _state_files(exp: Path) -> dict[str, Path]:
    """The files of a Tune experiment folder that ``Tuner.restore`` unpickles: every top-level ``.pkl`` and
    ``.json`` (tuner, experiment, search and callback state) and each trial's ``error.pkl``."""
    if not exp.is_dir():
        return {}
    files = {p.name: p for p in exp.iterdir() if p.is_file() and p.suffix in (".pkl", ".json")}
    files.update({f"{p.parent.name}/{p.name}": p for p in exp.glob("*/error.pkl") if p.is_file()})
    return files


def sign_tuner_file(folder: Path) -> None:
    """Sign ``tune/tuner.pkl`` (``tune.Tuner`` writes it once, when it is made)."""
    path = tune_dir(folder) / "tuner.pkl"
    if path.is_file():
        _sign(Path(folder), {"tuner.pkl": path})


class StateSigner(tune.Callback):
    """Signs the Tune state the driver writes, before Tune copies it to ``tune/``: the experiment snapshot and
    searcher state (from :meth:`get_state`, which Tune calls while it saves a snapshot, after writing them to its
    staging folder) and each trial's ``error.pkl`` (when it errors)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = str(folder)
        self.staging: str | None = None
        self.trials: list = []  # Tune's own list of the experiment's trials (it grows in place)
        self.seen: dict[str, tuple[int, int]] = {}  # file -> (mtime_ns, size) when last signed

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "staging": None, "trials": [], "seen": {}}

    def _where(self, trials: Iterable[Any]) -> None:
        for trial in trials:
            storage = getattr(trial, "storage", None)
            if storage is not None:
                self.staging = storage.experiment_driver_staging_path
                self.folder = str(_campaign_folder([trial], self.folder))
                return

    def setup(self, **info: Any) -> None:
        self.staging, self.trials, self.seen = None, [], {}

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self.trials = trials  # the first snapshot comes later in this step, after the first trials are added
        if self.staging is None:
            self._where(trials)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.staging is None:
            self._where(trials)
        if self.staging is not None:  # callback state is saved after get_state: sign it here
            files = {p.name: p for p in Path(self.staging).glob("callback-states-*.pkl")}
            if files:
                self._sign_new(files)

    def get_state(self) -> dict | None:
        if self.staging is None:
            self._where(self.trials)
        if self.staging is not None:
            _sign(Path(self.folder), _state_files(Path(self.staging)))  # written for this snapshot, not yet copied
        return None  # nothing to save: this callback keeps no state

    def _sign_new(self, files: Mapping[str, Path]) -> None:
        """Sign the files that changed since this callback last signed them."""
        fresh = {}
        for name, path in files.items():
            try:
                st = path.stat()
            except OSError:
                continue
            if self.seen.get(str(path)) != (st.st_mtime_ns, st.st_size):
                fresh[name] = path
                self.seen[str(path)] = (st.st_mtime_ns, st.st_size)
        _sign(Path(self.folder), fresh)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._sign_error(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._sign_error(trial)

    def _sign_error(self, trial: Any) -> None:
        local = getattr(trial, "local_path", None)
        if local and (Path(local) / "error.pkl").is_file():
            self.folder = str(_campaign_folder([trial], self.folder))
            _sign(Path(self.folder), {f"{Path(local).name}/error.pkl": Path(local) / "error.pkl"})


def verify_tune_state(folder: Path) -> None:
    """Check every file ``Tuner.restore`` would unpickle from ``<folder>/tune`` against the signatures; raise
    :class:`UntrustedState` (one line) for a missing, unsigned or changed one."""
    folder = Path(folder)
    hint = (f"resume from the study alone (policy-search resume {folder} --from-study) or, if you trust this "
            "folder, pass --trust")
    signed = _read_signatures(folder, hmac_key())
    if signed is None:
        raise UntrustedState(f"{folder}: no {STATE_SIGNATURES} (Tune's state was not signed on this machine by this "
                             f"user, or predates signing), so its pickles are not restored; {hint}")
    files = _state_files(tune_dir(folder))
    bad = sorted(rel for rel, path in files.items() if _sha256(path) not in signed.get(rel, ()))
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UntrustedState(f"{folder}: tune/{bad[0]}{more} does not match its signature in {STATE_SIGNATURES} "
                             f"(changed since this machine wrote it, or signed with another key); Tune's state is "
                             f"unpickled on resume, which runs code; {hint}")


def set_tune_state_aside(folder: Path) -> Path | None:
    """Move Tune's experiment state (the top-level files of ``tune/``) into ``tune/superseded-<time>/`` before a
    new experiment continues the campaign from its study; the trial folders stay. Returns the new folder."""
    exp = tune_dir(folder)
    files = [p for p in exp.iterdir() if p.is_file() and p.suffix in (".pkl", ".json")] if exp.is_dir() else []
    if not files:
        return None
    aside = exp / f"superseded-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    aside.mkdir(parents=True)
    for p in files:
        p.rename(aside / p.name)
    return aside


# ---------------------------------------------------------------------------------------------
# Storage outage (driver side)


def _outage_cause(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s explicit cause chain that says the storage is unreachable, else ``None``."""
    from sqlalchemy import exc as sa

    seen: set[int] = set()
    current: BaseException | None = None if isinstance(exc, StorageUnavailable) else exc  # (given up already)
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa.OperationalError | sa.InterfaceError | sa.DisconnectionError | sa.TimeoutError
                      | OSError):
            return current  # OSError: ConnectionError, a socket or file the storage could not reach
        if isinstance(current, sa.DBAPIError) and current.connection_invalidated:
            return current
        current = current.__cause__  # Optuna raises StorageInternalError from the SQLAlchemy error
    return None


def is_storage_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a storage or connection failure worth retrying:
    SQLAlchemy's ``OperationalError``/``InterfaceError``/a dropped connection, ``ConnectionError``, ``OSError``;
    not a programming error (``IntegrityError``, ``ProgrammingError``, ``ValueError``, ...)."""
    return _outage_cause(exc) is not None


def _shown(url: str) -> tuple[str, str | None]:
    """The storage URL without its password, and the password (to keep it out of messages)."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        return parsed._replace(password=None).render_as_string(hide_password=False), parsed.password
    except Exception:  # noqa: BLE001 - not a URL: show nothing of it
        return "the study storage", None


def retry_storage(call: Callable[[], Any], *, window_s: float, storage: str, what: str = "",
                  sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> Any:
    """``call()``, retried while it fails with a storage outage (:func:`is_storage_outage`): waits of
    ``RETRY_FIRST_S`` doubling up to ``RETRY_MAX_S`` until ``window_s`` seconds have passed since the first failure,
    then :class:`StorageUnavailable` (one line naming ``storage`` without its password). Any other error is
    raised at once. The call must be safe to repeat (Optuna's ``tell(skip_if_finished=True)``, ``report``,
    ``set_user_attr``, ``create_study(load_if_exists=True)``, ...)."""
    deadline: float | None = None
    delay = RETRY_FIRST_S
    while True:
        try:
            result = call()
        except Exception as exc:
            cause = _outage_cause(exc)
            if cause is None:
                raise
            now = clock()
            if deadline is None:
                deadline = now + window_s
                shown, _ = _shown(storage)
                logger.warning("storage %s unreachable%s (%s); retrying for up to %g s", shown,
                               f" ({what})" if what else "", type(cause).__name__, window_s)
            left = deadline - now
            if left <= 0:
                shown, password = _shown(storage)
                detail = one_line(getattr(cause, "orig", None) or cause)
                if password:
                    detail = detail.replace(password, "***")
                raise StorageUnavailable(f"storage: {shown} unreachable for {window_s:g} s ({detail})") from exc
            sleep(min(delay, left))
            delay = min(delay * 2, RETRY_MAX_S)
            continue
        if deadline is not None:
            logger.warning("storage %s reachable again%s", _shown(storage)[0], f" ({what})" if what else "")
        return result


def write_pending(folder: str | os.PathLike, failure: str, tells: list[dict[str, Any]]) -> Path:
    """``<folder>/pending_tells.json`` (atomic): the storage failure and the results the study could not take,
    one ``{"number", "tune_trial_id", "state", "value", "reports": {step: value}, "rerun"}`` each."""
    doc = {"failure": failure, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "tells": tells}
    return atomic_write_text(Path(folder) / PENDING_TELLS, json.dumps(doc, indent=1, allow_nan=False) + "\n")


def read_pending(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The record :func:`write_pending` left (``None``: no outage stopped the campaign); CampaignError (one line)
    for a file that is not such a record."""
    path = Path(folder) / PENDING_TELLS
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CampaignError(f"{path}: unreadable ({one_line(exc)}); fix or restore it (it holds results not yet in "
                            "the study)") from None
    tells = doc.get("tells") if isinstance(doc, dict) else None
    if not isinstance(tells, list) or not all(isinstance(t, dict) and isinstance(t.get("number"), int)
                                              and t.get("state") in ("COMPLETE", "PRUNED", "FAIL") for t in tells):
        raise CampaignError(f"{path}: not a pending-results record; fix or restore it (it holds results not yet in "
                            "the study)")
    return doc


def outage_message(folder: Path, pending: dict[str, Any]) -> str:
    """The campaign's one line after a storage outage stopped it."""
    return (f"{pending.get('failure') or 'storage unreachable'}; {len(pending['tells'])} finished result(s) kept in "
            f"{PENDING_TELLS}; continue with: policy-search resume {folder}")


# ---------------------------------------------------------------------------------------------
# Resume with a changed config

#: Keys a resume applies as they are (the Ray session, the trial guard, what runs after the search).
APPLIED_KEYS = ("ray_address", "num_cpus", "dashboard", "trial_timeout_s", "storage_retry_s", "top_k", "race.")
#: Keys Ray Tune keeps from the saved experiment (``Tuner.restore`` restores them with its state), so a change
#: continues the campaign from its study in a new Tune experiment (``num_trials`` may only grow).
CONTINUE_KEYS = ("num_trials", "max_concurrent", "resources.", "max_failures", "tracking", "reuse_actors")
_IGNORED = ("output",)  # where the folder is now (the folder may move)
_NESTED = ("target", "proxy", "finetune", "race", "pbt", "resources")


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and not prefix and key in _NESTED:
            out.update(_flat(value, f"{key}."))
        else:
            out[prefix + key] = value
    return out


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def _load_started(folder: Path) -> dict[str, Any] | None:
    path = folder / STARTED_CONFIG
    if not path.is_file():
        return None
    d = yaml.safe_load(path.read_text())
    if not isinstance(d, dict):
        raise CampaignError(f"{path}: not a config mapping; restore it from a backup or delete it to accept "
                            "config.yaml as the campaign's config")
    d["output"] = str(folder.resolve().parent)
    return validate_config(d).public_dict()


def _last_resume(folder: Path) -> dict[str, Any] | None:
    try:
        lines = (folder / RESUME_LOG).read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            return record
    return None


@dataclass
class ResumePlan:
    """How a resume proceeds: ``restore`` Tune's experiment, or ``continue`` from the study in a new experiment;
    ``changes`` (dotted key -> [started or last, now]) are applied."""

    how: str  # "restore" | "continue"
    changes: dict[str, list[Any]] = field(default_factory=dict)
    reason: str = ""


def resume_plan(config: CampaignConfig, from_study: bool = False) -> ResumePlan:
    """Compare the campaign's current config with the one it started with (and the last resume's): refuse (one
    :class:`CampaignError` line naming the keys) changes that alter what the finished trials mean; decide whether
    Tune's experiment can be restored or the campaign continues from its study (see ``CONTINUE_KEYS``)."""
    folder = config.folder
    started = _load_started(folder)
    now = _flat(config.public_dict())
    last = _last_resume(folder)
    reference = _flat(last["config"]) if last and isinstance(last.get("config"), dict) else None
    if started is None:
        return ResumePlan("continue" if from_study else "restore", reason=f"no {STARTED_CONFIG}: nothing to compare")
    first = _flat(started)
    keys = sorted(set(first) | set(now))
    changed = [k for k in keys if first.get(k) != now.get(k) and not _matches(k, _IGNORED)]
    refused = [k for k in changed if not _matches(k, APPLIED_KEYS + CONTINUE_KEYS)]
    if refused:
        shown = ", ".join(f"{k} ({first.get(k)!r} -> {now.get(k)!r})" for k in refused[:3])
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        raise CampaignError(f"{folder / 'config.yaml'}: {shown}{more} changed since the campaign started; that "
                            f"changes what its finished trials mean: put {'it' if len(refused) == 1 else 'them'} "
                            f"back (see {STARTED_CONFIG}) or start a new campaign")
    base = reference or first
    if now["num_trials"] < base["num_trials"]:
        raise CampaignError(f"num_trials: can only grow on resume (the campaign has {base['num_trials']}, "
                            f"config.yaml asks {now['num_trials']})")
    changes = {k: [base.get(k), now.get(k)] for k in keys if base.get(k) != now.get(k) and not _matches(k, _IGNORED)}
    pinned = [k for k in changes if _matches(k, CONTINUE_KEYS)]
    if pinned and config.mode == "pbt":
        raise CampaignError(f"{', '.join(pinned)}: a pbt campaign resumes its Tune experiment, which keeps these "
                            "as they were; put them back")
    if from_study:
        return ResumePlan("continue", changes, "--from-study")
    if pinned:
        return ResumePlan("continue", changes, f"{', '.join(pinned)} changed: Ray Tune keeps them in its saved "
                                               "experiment, so a new experiment continues from the study")
    if last is not None and last.get("how") == "continue":
        return ResumePlan("continue", changes, "continued from the study before")
    return ResumePlan("restore", changes)


def log_resume(config: CampaignConfig, plan: ResumePlan, trusted: str) -> None:
    """Append this resume to ``resume_log.jsonl`` (what changed, how it resumed, the config now in effect)."""
    record = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "how": plan.how, "reason": plan.reason,
              "changes": plan.changes, "tune_state": trusted, "config": config.public_dict()}
    path = config.folder / RESUME_LOG
    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old + json.dumps(record, default=str) + "\n")
