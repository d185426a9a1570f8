"""Noisy-Student self-training on real CIFAR-10 images from the bundled sample: pseudo-labelling (threshold,
soft/hard targets, balancing), the teacher hand-over between iterations, resume, a policy file, bad configs."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from search_spaces import BatchOp, preset, save_policy
from trainers.data import load_dataset
from trainers.engine import load_checkpoint, predict_logits
from trainers.models import build_model
from trainers.pipelines import PipelineError, Run
from trainers.pipelines.self_train import SelfTrainConfig, pseudo_label, run_self_train

TINY = {"train_size": 300, "val_size": 100, "test_size": 300, "unlabeled_size": 400, "teacher_kwargs": {"width": 8},
        "student_kwargs": {"width": 8}, "teacher_epochs": 3, "epochs": 2, "batch_size": 64, "dropout": 0.2}


def _logits(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs).log()


def test_pseudo_labels_are_thresholded_with_soft_targets():
    probs = [[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8], [0.34, 0.33, 0.33]]
    pl = pseudo_label(_logits(probs), threshold=0.35, temperature=2.0)
    assert pl.index.tolist() == [0, 1, 2]  # row 3 (max 0.34) is dropped
    assert pl.predicted.tolist() == [0, 0, 2, 0]
    torch.testing.assert_close(pl.confidence, torch.tensor([0.7, 0.4, 0.8, 0.34]))
    expected = torch.softmax(_logits(probs)[:3] / 2.0, 1)
    torch.testing.assert_close(pl.targets, expected)
    assert pl.stats(torch.tensor([0, 1, 2, 0])) == {"pool": 4, "pseudo_labels": 3, "kept": 3, "kept_fraction": 0.75,
                                                   "per_class": [2, 0, 1], "pool_acc": 0.75, "pseudo_acc": 2 / 3}


def test_pseudo_labels_are_balanced_by_capping_and_duplication():
    probs = [[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.8, 0.1, 0.1], [0.5, 0.4, 0.1], [0.7, 0.2, 0.1],  # class 0 x5
             [0.1, 0.8, 0.1], [0.2, 0.6, 0.2],  # class 1 x2
             [0.35, 0.3, 0.35], [0.3, 0.3, 0.4]]  # class 2, both below the threshold
    pl = pseudo_label(_logits(probs), soft=False, threshold=0.45, per_class=3, label_smoothing=0.3, seed=0)
    assert pl.index[:3].tolist() == [0, 2, 4]  # class 0 capped: most confident first
    ones = pl.index[3:].tolist()
    assert len(ones) == 3 and sorted(set(ones)) == [5, 6]  # class 1: both kept, one duplicated at random
    hard = torch.tensor([[0.8, 0.1, 0.1]] * 3 + [[0.1, 0.8, 0.1]] * 3)  # one-hot, smoothed by 0.3
    torch.testing.assert_close(pl.targets, hard)
    assert pl.stats()["per_class"] == [3, 3, 0]
    # fewer than per_class: whole copies first, then a seeded sample of the rest
    many = pseudo_label(_logits(probs), threshold=0.45, per_class=5, seed=1)
    counts = torch.bincount(many.index[5:], minlength=9)[5:7].tolist()
    assert sorted(counts) == [2, 3]
    again = pseudo_label(_logits(probs), threshold=0.45, per_class=5, seed=1)
    assert torch.equal(many.index, again.index)
    assert len(pseudo_label(_logits(probs), threshold=0.95).index) == 0


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    return run_self_train(SelfTrainConfig(**TINY), output=tmp_path_factory.mktemp("ns"), name="ns")


@pytest.mark.slow
def test_noisy_student_iterations(run):
    folder = run["folder"]
    metrics = pd.read_csv(f"{folder}/metrics.csv")
    assert list(dict.fromkeys(metrics.stage)) == ["teacher", "student-1", "student-2"]
    assert metrics.groupby("stage").size().to_dict() == {"teacher": 3, "student-1": 2, "student-2": 2}
    its = run["iterations"]
    assert [it["iteration"] for it in its] == [1, 2]
    assert its[1]["teacher_test_acc"] == its[0]["student_test_acc"]  # the student teaches next
    assert run["test_acc"] == its[1]["student_test_acc"]
    for it in its:
        assert it["pool"] == 400 and 0 < it["kept"] <= 400 and 0 <= it["pseudo_acc"] <= 1
        assert it["kept_fraction"] == it["kept"] / 400
        assert set(it["per_class"]) <= {0, 40}  # balanced to pool // classes per class
        assert it["pseudo_labels"] == sum(it["per_class"])
    assert run["teacher_test_acc"] > 0.15  # chance is 0.1


def _logits_of(folder: str, stage: str, pool_x: torch.Tensor, width: int = 8) -> torch.Tensor:
    ckpt = load_checkpoint(f"{folder}/checkpoints/{stage}.pt")
    model = build_model("proxy", 10, width=width)
    model.load_state_dict(ckpt["model"])
    model.to(memory_format=torch.channels_last)  # as trained
    return predict_logits(model, pool_x, device=torch.device("cpu"), mean=ckpt["extra"]["mean"],
                          std=ckpt["extra"]["std"])


@pytest.mark.slow
def test_iteration_two_is_labelled_by_iteration_ones_student(run):
    folder = run["folder"]
    saved = Run(Path(folder), {})
    pool = torch.as_tensor(pd.read_json(f"{folder}/splits.json", typ="series")["unlabeled"])
    pool_x = load_dataset("sample").images[pool]
    for i, stage in ((1, "teacher"), (2, "student-1")):
        cached = saved.load_arrays(f"pseudo-{i}")
        again = pseudo_label(_logits_of(folder, stage, pool_x), threshold=0.3, per_class=40, seed=i)
        torch.testing.assert_close(cached["confidence"], again.confidence)
        assert torch.equal(cached["index"], again.index)
        torch.testing.assert_close(cached["targets"], again.targets)
    teacher_conf = pseudo_label(_logits_of(folder, "teacher", pool_x)).confidence
    assert not torch.allclose(saved.load_arrays("pseudo-2")["confidence"], teacher_conf)


class Interrupt(RuntimeError):
    pass


@pytest.mark.slow
def test_resume_after_an_interruption_gives_the_same_result(run, tmp_path):
    def stop_in_student_1(event):
        if event.kind == "epoch" and event.stage == "student-1" and event.done == 1:
            raise Interrupt("stopped after student-1 epoch 1")

    with pytest.raises(Interrupt):
        run_self_train(SelfTrainConfig(**TINY), output=tmp_path, name="ns", reporter=stop_in_student_1)
    assert (tmp_path / "ns" / "arrays" / "pseudo-1.npz").is_file()
    resumed = run_self_train(SelfTrainConfig(**TINY), output=tmp_path, name="ns", resume=True)
    assert resumed["resumed_stages"] == ["teacher", "student-1"]
    assert resumed["iterations"] == run["iterations"]
    assert resumed["test_acc"] == run["test_acc"]
    metrics = Run((tmp_path / "ns"), {}).metrics()
    assert metrics.groupby("stage").size().to_dict() == {"teacher": 3, "student-1": 2, "student-2": 2}
    with pytest.raises(PipelineError, match="config differs in epochs"):
        run_self_train(SelfTrainConfig(**{**TINY, "epochs": 3}), output=tmp_path, name="ns", resume=True)


@pytest.mark.slow
def test_a_policy_file_is_plugged_in(tmp_path):
    policy = replace(preset("randaugment"), batch_ops=(BatchOp("mixup", 0.5, 1.0),), name="exported")
    path = save_policy(policy, tmp_path / "policy.json")
    small = {**TINY, "iterations": 1, "epochs": 1, "teacher_epochs": 1, "soft": False}
    with_policy = run_self_train(SelfTrainConfig(**small, policy=str(path)), output=tmp_path, name="p")
    without = run_self_train(SelfTrainConfig(**small), output=tmp_path, name="none")
    loss = {name: pd.read_csv(f"{r['folder']}/metrics.csv").train_loss.tolist()
            for name, r in (("policy", with_policy), ("none", without))}
    assert loss["policy"] != loss["none"]  # same seeds and data: only the policy differs
    assert all(math.isfinite(v) for v in loss["policy"])
    assert pd.read_json(f"{with_policy['folder']}/config.json", typ="series")["policy"] == str(path)


@pytest.mark.parametrize(("change", "field"), [
    ({"teacher_kwargs": {"width": 32}, "student_kwargs": {"width": 16}}, "student_model: the student must be equal"),
    ({"stochastic_depth": 0.2}, "stochastic_depth"),
    ({"threshold": 1.5}, "threshold"),
    ({"iterations": 0}, "iterations"),
    ({"per_class": 0}, "per_class"),
    ({"unlabeled_size": -1}, "unlabeled_size"),
    ({"teacher_model": "resnet999"}, "teacher_model"),
    ({"policy": "missing/policy.json"}, "policy"),
])
def test_bad_configs_are_one_line_errors(change, field):
    with pytest.raises(PipelineError, match=field) as err:
        SelfTrainConfig(**change)
    assert "\n" not in str(err.value)


def test_resnet_students_take_stochastic_depth():
    cfg = SelfTrainConfig(student_model="resnet18", student_kwargs={}, stochastic_depth=0.2)
    assert SelfTrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(PipelineError, match=r"^iteration: unknown field \(known SelfTrainConfig keys: "):
        SelfTrainConfig.from_dict({"iteration": 3})
