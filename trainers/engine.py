"""The one training loop: whole dataset resident on the device, seeded per-epoch permutations, SGD-Nesterov
with a per-step one-cycle/linear schedule, AMP on CUDA, channels_last, resumable and bit-reproducible on CPU.

Normalisation: inputs are scaled to [0, 1], augmented, then normalised with per-channel ``mean``/``std``
(from ``TrainConfig`` or computed once from ``train_x``; returned in ``FitResult`` and to be passed to
``evaluate``/``predict_logits`` so they see what training saw).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainers.models import aux_logits, main_logits

AUX_WEIGHT = 0.3  # GoogLeNet auxiliary-loss weight (Szegedy et al. 2015)

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
LossOut = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], LossOut]


@dataclass
class TrainConfig:
    """Hyper-parameters of one ``fit`` call (the defaults suit ``ProxyCNN`` on CIFAR-sized data)."""

    epochs: int = 8
    batch_size: int = 256  # last partial batch of an epoch is dropped (one batch of N if N < batch_size)
    lr: float = 0.2  # peak LR (per param group, scaled by the schedule)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    schedule: Literal["onecycle", "linear"] = "onecycle"  # onecycle: linear warm-up, then linear decay to 0
    warmup_frac: float = 0.2  # of all steps; onecycle only
    seed: int = 0
    amp: bool = True  # CUDA only: bf16 autocast (fp16 + GradScaler where bf16 is unsupported)
    channels_last: bool = True  # NHWC activations (CUDA, and CPU: ProxyCNN trains 1.4x faster on 2 cores)
    eval_batch_size: int = 1024
    grad_clip: float | None = None  # max global grad norm
    mean: tuple[float, ...] | None = None  # per-channel, in [0, 1] units; None: computed from train_x
    std: tuple[float, ...] | None = None
    num_threads: int | None = None  # torch.set_num_threads for the duration of fit; None: leave as is
    eval_every: int = 1  # evaluate val_x every this many epochs (and always after the last epoch)

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, self.eval_every) < 1 or not 0 <= self.warmup_frac < 1 or self.lr < 0:
            raise ValueError(f"invalid TrainConfig: {self}")
        if self.schedule not in ("onecycle", "linear") or (self.mean is None) != (self.std is None):
            raise ValueError(f"invalid TrainConfig (schedule, or only one of mean/std given): {self}")


@dataclass
class EpochMetrics:
    """One epoch's results; ``epoch`` counts completed epochs (1-based), ready for ``start_epoch``."""

    epoch: int
    train_loss: float
    train_acc: float  # nan when a custom loss_fn returns no logits
    val_acc: float | None
    val_loss: float | None
    images_per_s: float  # training steps only
    lr: float  # last param group's LR at the epoch's last step
    seconds: float  # training steps only


@dataclass
class FitResult:
    """History of the epochs run by this ``fit`` call and the normalisation it used."""

    history: list[EpochMetrics]
    best_val_acc: float | None
    final_val_acc: float | None
    stopped_reason: str | None  # None: ran to config.epochs; "callback": on_epoch returned True
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    seconds: float = 0.0  # wall time of the whole call


class TrainingDiverged(RuntimeError):
    """The training loss became NaN/inf; the message names the epoch and step."""


def select_device(prefer: str | None = None) -> torch.device:
    """Pick the device once per process: ``prefer`` ("cpu", "cuda", "cuda:1") or CUDA when available."""
    if prefer is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(prefer)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise RuntimeError(f"device {prefer!r} requested but {torch.cuda.device_count()} CUDA devices are visible")
    return device


def make_optimizer(params: nn.Module | Sequence[dict] | Any, config: TrainConfig) -> torch.optim.SGD:
    """SGD with the config's momentum/Nesterov/weight decay; ``params`` is a model, parameters, or the
    param groups of ``trainers.models.param_groups`` (their own ``lr`` is kept as their peak LR)."""
    if isinstance(params, nn.Module):
        params = params.parameters()
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay)


def schedule_factor(step: int, total: int, config: TrainConfig) -> float:
    """LR multiplier before optimizer step ``step`` of ``total``: linear ramp to 1 over the warm-up, then
    linear decay reaching 1/(steps left) on the last step (no step is wasted at LR 0)."""
    warm = round(config.warmup_frac * total) if config.schedule == "onecycle" else 0
    return (step + 1) / warm if step < warm else (total - step) / (total - warm)


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of an image tensor (N, C, H, W), uint8 or float in [0, 1], in [0, 1] units."""
    s = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    s2 = torch.zeros_like(s)
    for i in range(0, len(x), chunk):
        xb = _to_unit(x[i:i + chunk]).double()
        s += xb.sum((0, 2, 3))
        s2 += xb.square().sum((0, 2, 3))
    n = x.numel() / x.shape[1]
    mean = s / n
    std = (s2 / n - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


class _Norm:
    """[0,1] batch -> normalised (and optionally channels_last) model input."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device, channels_last: bool):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.inv_std = 1 / torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) * self.inv_std).contiguous(memory_format=self.fmt)


def _amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not (amp and device.type == "cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def default_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, label_smoothing: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy with label smoothing for int labels (B,) or soft targets (B, K), plus AUX_WEIGHT times
    each auxiliary head's loss (GoogLeNet); returns (loss, main logits)."""
    out = model(x)
    logits = main_logits(out)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    for a in aux_logits(out):
        loss = loss + AUX_WEIGHT * F.cross_entropy(a.float(), y, label_smoothing=label_smoothing)
    return loss, logits


def step_generator() -> torch.Generator:
    """A CPU generator seeded from the global torch RNG, which ``fit`` reseeds every epoch from (seed, epoch):
    draws made with it (batch-op mixing) replay exactly when a run resumes mid-schedule."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))


class Mixer(Protocol):
    def mix(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, generator: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]: ...


def mixing_loss(mixer: Mixer, num_classes: int, label_smoothing: float) -> LossFn:
    """The one mixing loss: a ``fit`` loss_fn applying the policy's batch ops (cutmix/mixup) through
    ``mixer.mix`` (an ``Augmenter`` or a schedule's ``ScheduledAugmenter``) to the normalised batch and its
    labels, then :func:`default_loss`; resume-exact through :func:`step_generator`."""

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> LossOut:
        x, soft = mixer.mix(x, y, num_classes, step_generator())
        return default_loss(model, x, soft, label_smoothing)

    return loss_fn


def _epoch_seeds(seed: int, epoch: int) -> list[int]:
    """Independent seeds (global torch RNG, permutation, augmentation) that depend only on (seed, epoch),
    so a resumed run replays exactly the epochs an uninterrupted run would."""
    return [int(s) for s in np.random.SeedSequence([int(seed), epoch]).generate_state(3)]


def fit(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, *, config: TrainConfig,
        device: torch.device, val_x: torch.Tensor | None = None, val_y: torch.Tensor | None = None,
        augment: Augment | None = None, loss_fn: LossFn | None = None,
        on_epoch: Callable[[EpochMetrics], bool | None] | None = None, start_epoch: int = 0,
        optimizer: torch.optim.Optimizer | None = None) -> FitResult:
    """Train ``model`` in place for epochs ``start_epoch .. config.epochs - 1``.

    train_x: (N, C, H, W) uint8 or float in [0, 1], moved to ``device`` once. train_y: int64 (N,) labels or
    float (N, K) soft targets. augment(x, generator): batched per-sample augmentation of a float [0, 1]
    batch, same shape out; if ``augment`` has a ``set_epoch(epoch)`` method (a schedule's augmenter) it is
    called with the 0-based epoch before that epoch's first step. loss_fn(model, x, y, idx) replaces
    ``default_loss``: x is the augmented, normalised batch exactly as the model sees it, idx its indices into
    train_x; it returns the loss or (loss, logits) (train_acc is nan without logits). on_epoch(metrics)
    returning True stops early.
    optimizer: default ``make_optimizer(model, config)``; pass one to checkpoint it from ``on_epoch`` or to
    resume (with ``start_epoch`` = the checkpoint's epoch) -- the schedule is a function of the global step
    and each group's ``initial_lr``, so there is no scheduler state. Raises TrainingDiverged on NaN/inf loss.
    """
    t_start = time.perf_counter()
    if len(train_x) != len(train_y) or train_x.ndim != 4 or len(train_x) == 0:
        raise ValueError(f"train_x must be (N, C, H, W) with len(train_y) == N; got {tuple(train_x.shape)}, "
                         f"{tuple(train_y.shape)}")
    if not 0 <= start_epoch <= config.epochs:
        raise ValueError(f"start_epoch={start_epoch} outside [0, {config.epochs}]")
    with num_threads(config.num_threads):
        return _fit(model, train_x, train_y, config, device, val_x, val_y, augment, loss_fn, on_epoch,
                    start_epoch, optimizer, t_start)


@contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block (``None``: leave as is), then the previous count."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, config: TrainConfig,
         device: torch.device, val_x: torch.Tensor | None, val_y: torch.Tensor | None, augment: Augment | None,
         loss_fn: LossFn | None, on_epoch: Callable[[EpochMetrics], bool | None] | None, start_epoch: int,
         optimizer: torch.optim.Optimizer | None, t_start: float) -> FitResult:
    cuda = device.type == "cuda"
    train_x, train_y = train_x.to(device), train_y.to(device)
    val_x, val_y = (val_x.to(device), val_y.to(device)) if val_x is not None and val_y is not None else (None, None)
    mean, std = (config.mean, config.std) if config.mean else channel_stats(train_x)
    norm = _Norm(mean, std, device, config.channels_last)
    model.to(device, memory_format=norm.fmt)
    amp = _amp_dtype(device, config.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    opt = optimizer or make_optimizer(model, config)
    for g in opt.param_groups:
        g.setdefault("initial_lr", g["lr"])
    for state in opt.state.values():  # e.g. momentum restored before the model moved to the device
        state.update({k: v.to(device) for k, v in state.items() if torch.is_tensor(v) and k != "step"})
    n, bs = len(train_x), min(config.batch_size, len(train_x))
    steps = n // bs
    total = config.epochs * steps
    check_every = 25 if cuda else 1  # NaN check syncs; on CUDA look only every few steps
    history: list[EpochMetrics] = []
    stopped = None
    for epoch in range(start_epoch, config.epochs):
        torch_seed, perm_seed, aug_seed = _epoch_seeds(config.seed, epoch)
        torch.manual_seed(torch_seed)  # dropout / stochastic depth
        perm = torch.randperm(n, device=device, generator=torch.Generator(device).manual_seed(perm_seed))
        aug_gen = torch.Generator(device).manual_seed(aug_seed)
        if hasattr(augment, "set_epoch"):
            augment.set_epoch(epoch)
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        has_logits = True
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for step in range(steps):
            idx = perm[step * bs:(step + 1) * bs]
            xb, yb = _to_unit(train_x[idx]), train_y[idx]
            if augment is not None:
                xb = augment(xb, aug_gen)
            xb = norm(xb)
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * schedule_factor(epoch * steps + step, total, config)
            with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                out = loss_fn(model, xb, yb, idx) if loss_fn else default_loss(model, xb, yb, config.label_smoothing)
            loss, logits = out if isinstance(out, tuple) else (out, None)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip is not None:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(opt)
            scaler.update()
            loss_sum += loss.detach().float() * len(idx)
            if logits is None:
                has_logits = False
            else:
                target = yb if yb.ndim == 1 else yb.argmax(1)
                correct += (logits.detach().argmax(1) == target).sum()
            if ((step + 1) % check_every == 0 or step + 1 == steps) and not torch.isfinite(loss_sum):
                raise TrainingDiverged(f"non-finite training loss at epoch {epoch + 1}, step {step + 1}/{steps} "
                                       f"(lr={opt.param_groups[-1]['lr']:.3g})")
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        val_acc = val_loss = None
        if val_x is not None and ((epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs):
            val_acc, val_loss = evaluate(model, val_x, val_y, device=device, batch_size=config.eval_batch_size,
                                         mean=mean, std=std, amp=config.amp, channels_last=config.channels_last)
        m = EpochMetrics(epoch=epoch + 1, train_loss=loss_sum.item() / (steps * bs),
                         train_acc=correct.item() / (steps * bs) if has_logits else math.nan,
                         val_acc=val_acc, val_loss=val_loss, images_per_s=steps * bs / max(seconds, 1e-9),
                         lr=opt.param_groups[-1]["lr"], seconds=seconds)
        history.append(m)
        if on_epoch is not None and on_epoch(m):
            stopped = "callback"
            break
    vals = [h.val_acc for h in history if h.val_acc is not None]
    return FitResult(history=history, best_val_acc=max(vals) if vals else None,
                     final_val_acc=vals[-1] if vals else None, stopped_reason=stopped, mean=tuple(mean),
                     std=tuple(std), seconds=time.perf_counter() - t_start)


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, *, device: torch.device, batch_size: int = 1024,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None, amp: bool = True,
                   channels_last: bool = True) -> torch.Tensor:
    """Eval-mode float32 logits (N, K) on ``device`` for pseudo-labelling/distillation targets.

    x: (N, C, H, W) uint8 or float in [0, 1]. Pass the training ``mean``/``std`` (``FitResult.mean/std``);
    None falls back to the statistics of ``x`` itself. The model's train/eval mode is restored after."""
    if mean is None or std is None:
        mean, std = channel_stats(x)
    norm = _Norm(mean, std, device, channels_last)
    amp_dtype = _amp_dtype(device, amp)
    was_training = model.training
    model.eval()
    try:
        outs = []
        for i in range(0, len(x), batch_size):
            xb = norm(_to_unit(x[i:i + batch_size].to(device)))
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                outs.append(main_logits(model(xb)).float())
        return torch.cat(outs)
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: torch.device, batch_size: int = 1024,
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None, amp: bool = True,
             channels_last: bool = True) -> tuple[float, float]:
    """(accuracy, mean cross-entropy without smoothing) on (x, y); y: int labels or soft targets
    (accuracy then against their argmax). ``mean``/``std`` as in ``predict_logits``."""
    logits = predict_logits(model, x, device=device, batch_size=batch_size, mean=mean, std=std, amp=amp,
                            channels_last=channels_last)
    y = y.to(device)
    target = y if y.ndim == 1 else y.argmax(1)
    return (logits.argmax(1) == target).float().mean().item(), F.cross_entropy(logits, y).item()


def _cpu_copy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def state_dict_for_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer | None, epoch: int,
                              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A CPU snapshot (tensors copied) of model + optimizer state after ``epoch`` completed epochs.

    ``extra`` must hold only tensors and primitives (str, int, float, bool, None, lists/tuples/dicts of them),
    e.g. ``{"mean": result.mean, "std": result.std}``, so ``torch.load(weights_only=True)`` can read it."""
    return _cpu_copy({"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
                      "epoch": int(epoch), "extra": dict(extra or {})})


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    epoch: int, extra: dict[str, Any] | None = None) -> None:
    """Write ``state_dict_for_checkpoint(...)`` to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state_dict_for_checkpoint(model, optimizer, epoch, extra), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: keys model, optimizer, epoch, extra."""
    return torch.load(path, map_location=map_location, weights_only=True)


def restore_checkpoint(ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer | None = None
                       ) -> int:
    """Load a checkpoint dict into ``model`` (and ``optimizer``); returns ``start_epoch`` for ``fit``."""
    model.load_state_dict(ckpt["model"])
    if optimizer is not None and ckpt["optimizer"] is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    return ckpt["epoch"]
