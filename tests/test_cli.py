"""CLI: run/status/export/preview/resume through typer's CliRunner, one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
from PIL import Image
from typer.testing import CliRunner

from policy_search.cli import app

runner = CliRunner()
TINY = ["--trials", "3", "--epochs", "1", "--width", "8", "--train-size", "300", "--val-size", "150", "-q"]


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray shared by this module's campaigns."""
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, ray_local) -> Path:
    """A finished tiny campaign run through ``policy-search run``."""
    out = tmp_path_factory.mktemp("cli")
    result = runner.invoke(app, ["run", "--name", "cli", "--output", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert "best_policy" in result.output and "history_png" in result.output
    return out / "cli"


@pytest.mark.slow
def test_run_writes_results(campaign):
    assert (campaign / "best_policy.json").is_file()
    assert json.loads((campaign / "summary.json").read_text())["num_trials"] == 3


@pytest.mark.slow
def test_run_from_yaml_with_flag_override(tmp_path, ray_local):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: yaml\nobjective: density\nnum_trials: 5\ntrain_size: 300\nval_size: 150\n"
                   "proxy:\n  epochs: 1\n  width: 8\n")
    result = runner.invoke(app, ["run", "--config", str(cfg), "--trials", "2", "--output", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "yaml" / "summary.json").read_text())["num_trials"] == 2


@pytest.mark.slow
def test_status(campaign):
    result = runner.invoke(app, ["status", str(campaign)])
    assert result.exit_code == 0, result.output
    assert "3/3 trials" in result.output and "num_ops" in result.output
    by_name = runner.invoke(app, ["status", "cli", "--output", str(campaign.parent)])
    assert by_name.exit_code == 0 and "3/3 trials" in by_name.output


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "suffixes"), [("json", {".json"}), ("torchvision", {".json", ".py"}),
                                                ("timm", {".txt"})])
def test_export(campaign, tmp_path, fmt, suffixes):
    result = runner.invoke(app, ["export", str(campaign), "--top", "2", "--format", fmt, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    files = sorted(tmp_path.iterdir())
    assert {p.suffix for p in files} == suffixes and len([p for p in files if p.stem == "rank1"]) >= 1
    if fmt == "timm":
        assert (tmp_path / "rank1.txt").read_text().startswith("rand-")
    if fmt == "torchvision":  # the snippet really builds a transform
        namespace: dict = {"__file__": str(tmp_path / "rank1.py")}
        exec(compile((tmp_path / "rank1.py").read_text(), "rank1.py", "exec"), namespace)
        assert namespace["transform"] is not None


def test_preview_preset(tmp_path):
    out = tmp_path / "grid.png"
    result = runner.invoke(app, ["preview", "autoaugment_cifar10", "--out", str(out), "--n", "4"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size[0] > 100


@pytest.mark.parametrize(("args", "message"), [
    (["run", "--trials", "0"], "error: num_trials: must be >= 1, got 0"),
    (["run", "--objective", "magic"], "error: objective: must be one of"),
    (["run", "--sampler", "grid", "--space", "autoaugment"], "error: sampler: grid search is only available"),
    (["run", "--config", "/nonexistent.yaml"], "error: config: no such file"),
    (["run", "--dataset", "/nonexistent/folder", "--name", "bad", "--output", "{tmp}"], "error: "),
    (["status", "nope", "--output", "{tmp}"], "error: no campaign 'nope'"),
    (["resume", "nope", "--output", "{tmp}"], "error: no campaign 'nope'"),
    (["export", "nope", "--output", "{tmp}"], "error: no campaign 'nope'"),
    (["preview", "no_such_preset"], "error: no_such_preset: no such policy file or preset"),
])
def test_errors_are_one_red_line_and_exit_2(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines[-1].startswith(message) and "Traceback" not in result.output, result.output


def test_debug_shows_the_exception():
    result = runner.invoke(app, ["run", "--trials", "0", "--debug"])
    assert result.exit_code != 2 and result.exception is not None


@pytest.mark.slow
def test_export_timm_unsupported_is_one_line(tmp_path, ray_local):
    result = runner.invoke(app, ["run", "--name", "aa", "--output", str(tmp_path), "--space", "autoaugment",
                                 "--objective", "density", *TINY])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", "aa", "--output", str(tmp_path), "--format", "timm"])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith("error: rank1: ")


@pytest.mark.slow
def test_resume_of_a_finished_campaign_reruns_nothing(campaign):
    before = (campaign / "trials.csv").read_text()
    result = runner.invoke(app, ["resume", str(campaign), "-q"])
    assert result.exit_code == 0, result.output
    assert (campaign / "trials.csv").read_text().splitlines()[1:] == before.splitlines()[1:]
