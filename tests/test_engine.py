"""Training engine on real CIFAR-10 images: learning, determinism, early stop, divergence, soft targets,
checkpoint/resume."""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_ZIP  # tests/ is on sys.path under pytest
from PIL import Image

from trainers.engine import (
    EpochMetrics,
    TrainConfig,
    TrainingDiverged,
    evaluate,
    fit,
    load_checkpoint,
    make_optimizer,
    predict_logits,
    restore_checkpoint,
    save_checkpoint,
    schedule_factor,
    select_device,
)
from trainers.models import build_model, param_groups

ZIP = SHARED_ZIP
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    """600 train + 400 val real images (uint8 (N, 3, 32, 32)), class-balanced, decoded from the shared zip."""
    if not ZIP.is_file():
        pytest.skip(f"shared data not found at {ZIP}")
    with zipfile.ZipFile(ZIP) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
        classes = sorted({n.split("/")[1] for n in names})
        per_class = {c: [n for n in names if n.split("/")[1] == c][:100] for c in classes}
        picked = [(n, k) for k, c in enumerate(classes) for n in per_class[c]]
        x = np.stack([np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB")) for n, _ in picked])
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([k for _, k in picked])
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, va = perm[:600], perm[600:]
    return {"x": x[tr], "y": y[tr], "vx": x[va], "vy": y[va]}


def flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random horizontal flip: a stand-in for the real batched augmentation module."""
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    return torch.where(torch.rand(len(x), 1, 1, 1, generator=gen) < 0.5, x.flip(3), x)


def small(seed: int = 0, **kw) -> tuple[torch.nn.Module, TrainConfig]:
    torch.manual_seed(seed)
    return build_model("proxy", 10, width=8, dropout=0.1), TrainConfig(**{"epochs": 2, "batch_size": 64, "seed": seed,
                                                                          **kw})


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_learns_real_images(data: dict) -> None:
    torch.manual_seed(0)
    model = build_model("proxy", 10, width=16)
    seen: list[EpochMetrics] = []
    cfg = TrainConfig(epochs=4, batch_size=50, lr=0.1)
    res = fit(model, data["x"], data["y"], val_x=data["vx"], val_y=data["vy"], config=cfg, device=CPU,
              augment=flip, on_epoch=seen.append)
    assert seen == res.history and [m.epoch for m in seen] == [1, 2, 3, 4] and res.stopped_reason is None
    assert res.final_val_acc > 0.3, res.history  # chance 0.10; seeds 0-4 reach 0.407-0.423
    assert res.history[-1].train_loss < res.history[0].train_loss
    assert all(m.images_per_s > 0 and m.seconds > 0 for m in res.history)
    assert res.history[-1].lr == pytest.approx(0.1 * schedule_factor(47, 48, cfg))  # 12 steps x 4 epochs
    acc, loss = evaluate(model, data["vx"], data["vy"], device=CPU, mean=res.mean, std=res.std)
    assert acc == pytest.approx(res.final_val_acc) and loss == pytest.approx(res.history[-1].val_loss)


def test_same_seed_identical_other_seed_differs(data: dict) -> None:
    runs = []
    for seed in (0, 0, 1):
        model, cfg = small(seed)
        res = fit(model, data["x"], data["y"], val_x=data["vx"], val_y=data["vy"], config=cfg, device=CPU,
                  augment=flip)
        runs.append(([(m.train_loss, m.train_acc, m.val_acc, m.val_loss) for m in res.history], weights(model)))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    assert runs[0][0] != runs[2][0]


def test_callback_stops_early(data: dict) -> None:
    model, cfg = small(epochs=5)
    res = fit(model, data["x"], data["y"], config=cfg, device=CPU, on_epoch=lambda m: m.epoch == 2)
    assert res.stopped_reason == "callback" and len(res.history) == 2
    assert res.best_val_acc is None and res.history[0].val_acc is None


@pytest.mark.parametrize("how", ["lr", "loss_fn"])
def test_divergence_raises(data: dict, how: str) -> None:
    model, cfg = small(lr=1e30 if how == "lr" else 0.1, warmup_frac=0.0)
    def nan_loss(m, x, y, idx):
        return m(x).sum() * math.nan
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step \d+/9"):
        fit(model, data["x"], data["y"], config=cfg, device=CPU, loss_fn=nan_loss if how == "loss_fn" else None)


def test_soft_targets_match_hard_labels(data: dict) -> None:
    hist = []
    for y in (data["y"], F.one_hot(data["y"], 10).float()):
        model, cfg = small()
        res = fit(model, data["x"], y, val_x=data["vx"], val_y=data["vy"], config=cfg, device=CPU)
        hist.append([(m.train_loss, m.val_acc) for m in res.history])
    np.testing.assert_allclose(hist[0], hist[1], rtol=1e-4)
    model, cfg = small()
    soft = torch.full((len(data["y"]), 10), 0.02).scatter_(1, data["y"][:, None], 0.82)  # e.g. pseudo-labels
    res = fit(model, data["x"], soft, val_x=data["vx"], val_y=data["vy"], config=cfg, device=CPU)
    assert all(math.isfinite(m.train_loss) and 0 <= m.train_acc <= 1 for m in res.history)


def test_float_images_match_uint8(data: dict) -> None:
    hist = []
    for x in (data["x"], data["x"].float() / 255):
        model, cfg = small()
        hist.append([m.train_loss for m in fit(model, x, data["y"], config=cfg, device=CPU).history])
    assert hist[0] == hist[1]


def test_custom_loss_sees_indices(data: dict) -> None:
    model, cfg = small(epochs=1)
    def loss_fn(m, x, y, idx):
        assert torch.equal(y, data["y"][idx]) and x.shape == (64, 3, 32, 32)
        return F.cross_entropy(m(x), y)
    res = fit(model, data["x"], data["y"], config=cfg, device=CPU, loss_fn=loss_fn)
    assert math.isnan(res.history[0].train_acc)  # no logits returned


def test_resume_equals_uninterrupted(data: dict, tmp_path: Path) -> None:
    model, cfg = small(epochs=3)
    full = fit(model, data["x"], data["y"], val_x=data["vx"], val_y=data["vy"], config=cfg, device=CPU,
               augment=flip)
    expected = weights(model)

    model, cfg = small(epochs=3)
    opt = make_optimizer(model, cfg)
    def checkpoint_and_stop(m: EpochMetrics) -> bool:
        save_checkpoint(tmp_path / "ckpt.pt", model, opt, m.epoch, {"mean": [0.5], "note": "x"})
        return m.epoch == 1
    fit(model, data["x"], data["y"], config=cfg, device=CPU, augment=flip, optimizer=opt,
        on_epoch=checkpoint_and_stop)

    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["extra"] == {"mean": [0.5], "note": "x"}
    model, cfg = small(seed=5, epochs=3)  # different init: everything must come from the checkpoint
    cfg.seed = 0
    opt = make_optimizer(model, cfg)
    start = restore_checkpoint(load_checkpoint(tmp_path / "ckpt.pt"), model, opt)
    rest = fit(model, data["x"], data["y"], val_x=data["vx"], val_y=data["vy"], config=cfg, device=CPU,
               augment=flip, optimizer=opt, start_epoch=start)
    assert [m.epoch for m in rest.history] == [2, 3]
    assert [m.val_acc for m in rest.history] == [m.val_acc for m in full.history[1:]]
    assert all(torch.equal(expected[k], v) for k, v in model.state_dict().items())


def test_discriminative_lrs_follow_the_schedule(data: dict) -> None:
    model, cfg = small(epochs=1)
    opt = make_optimizer(param_groups(model, base_lr=0.1, decay=0.5), cfg)
    res = fit(model, data["x"], data["y"], config=cfg, device=CPU, optimizer=opt)
    lrs = [g["lr"] for g in opt.param_groups]
    assert res.history[-1].lr == lrs[-1] == pytest.approx(0.1 * schedule_factor(8, 9, cfg))
    assert lrs == pytest.approx([lrs[-1] * 0.5**k for k in range(len(lrs) - 1, -1, -1)])


def test_config_validation() -> None:
    for bad in ({"warmup_frac": 1.0}, {"mean": (0.5, 0.5, 0.5)}, {"schedule": "cosine"}, {"epochs": 0}):
        with pytest.raises(ValueError, match="TrainConfig"):
            TrainConfig(**bad)


def test_schedule() -> None:
    cfg = TrainConfig(warmup_frac=0.2)
    f = [schedule_factor(s, 100, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.05) and max(f) == f[19] == 1.0 and f[-1] == pytest.approx(1 / 80)
    lin = [schedule_factor(s, 10, TrainConfig(schedule="linear")) for s in range(10)]
    assert lin[0] == 1.0 and lin[-1] == pytest.approx(0.1) and lin == sorted(lin, reverse=True)


def test_predict_restores_mode_and_threads(data: dict) -> None:
    model, cfg = small(epochs=1, num_threads=1)
    before = torch.get_num_threads()
    res = fit(model, data["x"][:128], data["y"][:128], config=cfg, device=CPU)
    assert torch.get_num_threads() == before
    model.train()
    logits = predict_logits(model, data["vx"], device=CPU, batch_size=100, mean=res.mean, std=res.std)
    assert logits.shape == (400, 10) and logits.dtype == torch.float32 and model.training


def test_select_device() -> None:
    assert select_device("cpu") == CPU
    assert select_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(RuntimeError, match="cuda:99"):
        select_device("cuda:99")
