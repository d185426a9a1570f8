"""Pillow decoding of encoded image files and of raw arrays into uint8 (N, C, H, W) arrays."""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import struct
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np
from PIL import Image

POOL_MIN_FILES = 4096  # below this, decode in-process (pool start-up is not worth it)
CHUNK_FILES = 1024
CHUNK_BYTES = 8 << 20
_Packed = tuple[np.ndarray, list[tuple[int, ...] | None]]
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


def pil_mode(channels: int) -> str:
    """Pillow mode for a channel count: 1 -> "L", 3 -> "RGB"."""
    return "L" if channels == 1 else "RGB"


def fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale ``image`` (bicubic, aspect kept) until it covers ``size`` = (H, W), then centre-crop to it."""
    height, width = size
    if (image.height, image.width) == size:
        return image
    scale = max(height / image.height, width / image.width)
    new_w = max(width, round(image.width * scale))
    new_h = max(height, round(image.height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return image.crop((left, top, left + width, top + height))


def _hwc(array: np.ndarray) -> np.ndarray:
    return array[:, :, None] if array.ndim == 2 else array


def convert(image: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to "RGB" or "L"; alpha (and palette transparency) is dropped."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert(pil_mode(channels))


def decode_image(blob: bytes, channels: int, size: int | None) -> np.ndarray | None:
    """Decode one encoded image to uint8 (H, W, C), fitted to size x size if given; None if unreadable."""
    try:
        with Image.open(io.BytesIO(blob)) as image:
            image = convert(image, channels)
    except _DECODE_ERRORS:
        return None
    if size is not None:
        image = fit(image, (size, size))
    return _hwc(np.asarray(image))


def decode_chunk(blobs: Sequence[bytes], channels: int, size: int | None) -> _Packed:
    """Decode encoded images into one flat buffer plus per-image shapes (None: failed); runs in a worker.

    One buffer per chunk keeps the transfer back to the parent cheap (no per-image pickling).
    """
    arrays = [decode_image(blob, channels, size) for blob in blobs]
    shapes = [None if a is None else a.shape for a in arrays]
    good = [a.ravel() for a in arrays if a is not None]
    return (np.concatenate(good) if good else np.empty(0, np.uint8)), shapes


def _unpack(packed: _Packed) -> list[np.ndarray | None]:
    flat, shapes = packed
    ends = np.cumsum([0 if shape is None else math.prod(shape) for shape in shapes])
    return [
        None if shape is None else flat[end - math.prod(shape) : end].reshape(shape)
        for shape, end in zip(shapes, ends, strict=True)
    ]


def _chunks(files: Sequence[tuple[str, int]]) -> Iterator[list[str]]:
    chunk: list[str] = []
    nbytes = 0
    for name, size in files:
        chunk.append(name)
        nbytes += size
        if len(chunk) >= CHUNK_FILES or nbytes >= CHUNK_BYTES:
            yield chunk
            chunk, nbytes = [], 0
    if chunk:
        yield chunk


def _workers() -> int:
    if multiprocessing.current_process().daemon:
        return 1  # daemonic processes (e.g. multiprocessing.Pool workers) may not start children
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_files(
    files: Sequence[tuple[str, int]], read: Callable[[str], bytes], channels: int, size: int | None
) -> list[np.ndarray | None]:
    """Decode ``files`` ((name, byte size) pairs, read with ``read``) in order; None marks failures.

    Large inputs are decoded by a process pool over chunks; the parent reads the bytes and keeps at
    most two chunks per worker in flight, so memory stays bounded and the output order is the input's.
    """
    workers = _workers()
    if len(files) < POOL_MIN_FILES or workers < 2:
        return [decode_image(read(name), channels, size) for name, _ in files]
    results: list[np.ndarray | None] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[_Packed]] = deque()
        for chunk in _chunks(files):
            pending.append(pool.submit(decode_chunk, [read(name) for name in chunk], channels, size))
            if len(pending) > 2 * workers:
                results.extend(_unpack(pending.popleft().result()))
        while pending:
            results.extend(_unpack(pending.popleft().result()))
    return results


def stack(arrays: Sequence[np.ndarray], size: int | None) -> np.ndarray:
    """Stack (H, W, C) arrays into contiguous (N, C, H, W), fitting odd sizes to the target size.

    The target is size x size if given, else the most common (H, W) (first seen wins a tie).
    """
    target = (size, size) if size else Counter(a.shape[:2] for a in arrays).most_common(1)[0][0]
    fitted = [a if a.shape[:2] == target else _fit_array(a, target) for a in arrays]
    out = np.empty((len(fitted), fitted[0].shape[2], *target), np.uint8)
    np.stack(fitted, out=out.transpose(0, 2, 3, 1))  # one allocation, written as NCHW
    return out


def _fit_array(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return _hwc(np.asarray(fit(Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array), size)))


def conform(x: np.ndarray, channels: int, size: int | None) -> np.ndarray:
    """(N, H, W, C) uint8 with C in {1, 3, 4} -> contiguous (N, channels, H', W') by the decoding rules."""
    same_size = size is None or x.shape[1:3] == (size, size)
    if x.shape[-1] == channels and same_size:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    images = (Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in x)
    return stack([_hwc(np.asarray(convert(image, channels))) for image in images], size)
