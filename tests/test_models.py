"""Model zoo: every architecture trains at 32x32 (RGB and 1-channel), noise knobs, heads, layer groups."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainers.engine import AUX_WEIGHT, TrainConfig, default_loss, fit
from trainers.models import (
    MODEL_NAMES,
    DropoutLinear,
    ProxyCNN,
    aux_logits,
    build_model,
    head,
    layer_groups,
    main_logits,
    param_groups,
    replace_head,
)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward_32px_rgb_and_gray(name: str) -> None:
    for in_channels in (3, 1):
        torch.manual_seed(0)
        model = build_model(name, num_classes=7, in_channels=in_channels).train()
        out = model(torch.randn(2, in_channels, 32, 32))
        assert main_logits(out).shape == (2, 7)
        loss = main_logits(out).square().mean() + sum(a.square().mean() for a in aux_logits(out))
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        with torch.no_grad():
            assert model.eval()(torch.randn(2, in_channels, 32, 32)).shape == (2, 7)  # plain tensor in eval
    groups = layer_groups(model)
    grouped = [id(p) for g in groups for p in g.parameters()]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # every parameter exactly once
    assert head(model).out_features == 7 and any(head(model) is m for m in groups[-1].modules())


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        build_model("resnet19", 10)


@pytest.mark.parametrize(("width", "depth", "lo", "hi"), [(16, 1, 0.08e6, 0.12e6), (32, 1, 0.35e6, 0.45e6),
                                                          (16, 2, 0.2e6, 0.35e6)])
def test_proxy_size(width: int, depth: int, lo: float, hi: float) -> None:
    n = sum(p.numel() for p in ProxyCNN(width=width, depth=depth).parameters())
    assert lo < n < hi


def test_googlenet_aux_outputs_and_loss() -> None:
    torch.manual_seed(0)
    model = build_model("googlenet", 10).train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(1)
    out = model(x)
    assert len(aux_logits(out)) == 2 and aux_logits(model.eval()(x)) == []
    torch.manual_seed(1)
    loss, logits = default_loss(model.train(), x, y, 0.0)
    expected = F.cross_entropy(out.logits, y) + AUX_WEIGHT * sum(F.cross_entropy(a, y) for a in aux_logits(out))
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits, out.logits)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "regnet_y_400mf", "efficientnet_b0", "proxy"])
def test_noise_knobs_keep_keys_and_only_act_in_training(name: str) -> None:
    sd = 0.0 if name == "proxy" else 0.5
    torch.manual_seed(0)
    clean = build_model(name, 10)
    noisy = build_model(name, 10, dropout=0.5, stochastic_depth=sd)
    assert clean.state_dict().keys() == noisy.state_dict().keys()
    noisy.load_state_dict(clean.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(noisy.eval()(x), clean.eval()(x))
        assert not torch.allclose(noisy.train()(x), clean.train()(x))


def test_stochastic_depth_rejected_without_residuals() -> None:
    for name in ("proxy", "vgg11_bn", "alexnet", "densenet121", "googlenet"):
        with pytest.raises(ValueError, match="stochastic_depth"):
            build_model(name, 10, stochastic_depth=0.1)


def test_replace_head_keeps_dropout_and_aux() -> None:
    model = replace_head(ProxyCNN(10, dropout=0.3), 5)
    assert isinstance(head(model), DropoutLinear) and head(model).dropout == 0.3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    g = replace_head(build_model("googlenet", 10), 4).train()
    out = g(torch.randn(2, 3, 32, 32))
    assert [t.shape[1] for t in (main_logits(out), *aux_logits(out))] == [4, 4, 4]


def test_param_groups_decay() -> None:
    model = build_model("resnet18", 10)
    groups = param_groups(model, base_lr=1.0, decay=0.5)
    assert len(groups) == 6  # stem, layer1..4, fc
    assert [g["lr"] for g in groups] == [0.5**k for k in range(5, -1, -1)]
    assert groups[-1]["params"] == list(head(model).parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head(model).parameters():
        p.requires_grad_(True)
    probe = param_groups(model, base_lr=0.1, decay=0.5)  # linear probe: only the head remains
    assert len(probe) == 1 and probe[0]["lr"] == 0.1
    opt = torch.optim.SGD(param_groups(ProxyCNN(), 0.2, 1 / 2.6), lr=0.2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 / 2.6**4)


def test_unknown_model_groups_fall_back_to_children() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 8, 8))
    assert len(layer_groups(model)) == 2 and head(model) is model[3]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_trains_through_engine(name: str) -> None:
    torch.manual_seed(0)
    kw = {"stochastic_depth": 0.2} if name in ("resnet18", "regnet_y_400mf", "efficientnet_b0") else {}
    model = build_model(name, 3, dropout=0.2, **kw)
    x, y = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8), torch.arange(16) % 3
    res = fit(model, x, y, val_x=x, val_y=y, config=TrainConfig(epochs=1, batch_size=8, lr=0.01),
              device=torch.device("cpu"))
    assert math.isfinite(res.history[0].train_loss) and res.final_val_acc is not None
