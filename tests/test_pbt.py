"""PBT mode end to end: a tiny population on the bundled sample perturbs, exports a schedule a trainer replays,
``status``/``export``/``resume`` understand it (also after a kill -9 of the driver); config checks of the mode."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import ray
from conftest import wait_for_driver  # tests/ is on sys.path under pytest
from ray import tune
from typer.testing import CliRunner

import policy_search.pbt as pbt_module
from policy_search.campaign import resume_campaign, run_campaign
from policy_search.cli import app
from policy_search.config import ConfigError, load_config
from policy_search.pbt import PBAExplore, schedule_from_history
from search_spaces import Schedule, load_policy_or_schedule
from search_spaces.pba import PBA_OPS, random_params
from trainers.data import load_dataset, make_splits
from trainers.proxy import ProxyConfig, ProxyData, build_augment, train_proxy

runner = CliRunner()
EPOCHS = 4
TINY = {"mode": "pbt", "train_size": 500, "val_size": 250, "proxy.epochs": EPOCHS, "proxy.width": 8,
        "pbt.population_size": 4, "pbt.perturbation_interval": 1, "pbt.init": "random", "pbt.synch": True,
        "max_concurrent": 4, "resources.cpu": 0.5, "num_cpus": 2,
        "target.width": 8, "target.epochs": 2, "target.batch_size": 64, "race.seeds": 1, "race.top_k": 1}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> Path:
    """A finished tiny pbt campaign (4 members x 4 epochs, synchronous perturbation every epoch)."""
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    seen = []
    cfg = load_config(overrides={**TINY, "name": "pbt", "output": str(tmp_path_factory.mktemp("pbt"))})
    result = run_campaign(cfg, on_progress=seen.append)
    search = [p for p in seen if p.stage == "search"]
    assert search and search[-1].total == 16 and search[-1].done == 16
    assert seen[-1].stage == "race" and seen[-1].done == seen[-1].total == 3  # rank1, crop+flip, RA x 1 seed
    assert result.counts == {"COMPLETE": 4, "FAILED": 0, "RUNNING": 0}
    return result.folder


@pytest.mark.slow
def test_population_perturbs_and_the_best_schedule_matches_its_lineage(campaign):
    for name in ("population.csv", "best_schedule.json", "schedule.png", "summary.json", "top_k/rank1.json",
                 "config.yaml", "splits.json"):
        assert (campaign / name).is_file(), name
    summary = json.loads((campaign / "summary.json").read_text())
    assert summary["perturbations"] >= 1 and summary["exploited_epochs"] >= 1
    population = pd.read_csv(campaign / "population.csv").fillna({"exploited_from": ""})
    assert set(population["member"]) == set(population.groupby("member")["epoch"].max().index)
    assert (population.groupby("member")["epoch"].max() == EPOCHS).all()
    assert (population["exploited_from"] != "").sum() == summary["exploited_epochs"]

    # the confirmation race: the best schedule against crop+flip and RandAugment(2, 9) at the target recipe
    race = pd.read_csv(campaign / "race.csv")
    assert set(race["label"]) == {"rank1", "crop+flip", "RandAugment(2, 9)"} and (race["runs"] == 1).all()
    winner = load_policy_or_schedule(campaign / "best_policy.json")
    assert winner.provenance["race"]["winner"] == race["label"].iloc[0] == summary["race"]["winner"]

    schedule = load_policy_or_schedule(campaign / "best_schedule.json")
    assert isinstance(schedule, Schedule) and schedule.epochs == EPOCHS
    prov = schedule.provenance
    assert prov["member"] == summary["best_member"] and prov["score"] == pytest.approx(summary["best_score"])
    lineage = prov["lineage"]
    assert lineage[0]["start_epoch"] == 0 and lineage[-1]["end_epoch"] == EPOCHS
    assert lineage[-1]["member"] == prov["member"]
    assert all(a["end_epoch"] == b["start_epoch"] for a, b in zip(lineage, lineage[1:], strict=False))
    names = [c for c in population.columns if c.startswith(("p_", "m_"))]
    for piece in lineage:  # every epoch of the schedule is a reported epoch of the member that trained it
        rows = population[population["member"] == piece["member"]]
        for epoch in range(piece["start_epoch"], piece["end_epoch"]):
            params = schedule.policy_at(epoch).provenance["pba_params"]
            reported = rows[rows["epoch"] == epoch + 1][names].to_dict("records")
            assert params in reported, (piece, epoch)


@pytest.mark.slow
def test_a_trainer_replays_the_exported_schedule(campaign):
    result = runner.invoke(app, ["export", str(campaign), "--top", "1"])
    assert result.exit_code == 0, result.output
    exported = Path(result.output.split()[-1])
    assert exported.read_bytes() == (campaign / "best_schedule.json").read_bytes()
    schedule = load_policy_or_schedule(exported)
    sample = load_dataset("sample")
    data = ProxyData.from_dataset(sample, make_splits(sample.labels.numpy(), train_size=256, val_size=128, seed=1))
    config = ProxyConfig(width=8, epochs=EPOCHS, batch_size=64, num_threads=2)
    augment = build_augment(exported, epochs=EPOCHS)
    used = []
    for epoch in range(EPOCHS):
        augment.set_epoch(epoch)
        used.append(augment.policy_stage.policy)
    assert used == [schedule.policy_at(e) for e in range(EPOCHS)]
    fit = train_proxy(exported, data, config)
    assert [m.epoch for m in fit.history] == [1, 2, 3, 4] and fit.final_val_acc is not None
    result = runner.invoke(app, ["export", str(campaign), "--format", "torchvision"])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith("error: rank1: a schedule")


@pytest.mark.slow
def test_status_shows_population_and_lineage_and_resume_reruns_nothing(campaign):
    result = runner.invoke(app, ["status", str(campaign)])
    assert result.exit_code == 0, result.output
    assert "pbt population 4/4" in result.output and "lineage: " in result.output
    assert "confirmation race (seeds [1])" in result.output
    before = (campaign / "population.csv").read_text()
    resumed = resume_campaign(campaign)
    assert resumed.counts["COMPLETE"] == 4
    assert (campaign / "population.csv").read_text() == before


def test_explore_and_schedule_reconstruction():
    explore = PBAExplore(resample_probability=0.2, max_shift=3, seed=0)
    start = random_params(random.Random(1))
    moved = explore({"params": start, "other": 1})
    assert moved["other"] == 1 and moved["params"] != start and set(moved["params"]) == set(start)
    history = [{"epoch": 1, "member": "a", "params": start}, {"epoch": 2, "member": "a", "params": start},
               {"epoch": 3, "member": "b", "params": moved["params"]}]
    schedule, lineage = schedule_from_history(history, PBA_OPS, 2)
    assert [(s.start_epoch, s.end_epoch) for s in schedule.segments] == [(0, 2), (2, 3)]
    assert lineage == [{"member": "a", "start_epoch": 0, "end_epoch": 2}, {"member": "b", "start_epoch": 2,
                                                                         "end_epoch": 3}]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"objective": "density"}, "objective: pbt mode trains proxies"),
    ({"pbt.perturbation_interval": 5}, "pbt.perturbation_interval: must be < proxy.epochs (5)"),
    ({"pbt.ops": ["rotate", "spin"]}, "pbt.ops: unknown op 'spin'"),
    ({"pbt.ops": ["rotate", "rotate"]}, "pbt.ops: an op is listed twice"),
    ({"pbt.population_size": 1}, "pbt.population_size: must be >= 2, got 1"),
    ({"pbt.resample_probability": 1.5}, "pbt.resample_probability: must be in [0, 1], got 1.5"),
])
def test_pbt_config_errors_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"mode": "pbt", **overrides})
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    cfg = load_config(overrides={"mode": "pbt", "pbt.population_size": 3, "max_concurrent": 8})
    assert cfg.max_concurrent == 3  # capped by the population


def test_cli_run_pbt_errors_are_one_line(tmp_path):
    result = runner.invoke(app, ["run", "--mode", "pbt", "--interval", "9", "--output", str(tmp_path), "-q"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: pbt.perturbation_interval: must be < proxy.epochs (5) or the population "
                                     "never perturbs, got 9")


_PBT_DRIVER = """
import os
import sys
import time
from pathlib import Path

import policy_search.pbt as pbt
from policy_search.campaign import run_campaign
from policy_search.config import load_config

gate = Path(sys.argv[1]) / "gate"
gate.mkdir()


def run_member(config, **kwargs):  # Tune checks the trainable's name on resume
    # in the worker: the module as imported there; every member holds after its epoch-4 report (a checkpoint,
    # past two perturbation boundaries) until the test kills the driver, so none can finish before the kill
    import policy_search.pbt as worker_pbt
    from ray import tune

    real_train, member = worker_pbt.train_proxy, tune.get_context().get_trial_id()

    def train_proxy(policy, data, proxy, *, resume=None, on_state):
        def held(m, snapshot):
            on_state(m, snapshot)
            if m.epoch >= 4:
                (gate / f"held-{member}").touch()
                deadline = time.monotonic() + 600  # never reached in a passing test: the kill comes first
                while time.monotonic() < deadline:
                    time.sleep(0.1)
                raise RuntimeError("gate never ended by the kill")
        return real_train(policy, data, proxy, resume=resume, on_state=held)

    worker_pbt.train_proxy = train_proxy
    worker_pbt.run_member(config, **kwargs)


pbt.run_member = run_member
overrides = {"mode": "pbt", "name": "killed", "output": sys.argv[1], "train_size": 500, "val_size": 250,
             "proxy.epochs": 6, "proxy.width": 8, "pbt.population_size": 4, "pbt.perturbation_interval": 2,
             "pbt.init": "random", "max_concurrent": 2, "num_cpus": 2, "race.enabled": False}
run_campaign(load_config(overrides=overrides))
"""


@pytest.mark.slow
def test_kill_9_mid_population_then_resume_finishes_every_member(tmp_path):
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    log = tmp_path / "driver.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", _PBT_DRIVER, str(tmp_path)], env=env,
                                start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    folder, gate = tmp_path / "killed", tmp_path / "gate"
    deadline = time.monotonic() + 300

    def snapshot_after_hold() -> bool:
        """Both running members hold at epoch 4 and Tune has saved the experiment since."""
        held = list(gate.glob("held-*"))
        if len(held) < 2:
            return False
        states = list((folder / "tune").glob("experiment_state*.json"))
        last_hold = max(p.stat().st_mtime for p in held)
        return any(p.stat().st_mtime > last_hold for p in states)

    try:
        wait_for_driver(proc, log, deadline, snapshot_after_hold, "two members held at epoch 4 and a Tune snapshot")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (folder / "best_schedule.json").exists()  # no member can finish while held

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    result = resume_campaign(folder)
    assert result.counts == {"COMPLETE": 4, "FAILED": 0, "RUNNING": 0}
    population = pd.read_csv(folder / "population.csv")
    assert (population.groupby("member")["epoch"].max() == 6).all() and population["member"].nunique() == 4
    schedule = load_policy_or_schedule(folder / "best_schedule.json")
    assert isinstance(schedule, Schedule) and schedule.epochs == 6
    lineage = schedule.provenance["lineage"]
    assert lineage[0]["start_epoch"] == 0 and lineage[-1]["end_epoch"] == 6


def _dying_member(folder: Path) -> Any:
    """``run_member`` whose first attempt that starts from a checkpoint (a member continuing after its first
    perturbation) kills its own worker process, once in the campaign: a lost worker, not an error of the member.
    Every attempt notes (member, its worker's pid, the epochs in the history of the checkpoint it starts from)."""

    def run_member(config: dict[str, Any], **kwargs: Any) -> None:
        from policy_search.pbt import run_member as real  # in the worker: the module as it is, not the patched one

        member = tune.get_context().get_trial_id()
        checkpoint = tune.get_checkpoint()
        epochs = 0
        if checkpoint is not None:
            with checkpoint.as_directory() as ckpt:
                epochs = len(json.loads((Path(ckpt) / pbt_module.HISTORY_FILE).read_text()))
        with (folder / "attempts").open("a") as f:
            f.write(json.dumps([member, os.getpid(), epochs]) + "\n")
        if checkpoint is not None:
            try:
                os.close(os.open(folder / "killed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                (folder / "victim").write_text(json.dumps([member, epochs]))
                os.kill(os.getpid(), signal.SIGKILL)
        real(config, **kwargs)

    return run_member


@pytest.mark.slow
def test_a_member_whose_worker_dies_continues_from_its_last_checkpoint(tmp_path, monkeypatch):
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    folder = tmp_path / "kill"
    folder.mkdir()
    monkeypatch.setattr(pbt_module, "run_member", _dying_member(folder))
    cfg = load_config(overrides={**TINY, "name": "lost", "output": str(tmp_path), "race.enabled": False,
                                 "max_failures": 1})
    result = run_campaign(cfg)

    assert result.counts == {"COMPLETE": 4, "FAILED": 0, "RUNNING": 0}  # the member that lost its worker finished
    victim, epochs_before = json.loads((folder / "victim").read_text())
    attempts = [json.loads(line) for line in (folder / "attempts").read_text().splitlines()]
    mine = [a for a in attempts if a[0] == victim]
    killed_at = next(i for i, a in enumerate(mine) if a[2] == epochs_before and a[2] > 0)
    retry = mine[killed_at + 1]
    assert retry[1] != mine[killed_at][1]  # a new worker process
    assert retry[2] >= epochs_before > 0  # it continued from a checkpoint, not from scratch
    population = pd.read_csv(result.folder / "population.csv")
    epochs = population[population["member"] == victim]["epoch"].tolist()
    assert epochs == list(range(1, EPOCHS + 1))  # every epoch once: the lost attempt reported nothing twice
