"""Campaigns on a two-node Ray cluster started as the README's "Multi-node" section says: a token from
``ray get-auth-token --generate``, ``RAY_AUTH_MODE=token`` on every node and the driver, ``ray start --head`` and
``ray start --address``, ``policy-search run --address``. A driver with another token is refused; a worker node
killed mid-trial costs a retry, not a trial.

Both nodes run on this machine, so each gets ``--num-cpus=1`` (one trial at a time: two concurrent trials
must use both nodes) and its own short ``--temp-dir`` (Unix socket paths are limited to 107 characters). The
nodes are started in their own sessions, so their Ray processes form two process groups: the test stops a
node by killing its group (never ``ray stop``, which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from policy_search.campaign import STUDY_ATTR, load_campaign_config, load_study

BIN = Path(sys.executable).parent
NODE_ENV = "POLICY_SEARCH_TEST_NODE"  # "head" / "worker", set on each node; its Ray workers inherit it
TIMEOUT_S = 600  # generous bounds for waits on processes and files (never reached in a passing run)

CAMPAIGN = {"objective": "density", "space": "randaugment", "num_trials": 6, "max_concurrent": 2,
            "train_size": 500, "val_size": 250, "proxy": {"epochs": 2, "width": 8}, "race": {"enabled": False},
            "reuse_actors": False}  # a fresh worker per trial: a reused one would run wherever it is free first


@dataclass
class TokenCluster:
    """A head and a worker node with token authentication; ``env`` is what the README asks for on every node
    and the driver (``HOME`` holds ``~/.ray/auth_token``)."""

    address: str
    env: dict[str, str]
    root: Path
    groups: dict[str, int]  # "head" / "worker" -> process group of that node's Ray processes

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """A command run with the cluster's (or the given) environment, output captured."""
        return subprocess.run(list(args), env=env or self.env, capture_output=True, text=True, timeout=TIMEOUT_S)

    def alive_nodes(self) -> set[str]:
        """Node ids of the live nodes, as an authorised driver sees them."""
        code = ("import json, sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); "
                "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))")
        done = self.run(sys.executable, "-c", code, self.address)
        assert done.returncode == 0, done.stderr[-3000:]
        return set(json.loads(done.stdout.strip().splitlines()[-1]))

    def kill(self, node: str) -> None:
        """SIGKILL every Ray process ``ray start`` started for ``node`` (its Ray workers, each in a group of its
        own, exit when their raylet dies)."""
        try:
            os.killpg(self.groups[node], signal.SIGKILL)
        except ProcessLookupError:
            pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict[str, str], log: Path, attempts: int = 3) -> int:
    """``ray start ...`` in a new session; returns its process group (kept by the node's processes). Ray gives a
    starting node 30 s (hard-coded) to register with the GCS, which a starved CPU can miss ("timed out during
    startup"): such a start is killed and tried again, at most ``attempts`` times."""
    for _ in range(attempts):
        with log.open("ab") as sink:
            proc = subprocess.Popen([str(BIN / "ray"), "start", *args], env=env, start_new_session=True,
                                    stdout=sink, stderr=subprocess.STDOUT)
        if proc.wait(timeout=TIMEOUT_S) == 0:
            return proc.pid
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # what the failed start left running
        except ProcessLookupError:
            pass
    raise AssertionError(log.read_text(errors="replace")[-3000:])


@pytest.fixture
def token_cluster() -> Iterator[TokenCluster]:
    """Two Ray nodes with token auth, started with the README's commands; killed when the test ends."""
    root = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")}
    env.update(HOME=str(root / "home"), RAY_AUTH_MODE="token")
    port = _free_port()
    cluster = TokenCluster(f"127.0.0.1:{port}", env, root, {})
    try:
        done = cluster.run(str(BIN / "ray"), "get-auth-token", "--generate")
        assert done.returncode == 0 and (root / "home" / ".ray" / "auth_token").is_file(), done.stderr
        cluster.groups["head"] = _start([f"--port={port}", "--head", "--num-cpus=1", "--include-dashboard=false",
                                         f"--temp-dir={root / 'head'}"], {**env, NODE_ENV: "head"}, root / "head.log")
        cluster.groups["worker"] = _start([f"--address={cluster.address}", "--num-cpus=1",
                                           f"--temp-dir={root / 'worker'}"], {**env, NODE_ENV: "worker"},
                                          root / "worker.log")
        deadline = time.monotonic() + TIMEOUT_S
        while len(cluster.alive_nodes()) != 2:  # a retried start may leave a node the GCS has yet to mark dead
            assert time.monotonic() < deadline, "timed out waiting for exactly two live nodes"
            time.sleep(1)
        yield cluster
    finally:
        for node in cluster.groups:
            cluster.kill(node)
        shutil.rmtree(root, ignore_errors=True)


def _write_config(path: Path, name: str, **extra) -> Path:
    path.write_text(yaml.safe_dump({"name": name, **CAMPAIGN, **extra}))
    return path


# The driver is `policy-search run ...` (argv after the first four) with run_trial wrapped by a gate, so that
# trials overlap whatever the machine's speed: the first trial on each node waits until both nodes have started
# one (each node has one CPU, so two trials at once use both). With "kill", the first trial on the worker node
# instead writes its trial id, node id and pid to blocked.json and blocks until the test kills that node.
# The wrapper lives in __main__, so cloudpickle ships it to the Ray workers by value; its __name__ stays
# "run_trial".
_DRIVER = textwrap.dedent("""
    import json
    import os
    import sys
    import time
    from pathlib import Path

    import ray
    from ray import tune

    import policy_search.campaign as campaign
    from policy_search.cli import app

    gate, node_env, mode, timeout_s = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    real_run_trial = campaign.run_trial

    def wait_for(*paths):
        deadline = time.monotonic() + timeout_s  # never reached in a passing test
        while not all(p.exists() for p in paths):
            if time.monotonic() > deadline:
                raise RuntimeError(f"gate: timed out waiting for {[p.name for p in paths]}")
            time.sleep(0.1)

    def gated(config, **kwargs):
        node = os.environ[node_env]
        try:
            os.close(os.open(gate / f"first-{node}", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return real_run_trial(config, **kwargs)
        if mode == "kill" and node == "worker":
            info = {"trial_id": tune.get_context().get_trial_id(), "pid": os.getpid(),
                    "node_id": ray.get_runtime_context().get_node_id()}
            (gate / "blocked.tmp").write_text(json.dumps(info))
            os.replace(gate / "blocked.tmp", gate / "blocked.json")
            wait_for(gate / "never")  # the test kills this node
        wait_for(gate / "first-head", gate / "first-worker")
        return real_run_trial(config, **kwargs)

    gated.__name__ = "run_trial"
    campaign.run_trial = gated
    app(args=sys.argv[5:], prog_name="policy-search")
""")


def _driver(cluster: TokenCluster, gate: Path, mode: str, config: Path, output: Path, log: Path) -> subprocess.Popen:
    """``policy-search run -c config --address <head> --output output --quiet`` behind the gate, in its own session."""
    gate.mkdir()
    args = ["run", "-c", str(config), "--address", cluster.address, "--output", str(output), "--quiet"]
    with log.open("wb") as sink:
        return subprocess.Popen([sys.executable, "-c", _DRIVER, str(gate), NODE_ENV, mode, str(TIMEOUT_S), *args],
                                env=cluster.env, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT)


def _finish(driver: subprocess.Popen, log: Path) -> None:
    """Wait for the driver to succeed; on failure (or timeout) kill its session and show its log."""
    try:
        code = driver.wait(timeout=TIMEOUT_S)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert code == 0, log.read_text(errors="replace")[-3000:]


@pytest.mark.slow
def test_two_node_cluster_with_token_auth(tmp_path, token_cluster):
    nodes = token_cluster.alive_nodes()  # a driver with the token connects

    # a driver with a token the cluster did not issue is refused by the cluster and runs nothing
    wrong = {**token_cluster.env, "RAY_AUTH_TOKEN": "0" * 64}
    refused = token_cluster.run(str(BIN / "policy-search"), "run", "-c", str(_write_config(tmp_path / "r.yaml", "r")),
                                "--address", token_cluster.address, "--output", str(tmp_path), "--quiet", env=wrong)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"error: ray_address: cannot join the Ray cluster at {token_cluster.address} (" in refused.stderr
    assert "token auth" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "r" / "tune").exists()

    # the documented driver: same token, RAY_AUTH_MODE=token, --address of the head
    log = tmp_path / "driver.log"
    _finish(_driver(token_cluster, tmp_path / "gate", "overlap", _write_config(tmp_path / "c.yaml", "cluster"),
                    tmp_path, log), log)
    folder = tmp_path / "cluster"
    df = pd.read_csv(folder / "trials.csv")
    assert len(df) == 6 and (df["status"] == "COMPLETE").all()
    assert set(df["node_id"]) == nodes  # both nodes ran trials, one campaign folder
    assert sorted(p.name for p in (folder / "tune").iterdir() if p.is_dir()) == sorted(df["trial_id"])


@pytest.mark.slow
def test_worker_node_killed_mid_trial_is_retried_and_counted_once(tmp_path, token_cluster):
    gate, log = tmp_path / "gate", tmp_path / "driver.log"
    config = _write_config(tmp_path / "lost.yaml", "lost", num_trials=4, max_failures=1)
    driver = _driver(token_cluster, gate, "kill", config, tmp_path, log)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (gate / "blocked.json").exists():
            assert driver.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "timed out waiting for the gated trial on the worker node"
            time.sleep(0.2)
        blocked = json.loads((gate / "blocked.json").read_text())
        nodes = token_cluster.alive_nodes()
        assert blocked["node_id"] in nodes and len(nodes) == 2
        token_cluster.kill("worker")  # the node's raylet, agents and log monitor ...
        os.kill(blocked["pid"], signal.SIGKILL)  # ... and the trial's worker (its own process group): node lost
    except BaseException:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        raise
    _finish(driver, log)
    df = pd.read_csv(tmp_path / "lost" / "trials.csv")
    assert len(df) == 4 and df["trial_id"].is_unique and (df["status"] == "COMPLETE").all()
    row = df[df["trial_id"] == blocked["trial_id"]]
    assert len(row) == 1 and row["error"].isna().all()  # the killed trial: retried, counted once, no error
    (head,) = nodes - {blocked["node_id"]}
    assert row["node_id"].iloc[0] == head  # its retry ran on the surviving node
    study = load_study(load_campaign_config(tmp_path / "lost"))
    assert len(study.trials) == 4 and all(t.state == TrialState.COMPLETE for t in study.trials)  # study == CSV
    assert {t.user_attrs[STUDY_ATTR] for t in study.trials} == set(df["trial_id"])
