"""Pillow decoding of encoded image files and of raw arrays into uint8 (N, C, H, W) arrays."""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import struct
import warnings
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


class ImageTooLarge(Exception):
    """An image whose header promises more pixels than allowed; raised before its pixels are decoded."""

    def __init__(self, detail: str, index: int = -1) -> None:
        super().__init__(detail, index)
        self.detail, self.index = detail, index


class PixelBudgetExceeded(Exception):
    """Decoded images add up to more pixels than allowed (``index``: where, within a chunk)."""

    def __init__(self, index: int = -1) -> None:
        super().__init__(index)
        self.index = index


def shorter_side_to(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) scaled, aspect kept, so that the shorter side is ``side``."""
    scale = side / min(width, height)
    return max(side, round(width * scale)), max(side, round(height * scale))


def decode_image(
    blob: bytes,
    channels: int,
    size: int | None,
    decode_size: int | None = None,
    max_image_pixels: int | None = None,
) -> np.ndarray | None:
    """Decode one encoded image to uint8 (H, W, C), fitted to size x size if given; None if unreadable.

    The header is checked first: more than ``max_image_pixels`` raises :class:`ImageTooLarge`. An image
    whose shorter side exceeds ``decode_size`` is scaled (bicubic, aspect kept) to that shorter side as it
    is decoded; JPEGs are first decoded at a reduced DCT scale, so a large photo never exists at full size.
    """
    try:
        with warnings.catch_warnings():  # our max_image_pixels is the cap; Pillow's warning below its own is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(blob))
        with opened as image:
            width, height = image.size
            if max_image_pixels is not None and width * height > max_image_pixels:
                raise ImageTooLarge(f"{width}x{height} pixels, over max_image_pixels={max_image_pixels:,}")
            if decode_size is not None and min(width, height) > decode_size:
                target = shorter_side_to(width, height, decode_size)
                image.draft(pil_mode(channels), target)  # JPEG only: 1/2, 1/4 or 1/8 scale, never below target
                image = convert(image, channels).resize(target, Image.Resampling.BICUBIC)
            else:
                image = convert(image, channels)
    except Image.DecompressionBombError as exc:  # Pillow's own ceiling (twice Image.MAX_IMAGE_PIXELS)
        raise ImageTooLarge(f"over Pillow's decompression-bomb limit ({str(exc).split(',')[0]})") from None
    except _DECODE_ERRORS:
        return None
    if size is not None:
        image = fit(image, (size, size))
    return _hwc(np.asarray(image))


def decode_chunk(
    blobs: Sequence[bytes],
    channels: int,
    size: int | None,
    decode_size: int | None = None,
    max_image_pixels: int | None = None,
    max_pixels: int | None = None,
) -> _Packed:
    """Decode encoded images into one flat buffer plus per-image shapes (None: failed); runs in a worker.

    One buffer per chunk keeps the transfer back to the parent cheap (no per-image pickling). Raises
    :class:`ImageTooLarge` (with the image's index in the chunk) for an image over ``max_image_pixels``, and
    :class:`PixelBudgetExceeded` once the chunk alone decodes to more than ``max_pixels``.
    """
    arrays: list[np.ndarray | None] = []
    pixels = 0
    for index, blob in enumerate(blobs):
        try:
            array = decode_image(blob, channels, size, decode_size, max_image_pixels)
        except ImageTooLarge as exc:
            raise ImageTooLarge(exc.detail, index) from None
        arrays.append(array)
        pixels += 0 if array is None else array.shape[0] * array.shape[1]
        if max_pixels is not None and pixels > max_pixels:
            raise PixelBudgetExceeded(index)
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


class DecodeLimitError(Exception):
    """A decoding limit was hit at file ``name``: ``detail`` says which (the caller adds the source)."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(name, detail)
        self.name, self.detail = name, detail


def decode_files(
    files: Sequence[tuple[str, int]],
    read: Callable[[str], bytes],
    channels: int,
    size: int | None,
    *,
    decode_size: int | None = None,
    max_image_pixels: int | None = None,
    max_pixels: int | None = None,
) -> list[np.ndarray | None]:
    """Decode ``files`` ((name, byte size) pairs, read with ``read``) in order; None marks failures.

    Large inputs are decoded by a process pool over chunks; the parent reads the bytes and keeps at
    most two chunks per worker in flight, so memory stays bounded and the output order is the input's.
    Raises :class:`DecodeLimitError` for an image over ``max_image_pixels`` or once the decoded images
    add up to more than ``max_pixels`` (N x H x W); a worker stops at the budget left when its chunk left.
    """
    results: list[np.ndarray | None] = []
    pixels = 0

    def add(arrays: list[np.ndarray | None], names: Sequence[str]) -> None:
        nonlocal pixels
        for name, array in zip(names, arrays, strict=True):
            results.append(array)
            pixels += 0 if array is None else array.shape[0] * array.shape[1]
            if max_pixels is not None and pixels > max_pixels:
                raise DecodeLimitError(name, _budget_detail(max_pixels, len(results), len(files)))

    workers = _workers()
    if len(files) < POOL_MIN_FILES or workers < 2:
        for name, _ in files:
            try:
                array = decode_image(read(name), channels, size, decode_size, max_image_pixels)
            except ImageTooLarge as exc:
                raise DecodeLimitError(name, exc.detail) from None
            add([array], [name])
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: deque[tuple[list[str], Future[_Packed]]] = deque()

        def collect() -> None:
            names, future = pending.popleft()
            try:
                packed = future.result()
            except ImageTooLarge as exc:
                raise DecodeLimitError(names[exc.index], exc.detail) from None
            except PixelBudgetExceeded as exc:
                done = len(results) + exc.index + 1
                raise DecodeLimitError(names[exc.index], _budget_detail(max_pixels or 0, done, len(files))) from None
            add(_unpack(packed), names)

        try:
            for chunk in _chunks(files):
                budget = None if max_pixels is None else max(max_pixels - pixels, 0)
                blobs = [read(name) for name in chunk]
                future = pool.submit(decode_chunk, blobs, channels, size, decode_size, max_image_pixels, budget)
                pending.append((chunk, future))
                if len(pending) > 2 * workers:
                    collect()
            while pending:
                collect()
        except BaseException:
            for _, future in pending:
                future.cancel()
            raise
    return results


def _budget_detail(max_pixels: int, done: int, total: int) -> str:
    return (f"the decoded images pass max_pixels={max_pixels:,} (N x H x W) after {done} of {total} files; "
            "pass decode_size or image_size to decode them smaller, or a larger max_pixels")


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


def conform(x: np.ndarray, channels: int, size: int | None, decode_size: int | None = None) -> np.ndarray:
    """(N, H, W, C) uint8 with C in {1, 3, 4} -> contiguous (N, channels, H', W') by the decoding rules.

    ``decode_size`` scales images whose shorter side exceeds it down to it first (bicubic, aspect kept).
    """
    shrink = decode_size is not None and min(x.shape[1:3]) > decode_size
    same_size = size is None or x.shape[1:3] == (size, size)
    if x.shape[-1] == channels and same_size and not shrink:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    images = (Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in x)
    if shrink:
        target = shorter_side_to(x.shape[2], x.shape[1], decode_size)
        images = (image.resize(target, Image.Resampling.BICUBIC) for image in images)
    return stack([_hwc(np.asarray(convert(image, channels))) for image in images], size)
