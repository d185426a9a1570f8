"""What every full pipeline shares: its config base (:class:`PipelineConfig`), the policy input, and a run
folder (default name :func:`run_name`) with resumable training stages.

A pipeline (transfer, distill, self-train) is a sequence of named *stages*, each one call of the shared
loop :func:`trainers.engine.fit`. :class:`Run` owns ``<output>/<name>/``::

    config.json          the pipeline's config (what ``--resume`` checks against)
    splits.json          the seeded split indices (train / val / test / unlabeled)
    metrics.csv          one row per epoch of every stage (``stage`` column), appended as training goes
    checkpoints/<stage>.pt  model + optimizer + epoch + history after every epoch (``weights_only`` loadable)
    arrays/<name>.npz    plain arrays a pipeline caches (features, pseudo-labels)
    final.json           final metrics (written by :meth:`Run.finish`)
    curves.png           learning curves of every stage

Resuming: a stage whose checkpoint holds all its epochs is not retrained (its weights and history are
restored); a partial stage continues from its last completed epoch, with the same result an uninterrupted
run gives on CPU (the engine's per-epoch seeds depend only on the seed and the epoch).
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from search_spaces import Policy, PolicyError, load_policy
from search_spaces.policy import one_line

from ..data import ImageData, Splits, prepare_data
from ..engine import (
    Augment,
    EpochMetrics,
    FitResult,
    LossFn,
    TrainConfig,
    channel_stats,
    fit,
    load_checkpoint,
    make_optimizer,
    restore_checkpoint,
    save_checkpoint,
)
from ..plotting import pyplot
from ..settings import RunSettings, TrainingSettings

__all__ = ["PIPELINES", "PipelineConfig", "PipelineError", "Reporter", "Run", "StageEvent", "check_name",
           "load_policy_arg", "make_config", "pipeline", "run_name", "stage_summary"]

METRIC_FIELDS = ("stage", *(f.name for f in fields(EpochMetrics)))


class PipelineError(ValueError):
    """A pipeline cannot start or resume (bad config, existing folder, mismatched resume); one line."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


@dataclass
class StageEvent:
    """Progress of a run, for progress bars: ``kind`` is "start" (``metrics`` None) or "epoch"."""

    kind: str
    stage: str
    epochs: int  # the stage's total epochs
    done: int  # epochs completed so far in this stage
    metrics: EpochMetrics | None = None


Reporter = Callable[[StageEvent], None]

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"  # one folder or file name: no separators, no "." or ".."


def check_name(name: Any, what: str = "run name") -> str:
    """``name`` if it is safe as one path component (letters, digits, ``_ . -``, not starting with ``.`` or
    ``-``, at most 100 characters), else a one-line :class:`PipelineError`: names never leave their folder."""
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise PipelineError(f"{what} must be letters, digits, '_', '.', '-' (one folder name, not starting "
                            f"with '.' or '-'), got {name!r}")
    return name


def load_policy_arg(spec: str | os.PathLike | Policy | None) -> Policy | None:
    """A policy from a preset name (``randaugment``, ``crop_flip``, ...) or a policy file; ``None`` stays None.

    Raises :class:`~search_spaces.PolicyError` (one line) for an unknown preset or a malformed file.
    """
    if spec is None or isinstance(spec, Policy):
        return spec
    return load_policy(spec)


def run_name(prefix: str, dataset: str, seed: int) -> str:
    """Default run folder name, stable so that ``resume`` finds it: ``<prefix>-<dataset stem>-seed<seed>``."""
    stem = os.path.basename(str(dataset).rstrip("/\\")).split(".")[0] or "data"
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in stem)
    return f"{prefix}-{stem}-seed{seed}"


class PipelineConfig(TrainingSettings, RunSettings):
    """What every pipeline run is given: a dataset and its split sizes, a seed, a policy and the shared
    training settings. Bad values raise a one-line :class:`PipelineError` naming the key."""

    error_type: ClassVar[type[ValueError]] = PipelineError

    dataset: str = Field("sample", min_length=1)
    train_size: int = Field(1000, ge=1)
    val_size: int = Field(500, ge=0)
    test_size: int = Field(1000, ge=1)
    policy: str | None = None  # preset name or policy file, applied after base_augment

    def split_data(self, data: ImageData | None = None) -> tuple[ImageData, Splits]:
        """This run's dataset (or ``data``, already loaded) and its seeded splits (:func:`trainers.data.prepare_data`;
        an unlabelled split where the pipeline has ``unlabeled_size``)."""
        return prepare_data(self.dataset if data is None else data, train_size=self.train_size,
                            val_size=self.val_size, test_size=self.test_size,
                            unlabeled_size=getattr(self, "unlabeled_size", 0), seed=self.seed)

    @field_validator("policy", mode="before")
    @classmethod
    def _policy_path(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("policy")
    @classmethod
    def _policy_loads(cls, v: str | None) -> str | None:
        try:
            load_policy_arg(v)
        except PolicyError as exc:
            raise ValueError(str(exc)) from None
        return v


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float | int | str | bool) or obj is None:
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class Run:
    """One pipeline run's folder: config, splits, resumable stages, metrics, final results.

    Create with :meth:`open`; each pipeline calls :meth:`stage` once per training stage and :meth:`finish`.
    """

    def __init__(self, folder: Path, config: dict[str, Any], reporter: Reporter | None = None) -> None:
        self.folder, self.config, self.reporter = folder, config, reporter
        (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        (folder / "arrays").mkdir(exist_ok=True)
        self.resumed_stages: list[str] = []

    @classmethod
    def open(cls, output: str | os.PathLike, name: str, config: Mapping[str, Any], *, resume: bool = False,
             reporter: Reporter | None = None) -> Run:
        """Create ``<output>/<name>/`` and write ``config.json``, or (``resume``) reopen it.

        A new run refuses an existing non-empty folder; a resumed one must exist and hold the same config
        (keys that only steer the run's machinery, like ``device``, may differ).
        """
        folder = (Path(output) / check_name(name)).resolve()
        config = _jsonable(dict(config))
        config_path = folder / "config.json"
        if resume:
            if not config_path.is_file():
                raise PipelineError(f"cannot resume: no run at {folder} (config.json missing)")
            saved = json.loads(config_path.read_text(encoding="utf-8"))
            volatile = {"device", "resume", "output", "name", "created"}
            diff = sorted(k for k in set(saved) | set(config)
                          if k not in volatile and saved.get(k) != config.get(k))
            if diff:
                raise PipelineError(f"cannot resume {folder}: config differs in {', '.join(diff)} "
                                    f"(saved {diff[0]}={saved.get(diff[0])!r}, given {config.get(diff[0])!r})")
            return cls(folder, saved, reporter)
        if folder.exists() and any(folder.iterdir()):
            raise PipelineError(f"run folder {folder} already exists: pick another --name or pass --resume")
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(config_path, {**config, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
                    if "created" not in config else config)
        return cls(folder, json.loads(config_path.read_text(encoding="utf-8")), reporter)

    # -- splits and arrays ---------------------------------------------------------------------------------

    def save_splits(self, splits: Splits) -> Splits:
        """Write ``splits.json``; on resume, return the saved splits instead (they must not change)."""
        path = self.folder / "splits.json"
        if path.is_file():
            saved = Splits.load(path)
            if saved != splits:
                raise PipelineError(f"cannot resume {self.folder}: the data splits differ from splits.json "
                                    "(dataset or sizes changed)")
            return saved
        splits.save(path)
        return splits

    def save_arrays(self, name: str, **arrays: torch.Tensor | np.ndarray) -> Path:
        """Store plain arrays as ``arrays/<name>.npz`` (atomic, no pickle)."""
        path = self.folder / "arrays" / f"{check_name(name, 'array name')}.npz"
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **{k: (v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v))
                         for k, v in arrays.items()})
        os.replace(tmp, path)
        return path

    def load_arrays(self, name: str) -> dict[str, torch.Tensor] | None:
        """Arrays saved by :meth:`save_arrays` as CPU tensors, or None if absent."""
        path = self.folder / "arrays" / f"{check_name(name, 'array name')}.npz"
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            return {k: torch.from_numpy(z[k].copy()) for k in z.files}

    # -- stages --------------------------------------------------------------------------------------------

    def checkpoint_path(self, stage: str) -> Path:
        """Where ``stage``'s checkpoint lives."""
        return self.folder / "checkpoints" / f"{check_name(stage, 'stage name')}.pt"

    def stage(self, stage: str, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, *,
              config: TrainConfig, device: torch.device, val_x: torch.Tensor | None = None,
              val_y: torch.Tensor | None = None, augment: Augment | None = None, loss_fn: LossFn | None = None,
              optimizer: torch.optim.Optimizer | None = None) -> FitResult:
        """Train one resumable stage with :func:`trainers.engine.fit` (checkpoint + metrics row per epoch).

        ``optimizer`` (e.g. with discriminative param groups) is checkpointed and restored with the model.
        A finished stage is restored without training and its stored history is returned.
        """
        optimizer = optimizer or make_optimizer(model, config)
        path = self.checkpoint_path(stage)
        history: list[EpochMetrics] = []
        start, prior_seconds = 0, 0.0
        t0 = time.perf_counter()
        if path.is_file():
            ckpt = load_checkpoint(path)
            if ckpt["extra"].get("epochs") != config.epochs:
                raise PipelineError(f"cannot resume stage {stage!r}: checkpoint is for "
                                    f"{ckpt['extra'].get('epochs')} epochs, config says {config.epochs}")
            start = restore_checkpoint(ckpt, model, optimizer)
            history = [EpochMetrics(**h) for h in ckpt["extra"]["history"]]
            prior_seconds = float(ckpt["extra"].get("seconds", 0.0))
            self.resumed_stages.append(stage)
            if start >= config.epochs:
                model.to(device)
                self._report(StageEvent("start", stage, config.epochs, start))
                return _result(history, ckpt["extra"], ckpt["extra"].get("seconds", 0.0))
        self._report(StageEvent("start", stage, config.epochs, start))
        mean_std: dict[str, Any] = {}

        def on_epoch(m: EpochMetrics) -> None:
            history.append(m)
            self._append_metrics(stage, m)
            extra = {"epochs": config.epochs, "history": [asdict(h) for h in history], **mean_std,
                     "seconds": prior_seconds + time.perf_counter() - t0}
            save_checkpoint(path, model, optimizer, m.epoch, extra)
            self._report(StageEvent("epoch", stage, config.epochs, m.epoch, m))

        if config.mean is None:  # fix the normalisation up front so a resumed stage uses the same numbers
            mean, std = channel_stats(train_x)
            config = _with_norm(config, mean, std)
        mean_std.update(mean=list(config.mean), std=list(config.std))
        result = fit(model, train_x, train_y, config=config, device=device, val_x=val_x, val_y=val_y,
                     augment=augment, loss_fn=loss_fn, on_epoch=on_epoch, start_epoch=start, optimizer=optimizer)
        return _result(history, mean_std, prior_seconds + result.seconds)

    def _append_metrics(self, stage: str, m: EpochMetrics) -> None:
        path = self.folder / "metrics.csv"
        new = not path.is_file()
        with path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({"stage": stage, **asdict(m)})

    def _report(self, event: StageEvent) -> None:
        if self.reporter is not None:
            self.reporter(event)

    # -- the end -------------------------------------------------------------------------------------------

    def finish(self, final: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``final.json`` (``final`` plus the run folder and resumed stages) and ``curves.png``."""
        out = {**_jsonable(dict(final)), "folder": str(self.folder), "resumed_stages": self.resumed_stages}
        _write_json(self.folder / "final.json", out)
        self.plot_curves()
        return out

    def metrics(self) -> Any:
        """``metrics.csv`` as a pandas DataFrame (one row per stage epoch; the last row wins on duplicates)."""
        import pandas as pd

        df = pd.read_csv(self.folder / "metrics.csv")
        return df.drop_duplicates(["stage", "epoch"], keep="last").reset_index(drop=True)

    def plot_curves(self) -> Path:
        """``curves.png``: training loss and validation accuracy per epoch, one line per stage."""
        plt = pyplot()

        df = self.metrics()
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for stage, g in df.groupby("stage", sort=False):
            axes[0].plot(g["epoch"], g["train_loss"], marker=".", label=stage)
            if g["val_acc"].notna().any():
                axes[1].plot(g["epoch"], g["val_acc"], marker=".", label=stage)
        axes[0].set(xlabel="epoch", ylabel="training loss", title="training loss")
        axes[1].set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
        for ax in axes:
            ax.grid(alpha=0.3)
            if ax.lines:  # no validation split: the right panel stays empty
                ax.legend(fontsize=8)
        fig.suptitle(self.folder.name)
        fig.tight_layout()
        path = self.folder / "curves.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return path


def _with_norm(config: TrainConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> TrainConfig:
    return replace(config, mean=tuple(mean), std=tuple(std))


def _result(history: list[EpochMetrics], extra: Mapping[str, Any], seconds: float) -> FitResult:
    vals = [h.val_acc for h in history if h.val_acc is not None]
    return FitResult(history=history, best_val_acc=max(vals) if vals else None,
                     final_val_acc=vals[-1] if vals else None, stopped_reason=None,
                     mean=tuple(extra.get("mean", ())), std=tuple(extra.get("std", ())), seconds=seconds)


def stage_summary(res: FitResult) -> dict[str, Any]:
    """What ``final.json`` reports of a stage: epochs, validation accuracy, seconds, per-epoch curves, speed."""
    return {"epochs": len(res.history), "final_val_acc": res.final_val_acc, "best_val_acc": res.best_val_acc,
            "seconds": round(res.seconds, 3), "train_loss": [h.train_loss for h in res.history],
            "val_acc": [h.val_acc for h in res.history],
            "images_per_s": round(sum(h.images_per_s for h in res.history) / max(len(res.history), 1), 1)}


PIPELINES: dict[str, tuple[str, str, str]] = {  # name -> (module, config class, run function)
    "transfer": ("transfer", "TransferConfig", "run_transfer"),
    "distill": ("distill", "DistillConfig", "run_distill"),
    "self-train": ("self_train", "SelfTrainConfig", "run_self_train"),
}


def pipeline(kind: str) -> tuple[type, Callable[..., dict[str, Any]]]:
    """The (config class, run function) of pipeline ``kind`` (one of ``PIPELINES``)."""
    import importlib

    if kind not in PIPELINES:
        raise PipelineError(f"unknown pipeline {kind!r}; choose from {', '.join(PIPELINES)}")
    module, config_cls, run_fn = PIPELINES[kind]
    mod = importlib.import_module(f"{__package__}.{module}")
    return getattr(mod, config_cls), getattr(mod, run_fn)


def make_config(kind: str, values: Mapping[str, Any]) -> PipelineConfig:
    """Build pipeline ``kind``'s config from plain values (YAML, flags); one-line PipelineError on a bad key."""
    config_cls, _ = pipeline(kind)
    known = list(config_cls.model_fields)
    for key in values:
        if key not in known:
            raise PipelineError(f"{key}: unknown setting for the {kind} pipeline (known: {', '.join(known)})")
    return config_cls(**values)
