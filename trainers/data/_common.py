"""The error type, the ImageData container and index helpers shared by the data modules."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from search_spaces.errors import one_line  # noqa: F401  (re-exported: the data modules report errors with it)


class DataError(ValueError):
    """One-line, user-facing data problem (message names the path/field)."""


GIB = 1 << 30
MIB = 1 << 20


@dataclass(frozen=True)
class DataLimits:
    """Resource caps :func:`~trainers.data.load_dataset` enforces before it reads or decodes too much.

    - ``max_bytes``: total bytes of the source's image files (a zip's uncompressed sizes, checked from its
      directory before anything is inflated; a folder's file sizes) and of a ``.npz``'s arrays.
    - ``max_file_bytes``: bytes of any one image file (uncompressed); reads stop one byte past it.
    - ``max_image_pixels``: width x height of any one image, read from its header before it is decoded.
    - ``max_pixels``: total pixels (N x H x W) of the decoded dataset, counted as images decode.

    Exceeding any of them is a one-line :class:`DataError` naming the limit; pass larger ones to go on.
    """

    max_bytes: int = 4 * GIB
    max_file_bytes: int = 256 * MIB
    max_image_pixels: int = 1 << 26  # 8192 x 8192: a 60-megapixel photo passes
    max_pixels: int = 1 << 30  # 3 GiB of RGB uint8 (CIFAR-10's 50,000 images: 51M pixels)

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_file_bytes", "max_image_pixels", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"{name} must be a positive integer, got {value!r}")


def human_bytes(n: int) -> str:
    """``1.5 GiB``-style size for messages."""
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


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
