"""The error type, the ImageData container and index helpers shared by the data modules."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


class DataError(ValueError):
    """One-line, user-facing data problem (message names the path/field)."""


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for one-line reports."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def index_tensor(idx: Any) -> torch.Tensor:
    """CPU index tensor (int64, or bool for a mask) from numpy/torch/sequence indices."""
    index = idx.cpu() if isinstance(idx, torch.Tensor) else torch.as_tensor(np.asarray(idx))
    return index if index.dtype == torch.bool else index.long()


@dataclass(frozen=True, eq=False)
class ImageData:
    """Decoded images with integer labels.

    ``images`` is uint8 (N, C, H, W), contiguous, on the CPU; ``labels`` is int64 (N,) indexing ``classes``.
    ``digest`` is the sha256 of the source's content (the cache key); ``skipped`` counts undecodable files.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    source: str
    digest: str
    skipped: int = 0

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != torch.uint8 or images.dim() != 4 or not images.is_contiguous():
            raise DataError(f"{self.source}: images must be a contiguous uint8 (N, C, H, W) tensor")
        if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
            raise DataError(f"{self.source}: labels must be int64 of shape ({images.shape[0]},)")
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < len(self.classes):
            raise DataError(f"{self.source}: labels must lie in 0..{len(self.classes) - 1}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, idx: Any) -> ImageData:
        """The images and labels at ``idx`` (numpy/torch integer indices or a boolean mask)."""
        positions = torch.arange(len(self))[index_tensor(idx)]
        digest = hashlib.sha256(self.digest.encode() + positions.numpy().tobytes()).hexdigest()
        return ImageData(
            images=self.images[positions].contiguous(),
            labels=self.labels[positions],
            classes=self.classes,
            source=f"{self.source} [{len(positions)} of {len(self)}]",
            digest=digest,
            skipped=self.skipped,
        )
