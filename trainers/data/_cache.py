"""On-disk cache of decoded datasets: one uncompressed .npz per (source digest, decoding options)."""

from __future__ import annotations

import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._common import one_line

FORMAT = 1
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile)


@dataclass(frozen=True)
class Decoded:
    """A decoded source: images (N, C, H, W) uint8, labels (N,) int64, classes, skipped file names."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    skipped: tuple[str, ...]


def default_dir() -> Path:
    """``$POLICY_SEARCH_CACHE``, else ``~/.cache/policy-search``."""
    env = os.environ.get("POLICY_SEARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "policy-search"


def cache_path(
    cache_dir: Path, digest: str, image_size: int | None, channels: int, decode_size: int | None = None
) -> Path:
    """Cache file for a source digest and the decoding options; its stem is also stored inside it."""
    decoded_at = f"-d{decode_size}" if decode_size is not None else ""
    return cache_dir / f"{digest}-size{image_size or 'auto'}{decoded_at}-c{channels}-v{FORMAT}.npz"


def _check(decoded: Decoded, key: str, expected_key: str) -> None:
    images, labels = decoded.images, decoded.labels
    if key != expected_key:
        raise ValueError(f"entry is for {key!r}")
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images have dtype {images.dtype} and shape {images.shape}")
    if labels.dtype != np.int64 or labels.shape != images.shape[:1]:
        raise ValueError(f"labels have dtype {labels.dtype} and shape {labels.shape}")
    if len(decoded.classes) < 2 or labels.min() < 0 or labels.max() >= len(decoded.classes):
        raise ValueError("labels do not match classes")


def read(path: Path) -> Decoded | None:
    """The cached entry at ``path``, or None if absent; an unreadable entry is reported and ignored."""
    if not path.is_file():
        return None
    try:
        # open the file ourselves: np.load leaks its own handle when the zip is damaged
        with path.open("rb") as handle, np.load(handle, allow_pickle=False) as npz:
            decoded = Decoded(
                images=npz["images"],
                labels=npz["labels"],
                classes=tuple(npz["classes"].tolist()),
                skipped=tuple(npz["skipped"].tolist()),
            )
            _check(decoded, str(npz["key"]), path.stem)
    except _READ_ERRORS as exc:
        warnings.warn(
            f"ignoring unreadable dataset cache {path} ({one_line(exc)}); rebuilding it", stacklevel=2
        )
        return None
    return decoded


def write(path: Path, decoded: Decoded) -> None:
    """Store ``decoded`` at ``path`` atomically (temp file + rename); failure only warns."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez(
                    out,
                    images=decoded.images,
                    labels=decoded.labels,
                    classes=np.array(decoded.classes, dtype=str),
                    skipped=np.array(decoded.skipped, dtype=str),
                    key=np.array(path.stem),
                )
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as exc:
        warnings.warn(
            f"could not write dataset cache {path} ({one_line(exc)}); continuing without it", stacklevel=2
        )
