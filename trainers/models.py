"""Model zoo for 32x32 inputs: a fast proxy CNN and torchvision classics with small-input stems.
EfficientNet-Lite0 (``trainers.efficientnet_lite``) has ImageNet weights that load offline.

Every model maps a normalised float batch (B, in_channels, 32, 32) to logits (B, num_classes), except
GoogLeNet in train mode, which returns ``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)``; use
:func:`main_logits` / :func:`aux_logits` to read any model's output. Noise knobs for Noisy Student:
``dropout`` (before the final linear layer) and ``stochastic_depth`` (drop probability of the last
residual block, decaying linearly to the first; residual models only). Both default to 0 for every
architecture (torchvision's EfficientNet defaults of 0.2/0.2 are overridden) so trials compare like with like.
State-dict keys match torchvision's whatever the noise settings, so weights move between noised and clean
copies of a model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm
from torchvision.models.googlenet import BasicConv2d, GoogLeNetOutputs, InceptionAux
from torchvision.ops import StochasticDepth, stochastic_depth

from .efficientnet_lite import EfficientNetLite0

__all__ = [
    "MODEL_NAMES", "DropoutLinear", "ProxyCNN", "aux_logits", "build_model", "head", "layer_groups",
    "main_logits", "param_groups", "replace_head", "build_seeded",
]


class DropoutLinear(nn.Linear):
    """``nn.Linear`` preceded by dropout; same state-dict keys as a plain Linear."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dropout: float = 0.0):
        super().__init__(in_features, out_features, bias)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.dropout(x, self.dropout, self.training))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.dropout}"


class _DropPathBN(nn.BatchNorm2d):
    """BatchNorm closing a residual branch, followed by per-sample stochastic depth (same keys as BN)."""

    def __init__(self, bn: nn.BatchNorm2d, p: float):
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        self.load_state_dict(bn.state_dict())
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(super().forward(x), self.p, "row", self.training)


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, momentum=0.2), nn.GELU()]


def _group(cin: int, cout: int, depth: int) -> nn.Sequential:
    layers = [nn.MaxPool2d(2), *_conv_bn(cin, cout)]
    for _ in range(depth - 1):
        layers += _conv_bn(cout, cout)
    return nn.Sequential(*layers)


class ProxyCNN(nn.Module):
    """airbench/ResNet-9-style plain CNN for cheap search trials (no residuals, so no stochastic depth).

    Stem conv(w) at full resolution, then 3 groups of widths (2w, 4w, 8w), each max-pool(2) followed by
    ``depth`` conv-BN-GELU layers, global max-pool, dropout, linear head without bias, logits times
    ``logit_scale``. ``width=16, depth=1``: 0.10M params; ``width=32``: 0.39M. Pooling before the convs
    (airbench pools after the first) quarters their cost: on 2 CPU cores 2.5-3x faster for the same CIFAR
    accuracy within seed noise (20k images, 4 epochs); ``logit_scale=0.5`` beat 0.125 and 1 at lr 0.2.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32, depth: int = 1,
                 dropout: float = 0.0, logit_scale: float = 0.5):
        super().__init__()
        widths = (2 * width, 4 * width, 8 * width)
        self.stem = nn.Sequential(*_conv_bn(in_channels, width))
        self.groups = nn.ModuleList(_group(i, o, depth) for i, o in zip((width, *widths[:-1]), widths, strict=True))
        self.head = DropoutLinear(widths[-1], num_classes, bias=False, dropout=dropout)
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for g in self.groups:
            x = g(x)
        return self.head(torch.amax(x, dim=(2, 3))) * self.logit_scale


def _drop_path_resnet(model: tvm.ResNet, p: float) -> None:
    blocks = [b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer]
    for i, b in enumerate(blocks):
        name = "bn3" if isinstance(b, tvm.resnet.Bottleneck) else "bn2"
        setattr(b, name, _DropPathBN(getattr(b, name), p * (i + 1) / len(blocks)))


def _resnet(fn: Callable[..., tvm.ResNet]) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int, dropout: float, sd: float, **kw) -> nn.Module:
        m = fn(weights=None, num_classes=num_classes, **kw)
        m.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)  # 32x32 stem: no stride, no max-pool
        m.maxpool = nn.Identity()
        m.fc = DropoutLinear(m.fc.in_features, num_classes, dropout=dropout)
        if sd:
            _drop_path_resnet(m, sd)
        return m
    return build


def _vgg(fn: Callable[..., tvm.VGG]) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int, dropout: float, sd: float, **kw) -> nn.Module:
        _no_sd(sd, "vgg")
        m = fn(weights=None, **kw)
        m.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
        m.avgpool = nn.AdaptiveAvgPool2d(1)  # 5 max-pools take 32x32 to 1x1
        m.classifier = nn.Sequential(nn.Flatten(), DropoutLinear(512, num_classes, dropout=dropout))
        return m
    return build


def _alexnet(num_classes: int, in_channels: int, dropout: float, sd: float, **kw) -> nn.Module:
    _no_sd(sd, "alexnet")
    m = tvm.alexnet(weights=None, **kw)
    m.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)  # 32 -> pools -> 15, 7, 3
    m.avgpool = nn.AdaptiveAvgPool2d(1)
    m.classifier = nn.Sequential(nn.Flatten(), DropoutLinear(256, num_classes, dropout=dropout))
    return m


def _densenet121(num_classes: int, in_channels: int, dropout: float, sd: float, **kw) -> nn.Module:
    _no_sd(sd, "densenet121")
    m = tvm.densenet121(weights=None, **kw)
    m.features.conv0 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
    m.features.pool0 = nn.Identity()  # 32 -> transitions -> 16, 8, 4
    m.classifier = DropoutLinear(m.classifier.in_features, num_classes, dropout=dropout)
    return m


def _efficientnet_b0(num_classes: int, in_channels: int, dropout: float, sd: float, **kw) -> nn.Module:
    m = tvm.efficientnet_b0(weights=None, num_classes=num_classes, dropout=dropout, stochastic_depth_prob=sd, **kw)
    m.features[0][0] = nn.Conv2d(in_channels, 32, 3, padding=1, bias=False)  # stride 1: final map 2x2
    return m


def _efficientnet_lite0(num_classes: int, in_channels: int, dropout: float, sd: float, **kw) -> nn.Module:
    """EfficientNet-Lite0 (``trainers.efficientnet_lite``); ``kw``: ``input_size`` (upsampling), ``stem_stride``."""
    return EfficientNetLite0(num_classes, in_channels, dropout=dropout, stochastic_depth=sd, **kw)


def _regnet_y_400mf(num_classes: int, in_channels: int, dropout: float, sd: float, **kw) -> nn.Module:
    m = tvm.regnet_y_400mf(weights=None, **kw)  # Y = with squeeze-excitation
    m.stem[0] = nn.Conv2d(in_channels, m.stem[0].out_channels, 3, padding=1, bias=False)  # 32 -> 16 .. 2
    m.fc = DropoutLinear(m.fc.in_features, num_classes, dropout=dropout)
    blocks = [b for stage in m.trunk_output for b in stage]
    for i, b in enumerate(blocks):
        if sd:
            b.f.add_module("drop_path", StochasticDepth(sd * (i + 1) / len(blocks), "row"))
    return m


def _googlenet(num_classes: int, in_channels: int, dropout: float, sd: float, **kw) -> nn.Module:
    """GoogLeNet with aux heads (weight 0.3 each in the engine's loss); eval mode returns plain logits."""
    _no_sd(sd, "googlenet")
    m = tvm.googlenet(weights=None, num_classes=num_classes, aux_logits=True, transform_input=False,
                      init_weights=True, dropout=dropout, **kw)
    m.conv1 = BasicConv2d(in_channels, 64, kernel_size=3, padding=1)
    m.maxpool1 = m.maxpool2 = nn.Identity()  # inception3 at 32x32, 4 at 16x16, 5 at 8x8
    return m


def _no_sd(sd: float, name: str) -> None:
    if sd:
        raise ValueError(f"{name} has no residual blocks: stochastic_depth must be 0")


def _proxy(num_classes: int, in_channels: int, dropout: float, sd: float, **kw) -> nn.Module:
    _no_sd(sd, "proxy")
    return ProxyCNN(num_classes, in_channels, dropout=dropout, **kw)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "proxy": _proxy,
    "resnet18": _resnet(tvm.resnet18), "resnet34": _resnet(tvm.resnet34), "resnet50": _resnet(tvm.resnet50),
    "vgg11_bn": _vgg(tvm.vgg11_bn), "vgg16_bn": _vgg(tvm.vgg16_bn),
    "densenet121": _densenet121, "efficientnet_b0": _efficientnet_b0, "efficientnet_lite0": _efficientnet_lite0,
    "googlenet": _googlenet,
    "alexnet": _alexnet, "regnet_y_400mf": _regnet_y_400mf,
}
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_model(name: str, num_classes: int, in_channels: int = 3, *, dropout: float = 0.0,
                stochastic_depth: float = 0.0, **kw) -> nn.Module:
    """Build ``name`` (one of ``MODEL_NAMES``) with random init for 32x32 inputs.

    ``**kw`` go to ``ProxyCNN`` (``width``, ``depth``, ``logit_scale``) or the torchvision constructor.
    Seed with ``torch.manual_seed`` first for a reproducible init.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    return _BUILDERS[name](num_classes, in_channels, dropout, stochastic_depth, **kw)


def main_logits(output: torch.Tensor | GoogLeNetOutputs) -> torch.Tensor:
    """The main logits of any model's output (GoogLeNet's train-mode namedtuple included)."""
    return output.logits if isinstance(output, GoogLeNetOutputs) else output


def aux_logits(output: torch.Tensor | GoogLeNetOutputs) -> list[torch.Tensor]:
    """Auxiliary-head logits present in ``output`` (GoogLeNet in train mode), else ``[]``."""
    if isinstance(output, GoogLeNetOutputs):
        return [a for a in (output.aux_logits1, output.aux_logits2) if a is not None]
    return []


def _split_after(seq: nn.Sequential, kind: type | tuple[type, ...]) -> list[nn.Module]:
    groups, cur = [], []
    for mod in seq:
        cur.append(mod)
        if isinstance(mod, kind):
            groups.append(nn.Sequential(*cur))
            cur = []
    return groups + ([nn.Sequential(*cur)] if cur else [])


def layer_groups(model: nn.Module) -> list[nn.Module]:
    """The model's layers as input-to-output groups (stem/stages ... head) for discriminative LRs or
    gradual unfreezing; unknown models fall back to their top-level children that hold parameters."""
    m = model
    if isinstance(m, ProxyCNN):
        gs = [m.stem, *m.groups, m.head]
    elif isinstance(m, tvm.ResNet):
        gs = [nn.ModuleList([m.conv1, m.bn1]), m.layer1, m.layer2, m.layer3, m.layer4, m.fc]
    elif isinstance(m, tvm.VGG | tvm.AlexNet):
        gs = [*_split_after(m.features, nn.MaxPool2d), m.classifier]
    elif isinstance(m, tvm.DenseNet):
        gs = [*_split_after(m.features, tvm.densenet._Transition), m.classifier]
    elif isinstance(m, EfficientNetLite0):
        gs = m.stages()
    elif isinstance(m, tvm.EfficientNet):
        gs = [*m.features, m.classifier]
    elif isinstance(m, tvm.RegNet):
        gs = [m.stem, *m.trunk_output, m.fc]
    elif isinstance(m, tvm.GoogLeNet):
        gs = [nn.ModuleList([m.conv1, m.conv2, m.conv3]), nn.ModuleList([m.inception3a, m.inception3b]),
              nn.ModuleList([m.inception4a, m.inception4b, m.inception4c, m.inception4d, m.inception4e]),
              nn.ModuleList([m.inception5a, m.inception5b]),
              nn.ModuleList([x for x in (m.fc, m.aux1, m.aux2) if x is not None])]
    else:
        gs = list(m.children())
    return [g for g in gs if any(True for _ in g.parameters())]


def param_groups(model: nn.Module, base_lr: float, decay: float) -> list[dict]:
    """Optimizer param groups with discriminative LRs: group i of G gets ``base_lr * decay**(G-1-i)``,
    so the head gets ``base_lr`` and the stem ``base_lr * decay**(G-1)`` (ULMFiT uses decay = 1/2.6).
    Frozen parameters (``requires_grad=False``) are left out."""
    groups = layer_groups(model)
    out = []
    for i, g in enumerate(groups):
        params = [p for p in g.parameters() if p.requires_grad]
        if params:
            out.append({"params": params, "lr": base_lr * decay ** (len(groups) - 1 - i)})
    return out


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    name, lin = next((n, x) for n, x in reversed(list(model.named_modules())) if isinstance(x, nn.Linear)
                     and not n.startswith(("aux1", "aux2")))
    return name, lin


def head(model: nn.Module) -> nn.Linear:
    """The final classifier layer (the last ``nn.Linear`` outside GoogLeNet's aux heads)."""
    return _last_linear(model)[1]


def _new_like(old: nn.Linear, num_classes: int) -> nn.Linear:
    kw = {"dropout": old.dropout} if isinstance(old, DropoutLinear) else {}
    new = type(old)(old.in_features, num_classes, bias=old.bias is not None, **kw)
    return new.to(old.weight.device, old.weight.dtype)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the classifier (and GoogLeNet's aux classifiers) for freshly initialised ones with
    ``num_classes`` outputs, keeping in-features, bias and dropout; returns ``model`` (changed in place)."""
    name, old = _last_linear(model)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, _new_like(old, num_classes))
    for aux in (x for x in model.modules() if isinstance(x, InceptionAux)):
        aux.fc2 = _new_like(aux.fc2, num_classes)
    return model


def build_seeded(name: str, num_classes: int, in_channels: int, kwargs: Mapping[str, Any], seed: int, *,
                 dropout: float = 0.0, stochastic_depth: float = 0.0) -> nn.Module:
    """``build_model`` initialised from ``seed`` without touching the global RNG (resume-safe)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(name, num_classes, in_channels, dropout=dropout, stochastic_depth=stochastic_depth,
                           **kwargs)
