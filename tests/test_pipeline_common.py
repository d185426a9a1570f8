"""The shared pipeline run folder: config checks, resumable stages, arrays, final files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trainers.engine import TrainConfig, load_checkpoint
from trainers.models import build_model
from trainers.pipelines import PipelineError, Run, make_config, pipeline
from trainers.proxy import build_augment

CPU = torch.device("cpu")


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def tiny(cifar_images):
    x = cifar_images
    y = torch.arange(len(x)) % 10
    return x[:48], y[:48], x[48:], y[48:]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("proxy", 10, width=4)


def _stage(run: Run, tiny, epochs: int = 3):
    tx, ty, vx, vy = tiny
    model = _model()
    config = TrainConfig(epochs=epochs, batch_size=16, lr=0.05, seed=1)
    result = run.stage("probe", model, tx, ty, config=config, device=CPU, val_x=vx, val_y=vy,
                       augment=build_augment("randaugment"))
    return model, result


def test_open_refuses_an_existing_run_and_checks_the_config_on_resume(tmp_path):
    Run.open(tmp_path, "r", {"a": 1, "device": "cpu"})
    assert json.loads((tmp_path / "r" / "config.json").read_text())["a"] == 1
    with pytest.raises(PipelineError, match="already exists"):
        Run.open(tmp_path, "r", {"a": 1})
    with pytest.raises(PipelineError, match="differs in a"):
        Run.open(tmp_path, "r", {"a": 2}, resume=True)
    assert Run.open(tmp_path, "r", {"a": 1, "device": "cuda"}, resume=True).config["a"] == 1  # device may differ
    with pytest.raises(PipelineError, match="no run"):
        Run.open(tmp_path, "missing", {}, resume=True)


def test_interrupted_stage_resumes_to_the_same_result(tmp_path, tiny):
    ref_model, ref = _stage(Run.open(tmp_path, "ref", {}), tiny)

    def stop_after_two(event):
        if event.kind == "epoch" and event.done == 2:
            raise _Stop

    with pytest.raises(_Stop):
        _stage(Run.open(tmp_path, "cut", {}, reporter=stop_after_two), tiny)
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "probe.pt")["epoch"] == 2
    events = []
    run = Run.open(tmp_path, "cut", {}, resume=True, reporter=events.append)
    model, result = _stage(run, tiny)
    assert [h.epoch for h in result.history] == [1, 2, 3]
    assert [h.val_acc for h in result.history] == [h.val_acc for h in ref.history]
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert events[0].kind == "start" and events[0].done == 2
    assert run.resumed_stages == ["probe"]
    assert list(run.metrics()["epoch"]) == [1, 2, 3]


def test_finished_stage_is_restored_not_retrained(tmp_path, tiny):
    _, first = _stage(Run.open(tmp_path, "r", {}), tiny, epochs=2)
    run = Run.open(tmp_path, "r", {}, resume=True)
    model, again = _stage(run, tiny, epochs=2)
    assert again.history == first.history and again.mean == first.mean
    assert len(run.metrics()) == 2
    with pytest.raises(PipelineError, match="checkpoint is for 2 epochs"):
        _stage(Run.open(tmp_path, "r", {}, resume=True), tiny, epochs=3)


def test_arrays_finish_and_curves(tmp_path, tiny):
    run = Run.open(tmp_path, "r", {"k": "v"})
    run.save_arrays("pseudo", probs=torch.rand(5, 3), idx=np.arange(5))
    loaded = run.load_arrays("pseudo")
    assert loaded["probs"].shape == (5, 3) and loaded["idx"].tolist() == list(range(5))
    assert run.load_arrays("absent") is None
    _stage(run, tiny, epochs=1)
    final = run.finish({"test_acc": 0.5, "path": tmp_path})
    saved = json.loads((tmp_path / "r" / "final.json").read_text())
    assert saved["test_acc"] == 0.5 and saved == final
    assert (tmp_path / "r" / "curves.png").stat().st_size > 1000


def test_pipeline_registry_and_bad_settings():
    with pytest.raises(PipelineError, match="unknown pipeline"):
        pipeline("nope")
    for kind in ("transfer", "distill", "self-train"):
        config_cls, run = pipeline(kind)
        assert callable(run)
        with pytest.raises(PipelineError, match="no_such_key: unknown setting"):
            make_config(kind, {"no_such_key": 1})
        assert make_config(kind, {}).to_dict() == config_cls().to_dict()
