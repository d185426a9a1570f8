"""``policy-search train``: a policy exported by a campaign drives a full pipeline from the command line, bad
settings are one red line, and a run killed with SIGKILL mid-stage resumes from its last checkpoint to the
same epochs and the same result as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from policy_search.cli import app
from search_spaces import preset, save_policy
from trainers.engine import load_checkpoint
from trainers.pipelines import make_config
from trainers.pipelines.distill import run_distill

SETTINGS = ["--set", "train_size=400", "--set", "val_size=100", "--set", "test_size=200", "--set", "batch_size=64",
            "--set", "teacher_kwargs={width: 8}", "--set", "student_kwargs={width: 4}", "--set", "teacher_epochs=2",
            "--set", "epochs=2"]


def test_train_distill_with_a_policy_file(tmp_path):
    policy = save_policy(preset("crop_flip_cutout"), tmp_path / "best_policy.json")
    result = CliRunner().invoke(app, ["train", "distill", "--policy", str(policy), *SETTINGS, "--set",
                                      "temperature=2", "--output", str(tmp_path / "out"), "--name", "kd", "-q"],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "kd"
    final = json.loads((folder / "final.json").read_text())
    assert final["pipeline"] == "distill" and 0 <= final["student_test_acc"] <= 1
    saved = json.loads((folder / "config.json").read_text())
    assert saved["policy"] == str(policy) and saved["temperature"] == 2 and saved["student_kwargs"] == {"width": 4}
    metrics = pd.read_csv(folder / "metrics.csv")
    assert metrics.groupby("stage")["epoch"].max().to_dict() == {"student": 2, "teacher": 2}
    assert str(folder) in result.output and "student_test_acc" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["train", "distill", "--set", "tempreature=2"], "tempreature: unknown setting for the distill pipeline"),
    (["train", "distill", "--set", "alpha=3"], "alpha: must be in [0, 1], got 3"),
    (["train", "transfer", "--policy", "no-such-preset"], "no-such-preset"),
    (["train", "gan"], "unknown pipeline 'gan'"),
    (["train", "self-train", "--set", "iterations"], "expected KEY=VALUE"),
])
def test_bad_settings_are_one_line(args, message, tmp_path):
    result = CliRunner().invoke(app, [*args, "--output", str(tmp_path)], terminal_width=200)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not any(tmp_path.iterdir())  # nothing written for a run that never started


KILL_SETTINGS = {"train_size": 1500, "val_size": 200, "test_size": 300, "batch_size": 64,
                 "teacher_kwargs": {"width": 8}, "student_kwargs": {"width": 8}, "teacher_epochs": 2, "epochs": 6}


def _cli(output: Path, *extra: str) -> list[str]:
    sets = [a for k, v in KILL_SETTINGS.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    return [sys.executable, "-c", "from policy_search.cli import app; app()", "train", "distill", "--policy",
            "randaugment", *sets, "--output", str(output), "--name", "killed", "--device", "cpu", "-q", *extra]


def _student_rows(folder: Path) -> int:
    path = folder / "metrics.csv"
    if not path.is_file():
        return 0
    try:
        return int((pd.read_csv(path)["stage"] == "student").sum())
    except (pd.errors.EmptyDataError, KeyError):
        return 0


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_ends_with_the_same_epochs_and_result(tmp_path):
    folder = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli(tmp_path), env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while _student_rows(folder) < 2:  # the student stage has run two of its six epochs
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the student stage did not reach epoch 2 in time"
            time.sleep(0.2)
        time.sleep(0.3)  # most likely inside epoch 3
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    ckpt = load_checkpoint(folder / "checkpoints" / "student.pt")
    assert 2 <= ckpt["epoch"] < 6, "the run was not cut mid-stage"
    assert not (folder / "final.json").exists()

    again = subprocess.run(_cli(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr + again.stdout  # no silent overwrite
    resumed = subprocess.run(_cli(tmp_path, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout

    final = json.loads((folder / "final.json").read_text())
    assert final["resumed_stages"] == ["teacher", "student"]
    assert final["stages"]["student"]["epochs"] == 6 and final["stages"]["teacher"]["epochs"] == 2
    metrics = pd.read_csv(folder / "metrics.csv").drop_duplicates(["stage", "epoch"], keep="last")
    assert metrics.groupby("stage")["epoch"].apply(sorted).to_dict() == {"student": [1, 2, 3, 4, 5, 6],
                                                                         "teacher": [1, 2]}
    assert load_checkpoint(folder / "checkpoints" / "student.pt")["epoch"] == 6

    # the same run without the kill, in this process: identical numbers (CPU training is deterministic)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 in the subprocesses
    try:
        reference = run_distill(make_config("distill", {**KILL_SETTINGS, "policy": "randaugment"}),
                                output=str(tmp_path / "ref"), name="killed", device="cpu")
    finally:
        torch.set_num_threads(before)
    assert final["student_test_acc"] == reference["student_test_acc"]
    assert final["stages"]["student"]["train_loss"] == reference["stages"]["student"]["train_loss"]


@pytest.mark.parametrize("name", ["../x", "..", ".", "a/b", "/abs", "a\\b", ".hidden", "", "x" * 101, "a\0b"])
def test_run_names_never_leave_the_output_folder(tmp_path, name):
    from trainers.pipelines import PipelineError, Run

    out = tmp_path / "out"
    with pytest.raises(PipelineError, match=r"run name must be letters, digits") as info:
        Run.open(out, name, {"pipeline": "distill"})
    assert "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())  # nothing created, inside --output or beside it
    run = Run.open(out, "ok-1.2_x", {"pipeline": "distill"})
    for method in (run.checkpoint_path, run.load_arrays):
        with pytest.raises(PipelineError, match=r"(stage|array) name must be"):
            method(name)
    with pytest.raises(PipelineError, match=r"array name must be"):
        run.save_arrays(name, a=torch.zeros(1))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "out", "out/ok-1.2_x", "out/ok-1.2_x/arrays", "out/ok-1.2_x/checkpoints", "out/ok-1.2_x/config.json"]
