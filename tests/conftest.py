"""Shared fixtures: real CIFAR-10 images from ../shared/data, quiet Ray settings and a local Ray."""

from __future__ import annotations

import io
import os
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # tests show every worker's log line (read when Ray is imported)
from ray import cloudpickle  # noqa: E402

from policy_search.config import PASSWORD_ENV  # noqa: E402
from policy_search.session import RAY_ENV  # noqa: E402  (the campaigns' quiet Ray settings)

for key, value in RAY_ENV.items():  # (importing the module applies them too; kept explicit here)
    os.environ.setdefault(key, value)


def _shared_zip() -> Path:
    """``$POLICY_SEARCH_SHARED_DATA`` (a folder or the zip, as the data loader reads it), else ../shared/data."""
    env = os.environ.get("POLICY_SEARCH_SHARED_DATA")
    base = Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return base if base.suffix == ".zip" else base / "cifar10-train-jpeg.zip"


SHARED_ZIP = _shared_zip()
SHARED_REFERENCE = SHARED_ZIP.parent.parent / "reference"  # ../shared/reference beside ../shared/data


@pytest.fixture(scope="session")
def shared_zip() -> Path:
    """Path of the shared 50,000-image CIFAR-10 zip (skips the test when absent)."""
    if not SHARED_ZIP.is_file():
        pytest.skip(f"shared data not found at {SHARED_ZIP}")
    return SHARED_ZIP


@pytest.fixture(scope="session")
def cifar_images(shared_zip: Path) -> torch.Tensor:
    """64 real CIFAR-10 images (uint8, (64, 3, 32, 32)), a few from every class."""
    with zipfile.ZipFile(shared_zip) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
        picked = names[:: len(names) // 64][:64]
        arrays = [np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB")) for n in picked]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray (2 CPUs) for the module's campaigns: started when none is running and left running for the
    next module (a test that needs another cluster shuts it down itself); shut down when the session ends."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield


# Ray workers cannot import this module (tests/ is on the test process's path only): a trainable that calls a helper
# from here carries the helper by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def take_ticket(folder: Path) -> int:
    """The next free ticket number (0, 1, 2, ...) in ``folder``: exclusive file creation is atomic across
    processes, so the trials of a campaign (in Ray workers) each get a distinct role, whatever order they run in."""
    n = 0
    while True:
        try:
            os.close(os.open(Path(folder) / f"ticket-{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return n
        except FileExistsError:
            n += 1


#: The start of every driver script (``python -c``) that gates its campaign's trials: ``gate_trials(gate, finish,
#: ended_by)`` wraps ``policy_search.campaign.run_trial`` so that trials claim slots 0, 1, ... (one file each, made
#: exclusively), the first ``finish`` run for real, and the next writes ``<gate>/blocked`` and waits for
#: ``<gate>/release``, which the test creates only after it has killed or interrupted the driver. So the driver stops
#: with exactly ``finish`` trials finished and one running, whatever the machine's speed. The wrapper lives in the
#: script's ``__main__``, so cloudpickle ships it to the Ray workers by value; its ``__name__`` stays "run_trial", the
#: name ``Tuner.restore`` checks on resume (which runs the real one).
GATED_RUN_TRIAL = textwrap.dedent("""
    import os
    import sys
    import time
    from pathlib import Path

    import policy_search.campaign as campaign


    def gate_trials(gate, finish, ended_by):
        gate, real_run_trial = Path(gate), campaign.run_trial

        def run_trial(config, **kwargs):
            slot = 0
            while True:
                try:
                    os.close(os.open(gate / f"slot-{slot}", os.O_CREAT | os.O_EXCL))
                    break
                except FileExistsError:
                    slot += 1
            if slot < finish:
                return real_run_trial(config, **kwargs)
            (gate / "blocked").touch()
            deadline = time.monotonic() + 600  # never reached in a passing test: the test ends the driver first
            while not (gate / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            raise RuntimeError(f"gate released without {ended_by}")

        campaign.run_trial = run_trial
""")


def wait_for_driver(proc, log: Path, deadline: float, condition, what: str) -> None:
    """Poll ``condition`` until true; fail with the driver's log if the driver exits first or ``deadline``
    (``time.monotonic()``) passes. Only a bound on a hang: what a test waits for is an event, never a duration."""
    import time

    while not condition():
        assert proc.poll() is None, (f"the driver exited (status {proc.returncode}) before {what}:\n"
                                     + log.read_text(errors="replace")[-3000:])
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


PG_URL_ENV = "POLICY_SEARCH_TEST_PG_URL"


def _pg_unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostgreSQL required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def pg_url() -> str:
    """The test PostgreSQL server's URL without a password (the password is in ``$POLICY_SEARCH_DB_PASSWORD``).

    ``.ci/run`` starts the server (``.ci/postgres``) and exports both. Without them the test skips, except under
    CI (``CI=true``), where it fails."""
    url, password = os.environ.get(PG_URL_ENV), os.environ.get(PASSWORD_ENV)
    if not url or not password:
        _pg_unavailable(f"${PG_URL_ENV} and ${PASSWORD_ENV} not set (run: eval \"$(.ci/postgres)\")")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _pg_unavailable("psycopg2 is not installed (the [postgres] extra)")
    import optuna
    import sqlalchemy
    from sqlalchemy.engine import make_url

    assert make_url(url).password is None, f"${PG_URL_ENV} must not carry the password"
    full = make_url(url).set(password=password).render_as_string(hide_password=False)
    engine = sqlalchemy.create_engine(full)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except sqlalchemy.exc.OperationalError as exc:
        _pg_unavailable(f"cannot connect to {url}: {str(exc).splitlines()[0]}")
    finally:
        engine.dispose()
    optuna.storages.RDBStorage(full)  # Optuna's tables exist before two drivers open the database at once
    return url


def pytest_sessionfinish(session, exitstatus):
    """Shut down a Ray the tests left running."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
