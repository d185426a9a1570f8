"""Knowledge distillation on real CIFAR-10 images from the bundled sample: the loss, the consistent teacher,
an end-to-end run against its no-KD twin, soft-only mode and config errors."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pandas as pd
import pytest
import torch
from torch import nn

from search_spaces import BatchOp, preset, save_policy
from trainers.engine import load_checkpoint
from trainers.pipelines import PipelineError
from trainers.pipelines.distill import DistillConfig, DistillLoss, kd_loss, run_distill
from trainers.pipelines.teacher import load_model

TINY = {"train_size": 600, "val_size": 200, "test_size": 400, "teacher_kwargs": {"width": 16}, "teacher_epochs": 5,
        "student_kwargs": {"width": 8}, "epochs": 4, "batch_size": 64}


def test_kd_loss_matches_a_hand_computation():
    s = torch.tensor([[1.0, -0.5, 2.0], [0.3, 0.2, -1.0]], dtype=torch.float64)
    t = torch.tensor([[2.0, 0.0, 1.0], [-1.0, 0.5, 0.5]], dtype=torch.float64)
    y = torch.tensor([2, 0])
    temp, alpha = 4.0, 0.9

    def softmax(row, temperature):
        e = [math.exp(v / temperature) for v in row]
        return [v / sum(e) for v in e]

    kl = ce = 0.0
    for srow, trow, label in zip(s.tolist(), t.tolist(), y.tolist(), strict=True):
        ps, pt = softmax(srow, temp), softmax(trow, temp)
        kl += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt, strict=True)) / len(y)
        ce += -math.log(softmax(srow, 1.0)[label]) / len(y)
    expected = alpha * temp**2 * kl + (1 - alpha) * ce
    assert kd_loss(s, t, y, temperature=temp, alpha=alpha).item() == pytest.approx(expected, rel=1e-9)
    f32 = kd_loss(s.float(), t.float(), y, temperature=temp, alpha=alpha)
    assert f32.dtype == torch.float32 and f32.item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss(s, t, y, temperature=temp, alpha=0.0).item() == pytest.approx(ce, rel=1e-9)
    garbage = torch.tensor([99, -5])  # soft-only: labels are never read
    assert kd_loss(s, t, garbage, temperature=temp, alpha=1.0).item() == pytest.approx(temp**2 * kl, rel=1e-9)
    assert kd_loss(s, s, y, temperature=temp, alpha=1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_teacher_sees_the_students_batch_in_its_own_normalisation():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    seen = []
    teacher.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    s_mean, s_std, t_mean, t_std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), (0.45, 0.5, 0.4), (0.3, 0.2, 0.25)
    loss_fn = DistillLoss(teacher, num_classes=5, temperature=2.0, alpha=0.5, student_norm=(s_mean, s_std),
                          teacher_norm=(t_mean, t_std))
    raw = torch.rand(6, 3, 4, 4)
    as_student = (raw - torch.tensor(s_mean).view(1, 3, 1, 1)) / torch.tensor(s_std).view(1, 3, 1, 1)
    loss, logits = loss_fn(student, as_student, torch.arange(6) % 5, torch.arange(6))
    loss.backward()
    expected = (raw - torch.tensor(t_mean).view(1, 3, 1, 1)) / torch.tensor(t_std).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], expected, rtol=1e-5, atol=1e-5)
    assert not teacher.training and all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    with torch.no_grad():
        hand = kd_loss(student(as_student), teacher(expected), torch.arange(6) % 5, temperature=2.0, alpha=0.5)
    assert loss.item() == pytest.approx(hand.item(), rel=1e-5)


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("kd")
    return run_distill(DistillConfig(**TINY, policy="crop_flip_cutout"), output=out, name="kd")


@pytest.mark.slow
def test_student_trains_with_a_teacher_trained_in_the_run(kd_run, tmp_path):
    folder = kd_run["folder"]
    history = kd_run["stages"]["student"]
    assert kd_run["stages"]["teacher"]["epochs"] == 5 and history["epochs"] == 4
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["val_acc"][-1] > history["val_acc"][0]
    assert kd_run["student_test_acc"] > 0.15 and kd_run["teacher_test_acc"] > 0.2  # chance 0.1; 400 test images
    assert kd_run["student_params"] < kd_run["teacher_params"]
    ckpt = load_checkpoint(f"{folder}/teacher.pt")  # weights_only
    assert ckpt["extra"]["model"] == "proxy" and ckpt["extra"]["model_kwargs"] == {"width": 16}
    student, spec = load_model(f"{folder}/model.pt")
    assert spec.model_kwargs == {"width": 8} and len(spec.mean) == 3
    assert json.loads(open(f"{folder}/final.json").read())["student_test_acc"] == kd_run["student_test_acc"]

    # the no-KD twin: same student, seeds and data, plain CE (alpha = 0), the run's teacher given as a file
    twin = run_distill(DistillConfig(**TINY, policy="crop_flip_cutout", alpha=0.0, teacher=f"{folder}/teacher.pt"),
                       output=tmp_path, name="twin")
    assert "teacher" not in twin["stages"]  # loaded, not retrained
    assert twin["teacher_test_acc"] == kd_run["teacher_test_acc"]
    assert twin["student_test_acc"] > 0.15
    print(f"\nKD student {kd_run['student_test_acc']:.3f} vs no-KD twin {twin['student_test_acc']:.3f} "
          f"(teacher {kd_run['teacher_test_acc']:.3f})")


@pytest.mark.slow
def test_soft_only_on_unlabelled_images_with_function_matching(kd_run, tmp_path):
    cfg = DistillConfig(**{**TINY, "epochs": 2}, teacher=f"{kd_run['folder']}/teacher.pt", alpha=1.0,
                        unlabeled_size=300, mixup=1.0, temperature=2.0)
    result = run_distill(cfg, output=tmp_path, name="soft")
    assert result["splits"]["unlabeled"] == 300
    rows = pd.read_csv(f"{result['folder']}/metrics.csv")
    assert len(rows[rows.stage == "student"]) == 2
    assert rows[rows.stage == "student"].train_acc.isna().all()  # unlabelled rows: no train accuracy
    assert result["student_test_acc"] > 0.1


@pytest.mark.parametrize(("change", "field"), [
    ({"alpha": 1.5}, "alpha"),
    ({"temperature": 0}, "temperature"),
    ({"epochs": 0}, "epochs"),
    ({"unlabeled_size": 100, "alpha": 0.5}, "unlabeled_size"),
    ({"student_model": "nope"}, "student_model"),
    ({"student_kwargs": {"width": 8, "bogus": 1}}, "student_model"),
    ({"teacher": "/no/such/teacher.pt"}, "teacher"),
    ({"policy": "no-such-preset"}, "no-such-preset"),
    ({"mixup": 1.0, "policy": "__cutmix__"}, "mixup"),
])
def test_bad_configs_are_one_line_errors(change, field, tmp_path):
    if change.get("policy") == "__cutmix__":
        cutmix = replace(preset("none"), batch_ops=(BatchOp("cutmix"),))
        change = {**change, "policy": str(save_policy(cutmix, tmp_path / "cutmix.json"))}
    with pytest.raises(PipelineError, match=field) as err:
        DistillConfig(**change)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_a_stage_checkpoint_is_not_a_teacher(kd_run, tmp_path):
    cfg = DistillConfig(**TINY, teacher=f"{kd_run['folder']}/checkpoints/student.pt")
    with pytest.raises(PipelineError, match="not a model checkpoint"):
        run_distill(cfg, output=tmp_path)
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(PipelineError, match=r"^epoch: unknown field \(known DistillConfig keys: "):
        DistillConfig.from_dict({"epoch": 3})
