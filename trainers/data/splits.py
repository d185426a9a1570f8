"""Seeded, stratified, disjoint index splits and k-fold partitions over ImageData labels, and
:func:`prepare_data`, the one way a campaign or a pipeline loads its dataset and splits it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._common import DataError, ImageData, index_tensor, one_line
from ._sources import load_dataset

SPLIT_NAMES = ("train", "val", "test", "unlabeled")


def _indices(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values)
    if array.size == 0:
        return np.empty(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer) or array.min() < 0:
        raise DataError(
            f"{what} must be a 1-D array of non-negative integers, got {array.dtype} {array.shape}"
        )
    return array.astype(np.int64)


@dataclass(frozen=True, eq=False)
class Splits:
    """Disjoint int64 index arrays into an ImageData (each sorted when made by make_splits) and their seed."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    unlabeled: np.ndarray
    seed: int

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise DataError(f"splits: seed must be an integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        for name in SPLIT_NAMES:
            object.__setattr__(self, name, _indices(getattr(self, name), f"split {name!r}"))
        everything = np.concatenate([getattr(self, name) for name in SPLIT_NAMES])
        if np.unique(everything).size != everything.size:
            raise DataError("splits overlap: an index appears twice across train/val/test/unlabeled")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Splits):
            return NotImplemented
        same = all(np.array_equal(getattr(self, n), getattr(other, n)) for n in SPLIT_NAMES)
        return same and self.seed == other.seed

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``seed`` plus one list of indices per split."""
        return {"seed": self.seed, **{name: getattr(self, name).tolist() for name in SPLIT_NAMES}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Splits:
        """Inverse of to_dict; DataError names a missing or malformed field."""
        for key in ("seed", *SPLIT_NAMES):
            if key not in d:
                raise DataError(f"splits: missing field {key!r}")
        return cls(**{name: np.asarray(d[name]) for name in SPLIT_NAMES}, seed=d["seed"])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the splits as JSON."""
        Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Splits:
        """Read splits written by save; DataError if the file is missing or malformed."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read splits from {path} ({one_line(exc)})") from exc
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a JSON object of splits")
        return cls.from_dict(data)

    def summary(self) -> dict[str, int]:
        """Indices per split, e.g. ``{"train": 4000, "val": 1000, "test": 0, "unlabeled": 45000}``."""
        return {name: len(getattr(self, name)) for name in SPLIT_NAMES}


def _allocate(counts: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Per-class counts, shape (len(sizes), K), summing to each size.

    Each class gets the floor of its proportional quota; the remainder goes to classes with a fractional
    quota, those furthest below their cumulative share first (ties: lower class index), within what
    each class has left.
    """
    total = int(counts.sum())
    taken = np.zeros_like(counts)
    done = 0
    rows = []
    for size in sizes:
        quota = size * counts  # numerators over `total`
        row = np.minimum(quota // total, counts - taken)
        owed = done * counts - taken * total
        frac = quota % total
        order = np.lexsort((np.arange(len(counts)), -(owed + frac), frac == 0))
        while (short := size - int(row.sum())) > 0:
            row[[c for c in order if row[c] < counts[c] - taken[c]][:short]] += 1
        rows.append(row)
        taken += row
        done += size
    return np.array(rows)


def _labels_and_source(labels: Any) -> tuple[np.ndarray, str]:
    if isinstance(labels, ImageData):
        return _indices(labels.labels, "labels"), labels.source
    return _indices(labels, "labels"), "the labels"


def _check_sizes(sizes: Mapping[str, int | None], n: int, source: str) -> None:
    given = {name: size for name, size in sizes.items() if size is not None}
    for name, size in given.items():
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 0:
            raise DataError(f"{name} must be a non-negative integer, got {size!r}")
    if sum(given.values()) > n:
        raise DataError(f"{'+'.join(given)} = {sum(given.values())} exceeds the {n} images in {source}")


def make_splits(
    labels: Any,
    *,
    train_size: int,
    val_size: int,
    test_size: int = 0,
    seed: int = 0,
    unlabeled_size: int | None = None,
) -> Splits:
    """Stratified, seeded, disjoint train/val/test splits; ``unlabeled`` is the rest, or its first
    ``unlabeled_size`` after a seeded shuffle.

    ``labels`` is an int label array/tensor or an ImageData (whose source then appears in errors).
    Every split holds the floor or ceil of its proportional share of each class (at most one further
    off only when the splits nearly exhaust a small class); the same seed always gives the same splits.
    Returned arrays are sorted. Raises DataError when the sizes exceed the data.
    """
    y, source = _labels_and_source(labels)
    if not y.size:
        raise DataError(f"no labels to split in {source}")
    sizes = {"train_size": train_size, "val_size": val_size, "test_size": test_size}
    _check_sizes({**sizes, "unlabeled_size": unlabeled_size}, len(y), source)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    classes, label_index = np.unique(y, return_inverse=True)
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(label_index == c)) for c in range(len(classes))]
    start = np.zeros(len(classes), dtype=np.int64)
    parts = []
    for row in _allocate(np.bincount(label_index), list(sizes.values())):
        parts.append(
            np.sort(np.concatenate([pool[s : s + n] for pool, s, n in zip(pools, start, row, strict=True)]))
        )
        start += row
    rest = rng.permutation(np.concatenate([pool[s:] for pool, s in zip(pools, start, strict=True)]))
    return Splits(*parts, unlabeled=np.sort(rest[:unlabeled_size]), seed=int(seed))


def prepare_data(dataset: str | os.PathLike[str] | ImageData, *, train_size: int,
                 val_size: int | Callable[[int], int], test_size: int = 0, unlabeled_size: int | None = 0,
                 seed: int = 0, decode_size: int | None = None) -> tuple[ImageData, Splits]:
    """Load ``dataset`` (a :func:`load_dataset` spec, decoded at ``decode_size``, or data already loaded) and
    make its stratified seeded splits (:func:`make_splits`). ``val_size`` may be a function of the number of
    images; ``unlabeled_size=None`` makes every image outside train/val/test unlabelled."""
    data = dataset if isinstance(dataset, ImageData) else load_dataset(dataset, decode_size=decode_size)
    if callable(val_size):
        val_size = val_size(len(data.labels))
    return data, make_splits(data.labels, train_size=train_size, val_size=val_size, test_size=test_size,
                             unlabeled_size=unlabeled_size, seed=seed)


def stratified_kfold(indices: Any, labels: Any, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` stratified folds over ``indices`` as (fit_idx, heldout_idx) pairs of sorted indices.

    ``labels`` is the full label array that ``indices`` index into (e.g. ``data.labels``). Every index is
    held out exactly once; fold sizes and per-class counts differ by at most one across folds.
    """
    idx = _indices(indices, "indices")
    if np.unique(idx).size != idx.size:
        raise DataError("indices for stratified_kfold contain duplicates")
    if not 2 <= k <= idx.size:
        raise DataError(f"k must be between 2 and the {idx.size} indices, got {k}")
    y = _indices(labels, "labels")
    if idx.size and idx.max() >= y.size:
        raise DataError(f"index {idx.max()} is out of range for {y.size} labels")
    y = y[idx]
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(idx[y == c]) for c in np.unique(y)])
    fold = np.arange(order.size) % k
    return [(np.sort(order[fold != f]), np.sort(order[fold == f])) for f in range(k)]


def to_device_tensors(
    data: ImageData, idx: Any, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (n, C, H, W) and int64 labels (n,) at ``idx``, moved to ``device``."""
    index = index_tensor(idx)
    return data.images[index].to(device), data.labels[index].to(device)
