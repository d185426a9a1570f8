"""CLI: run/status/export/preview/resume through typer's CliRunner, one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from policy_search.cli import app

runner = CliRunner()
TINY = ["--trials", "3", "--space", "randaugment", "--target-epochs", "3", "--target-width", "8", "--race-seeds", "1",
        "--epochs", "1", "--width", "8", "--train-size", "300", "--val-size", "150", "-q"]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, ray_local) -> Path:
    """A finished tiny campaign run through ``policy-search run``."""
    out = tmp_path_factory.mktemp("cli")
    result = runner.invoke(app, ["run", "--name", "cli", "--output", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert "best_policy" in result.output and "history_png" in result.output
    assert "confirmation race" in result.output and "best_policy.json is the race winner" in result.output
    return out / "cli"


@pytest.mark.slow
def test_run_writes_results(campaign):
    assert (campaign / "best_policy.json").is_file()
    assert json.loads((campaign / "summary.json").read_text())["num_trials"] == 3


@pytest.mark.slow
def test_run_from_yaml_with_flag_override(tmp_path, ray_local):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: yaml\nobjective: density\nnum_trials: 5\ntrain_size: 300\nval_size: 150\n"
                   "proxy:\n  epochs: 1\n  width: 8\ntarget:\n  epochs: 3\n  width: 8\nrace:\n  seeds: 1\n")
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
@pytest.mark.parametrize(("fmt", "suffixes"), [("json", {".json"}), ("torchvision", {".py"}),
                                                ("timm", {".txt"})])
def test_export(campaign, tmp_path, fmt, suffixes):
    result = runner.invoke(app, ["export", str(campaign), "--top", "2", "--format", fmt, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    files = sorted(tmp_path.iterdir())
    assert {p.suffix for p in files} == suffixes and len([p for p in files if p.stem == "rank1"]) >= 1
    if fmt == "timm":
        assert (tmp_path / "rank1.txt").read_text().startswith("rand-")
    if fmt == "torchvision":  # the self-contained file really builds a transform
        _check_torchvision_file(tmp_path / "rank1.py")


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
    result = runner.invoke(app, ["run", "--name", "aa", "--output", str(tmp_path), *TINY, "--space", "autoaugment",
                                 "--objective", "density"])  # after TINY: the last --space wins
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", "aa", "--output", str(tmp_path), "--format", "timm"])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith("error: rank1: ")


@pytest.mark.slow
def test_resume_of_a_finished_campaign_reruns_nothing(campaign):
    before = (campaign / "trials.csv").read_text()
    result = runner.invoke(app, ["resume", str(campaign), "-q"])
    assert result.exit_code == 0, result.output
    assert (campaign / "trials.csv").read_text().splitlines()[1:] == before.splitlines()[1:]


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: "), result.output
    return lines[-1]


def test_os_errors_are_one_line(tmp_path):
    (tmp_path / "settings").mkdir()
    line = _one_error_line(runner.invoke(app, ["train", "distill", "--config", str(tmp_path / "settings"),
                                               "--output", str(tmp_path)], terminal_width=300))
    assert line.startswith("error: IsADirectoryError: [Errno 21] Is a directory:") and "settings" in line
    (tmp_path / "a-file").write_text("x")
    line = _one_error_line(runner.invoke(app, ["preview", "randaugment", "--out", str(tmp_path / "a-file" / "g.png"),
                                               "--n", "2"], terminal_width=300))
    assert line.startswith("error: FileExistsError: [Errno 17] File exists:")  # its folder is a file


def test_value_and_yaml_errors_are_one_line(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("temperature: 2  # \xe9t\xe9".encode("latin-1"))
    line = _one_error_line(runner.invoke(app, ["train", "distill", "--config", str(tmp_path / "latin1.yaml")],
                                         terminal_width=300))
    assert line.startswith("error: UnicodeDecodeError: 'utf-8' codec can't decode byte 0xe9")
    (tmp_path / "broken.yaml").write_text("epochs: [1, 2\nalpha: 0.5\n")
    line = _one_error_line(runner.invoke(app, ["train", "distill", "--config", str(tmp_path / "broken.yaml")],
                                         terminal_width=300))
    assert line.startswith("error: ParserError: while parsing a flow sequence")


def test_database_errors_are_one_line(tmp_path):
    """A campaign whose study database cannot be opened: SQLAlchemy's OperationalError, raised for real."""
    from policy_search.config import load_config

    storage = f"sqlite:///{tmp_path / 'no-such-dir' / 'study.db'}"
    cfg = load_config(overrides={"name": "db", "output": str(tmp_path), "storage": storage})
    cfg.folder.mkdir()
    (cfg.folder / "config.yaml").write_text(yaml.safe_dump(cfg.public_dict(), sort_keys=False))
    result = runner.invoke(app, ["status", "db", "--output", str(tmp_path)], terminal_width=300)
    line = _one_error_line(result)
    assert line == "error: database: OperationalError: (sqlite3.OperationalError) unable to open database file"
    debug = runner.invoke(app, ["status", "db", "--output", str(tmp_path), "--debug"])
    assert type(debug.exception).__name__ == "OperationalError"  # --debug: the exception and its traceback


def test_memory_errors_are_one_line(tmp_path, monkeypatch):
    """numpy's MemoryError from a real allocation that cannot succeed (4 EiB) in the middle of a command."""
    import numpy as np

    monkeypatch.setattr("trainers.data.load_dataset", lambda *args, **kwargs: np.empty((1 << 62,), np.uint8))
    result = runner.invoke(app, ["preview", "randaugment", "--out", str(tmp_path / "g.png")], terminal_width=300)
    line = _one_error_line(result)
    assert line.startswith("error: out of memory (MemoryError: Unable to allocate 4.00 EiB")
    assert "use a smaller dataset, image or batch size" in line
    debug = runner.invoke(app, ["preview", "randaugment", "--out", str(tmp_path / "g.png"), "--debug"])
    assert isinstance(debug.exception, MemoryError)


def test_names_that_leave_the_output_folder_are_refused(tmp_path):
    out = tmp_path / "out"
    for name in ("../x", "..", "a/b", "/etc", ".hidden", "-x", "a\nb"):
        line = _one_error_line(runner.invoke(app, ["train", "distill", "--name", name, "--output", str(out)],
                                             terminal_width=300))
        assert line.startswith("error: run name must be letters, digits, '_', '.', '-' (one folder name")
        line = _one_error_line(runner.invoke(app, ["run", "--name", name, "--output", str(out)], terminal_width=300))
        assert line.startswith("error: name: must be letters, digits")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


# Runs an exported file where policy-search cannot be imported, then uses its transform on real-sized images.
_RUN_EXPORTED = """
import importlib.abc, runpy, sys
import torch
from torchvision.transforms import v2

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("search_spaces", "trainers", "policy_search"):
            raise ImportError(f"the exported file imports {name}")

sys.meta_path.insert(0, Blocked())
ns = runpy.run_path(sys.argv[1])
assert isinstance(ns["transform"], v2.Transform)
x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
assert all(o.shape == (3, 32, 32) and o.dtype == torch.uint8 for o in map(ns["transform"], x))
a, b = ns["build_transform"](seed=0), ns["build_transform"](seed=0)
assert all(torch.equal(a(img), b(img)) for img in x)  # a seeded transform replays its draws
print("exported file ok")
"""


def _check_torchvision_file(path: Path) -> None:
    """The torchvision export runs with torch and torchvision alone (policy-search blocked from importing),
    gives a v2 transform that keeps each image's shape and dtype, and replays its draws under a seed."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _RUN_EXPORTED, str(path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "exported file ok" in done.stdout, done.stderr[-3000:]
