"""Resolve a dataset spec, read its files or arrays, decode them once and cache the result."""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from . import _cache, _decode
from ._common import DataError, DataLimits, ImageData, human_bytes, one_line

IMAGE_EXTENSIONS = frozenset(
    {".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
)
SHARED_ZIP = "cifar10-train-jpeg.zip"
SAMPLE_ZIP = "cifar10-sample.zip"
_TORCHVISION = {
    "cifar10": ("CIFAR10", {"train": True}),
    "cifar100": ("CIFAR100", {"train": True}),
    "svhn": ("SVHN", {"split": "train"}),
}
_SPECS = "an ImageFolder directory, .zip, .npz, 'sample', 'cifar10-jpeg' or 'torchvision:<name>'"
_MAX_NAMES = 5


@dataclass(frozen=True)
class _Options:
    cache_dir: Path
    image_size: int | None
    channels: int
    decode_size: int | None = None
    limits: DataLimits = DataLimits()


def load_dataset(
    spec: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    channels: int = 3,
    root: str | None = None,
    download: bool = False,
    decode_size: int | None = None,
    limits: DataLimits | None = None,
) -> ImageData:
    """Load a dataset as uint8 (N, C, H, W) images and int64 labels; see the module docs for ``spec``.

    Image files are decoded once and cached under ``cache_dir`` (default ``$POLICY_SEARCH_CACHE`` or
    ``~/.cache/policy-search``); ``root``/``download`` apply to ``torchvision:<name>`` only.
    ``decode_size`` scales every image whose shorter side is longer down to it as it is decoded (aspect
    kept; JPEGs decode at a reduced scale first); ``limits`` (default :class:`DataLimits`) caps the bytes
    read and the pixels decoded. Raises DataError for missing paths, empty or single-class sources,
    malformed arrays and sources over a limit.
    """
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    for key, value in (("image_size", image_size), ("decode_size", decode_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DataError(f"{key} must be a positive integer or None, got {value!r}")
    if limits is not None and not isinstance(limits, DataLimits):
        raise DataError(f"limits must be a trainers.data.DataLimits, got {type(limits).__name__}")
    opts = _Options(Path(cache_dir) if cache_dir is not None else _cache.default_dir(), image_size, channels,
                    decode_size, limits or DataLimits())
    if isinstance(spec, str) and spec.startswith("torchvision:"):
        data, skipped = _load_torchvision(spec.removeprefix("torchvision:"), root, download, opts), ()
    elif spec == "sample":  # only the plain string: Path("sample") is a path
        with resources.as_file(resources.files("trainers").joinpath("sample", SAMPLE_ZIP)) as path:
            data, skipped = _load_path(path, f"bundled sample {SAMPLE_ZIP}", opts)
    else:
        path = _shared_zip() if spec == "cifar10-jpeg" else Path(spec).expanduser()
        data, skipped = _load_path(path, None, opts)
    if skipped:
        more = f" (+{len(skipped) - _MAX_NAMES} more)" if len(skipped) > _MAX_NAMES else ""
        names = ", ".join(skipped[:_MAX_NAMES])
        warnings.warn(
            f"{data.source}: skipped {len(skipped)} undecodable image file(s): {names}{more}", stacklevel=2
        )
    return data


def _shared_zip() -> Path:
    env = os.environ.get("POLICY_SEARCH_SHARED_DATA")
    base = Path(env).expanduser() if env else Path("..", "shared", "data")
    path = base if base.suffix == ".zip" else base / SHARED_ZIP
    if not path.is_file():
        hint = "run from the project root or set POLICY_SEARCH_SHARED_DATA to its folder"
        raise DataError(f"cifar10-jpeg: {path} not found ({hint})")
    return path


def _load_path(path: Path, description: str | None, opts: _Options) -> tuple[ImageData, tuple[str, ...]]:
    if not path.exists():
        raise DataError(f"dataset not found: {path}")
    suffix = path.suffix.lower()
    if path.is_dir():
        return _load_directory(path, description or f"ImageFolder {path}", opts)
    if suffix == ".zip":
        return _load_zip(path, description or f"zip {path}", opts)
    if suffix == ".npz":
        return _load_npz(path, opts), ()
    raise DataError(f"unsupported dataset {path}: expected {_SPECS}")


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _is_image(name: str) -> bool:
    parts = name.split("/")
    hidden = any(part.startswith(".") or part == "__MACOSX" for part in parts)
    return not hidden and Path(parts[-1]).suffix.lower() in IMAGE_EXTENSIONS


def _load_zip(path: Path, source: str, opts: _Options) -> tuple[ImageData, tuple[str, ...]]:
    def build() -> _cache.Decoded:
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{source}: not a readable zip file ({one_line(exc)})") from exc
        with archive:
            files = [
                (i.filename, i.file_size)
                for i in archive.infolist()
                if not i.is_dir() and _is_image(i.filename)
            ]
            _check_sizes(files, source, opts.limits, "uncompressed ")
            limit = opts.limits.max_file_bytes
            return _decode_folder(files, lambda name: _read_member(archive, name, limit, source), source, opts)

    return _cached(_file_sha256(path), source, opts, build)


def _check_sizes(files: Sequence[tuple[str, int]], source: str, limits: DataLimits, kind: str = "") -> None:
    """One-line DataError if one file or all of them together are over the byte limits (zip: the sizes
    its directory declares, checked before anything is inflated; the reads stop at the limit too)."""
    for name, size in files:
        if size > limits.max_file_bytes:
            raise DataError(f"{source}: {name!r} is {human_bytes(size)} {kind}(over max_file_bytes="
                            f"{human_bytes(limits.max_file_bytes)}); pass larger DataLimits to load it")
    total = sum(size for _, size in files)
    if total > limits.max_bytes:
        raise DataError(f"{source}: {len(files)} image files hold {human_bytes(total)} {kind}(over max_bytes="
                        f"{human_bytes(limits.max_bytes)}); pass larger DataLimits to load them")


def _too_big(source: str, name: str, limit: int) -> DataError:
    return DataError(f"{source}: {name!r} holds more than max_file_bytes={human_bytes(limit)}; "
                     "pass larger DataLimits to load it")


def _read_bounded(handle: BinaryIO, limit: int, piece: int = 1 << 20) -> bytes:
    """Up to ``limit + 1`` bytes of ``handle``, read in pieces (one big read of a zip member would inflate
    everything the stream holds up to the request before cutting it at the declared size)."""
    parts, got = [], 0
    while got <= limit:
        part = handle.read(min(piece, limit + 1 - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _read_member(archive: zipfile.ZipFile, name: str, limit: int, source: str) -> bytes:
    try:
        with archive.open(name) as member:  # at most limit + 1 bytes, inflated a piece at a time
            blob = _read_bounded(member, limit)
    except (zipfile.BadZipFile, OSError, EOFError):
        return b""  # a damaged member counts as an undecodable image
    if len(blob) > limit:
        raise _too_big(source, name, limit)
    return blob


def _load_directory(path: Path, source: str, opts: _Options) -> tuple[ImageData, tuple[str, ...]]:
    files = []
    for folder, dirs, names in os.walk(path, followlinks=True):
        dirs.sort()
        for name in sorted(names):
            relative = Path(folder, name).relative_to(path).as_posix()
            if _is_image(relative):
                files.append((relative, _size(path / relative)))
    _check_sizes(files, source, opts.limits)
    limit = opts.limits.max_file_bytes
    digest = hashlib.sha256()
    for relative, _ in sorted(files):
        content = _read_file(path / relative, limit, source)
        digest.update(b"%s\0%d\0" % (relative.encode(), len(content)) + content)
    return _cached(
        digest.hexdigest(),
        source,
        opts,
        lambda: _decode_folder(files, lambda n: _read_file(path / n, limit, source), source, opts),
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # e.g. a broken link: reading it fails later and it is skipped


def _read_file(path: Path, limit: int, source: str) -> bytes:
    try:
        with path.open("rb") as handle:  # at most limit + 1 bytes: a link to /dev/zero has no stat size
            blob = _read_bounded(handle, limit)
    except OSError:
        return b""  # an unreadable file counts as an undecodable image
    if len(blob) > limit:
        raise _too_big(source, path.name, limit)
    return blob


def _cached(
    digest: str, source: str, opts: _Options, build: Callable[[], _cache.Decoded]
) -> tuple[ImageData, tuple[str, ...]]:
    path = _cache.cache_path(opts.cache_dir, digest, opts.image_size, opts.channels, opts.decode_size)
    decoded = _cache.read(path)
    if decoded is not None:  # built under other limits, maybe: the pixel cap holds for cached data too
        _check_pixels(decoded.images.shape, source, opts.limits)
    else:
        decoded = build()
        _cache.write(path, decoded)
    images, labels = torch.from_numpy(decoded.images), torch.from_numpy(decoded.labels)
    data = ImageData(images, labels, decoded.classes, source, digest, skipped=len(decoded.skipped))
    return data, decoded.skipped


def _check_pixels(shape: Sequence[int], source: str, limits: DataLimits) -> None:
    """One-line DataError when (N, C, H, W) images hold more than ``limits.max_pixels`` pixels (N x H x W)."""
    pixels = shape[0] * shape[2] * shape[3]
    if pixels > limits.max_pixels:
        raise DataError(f"{source}: {shape[0]} images of {shape[3]}x{shape[2]} are {pixels:,} pixels (over "
                        f"max_pixels={limits.max_pixels:,}); pass decode_size or image_size, or larger DataLimits")


def _class_depth(parts: Sequence[list[str]]) -> int:
    """Path depth of the class folders: descend through a lone wrapper folder (such as ``train/``)
    while it holds subfolders; files beside the folders do not count."""
    depth = 0
    while True:
        inner = [p for p in parts if len(p) > depth + 1]
        if len({p[depth] for p in inner}) != 1 or all(len(p) == depth + 2 for p in inner):
            return depth
        depth += 1


def _decode_folder(
    files: Sequence[tuple[str, int]], read: Callable[[str], bytes], source: str, opts: _Options
) -> _cache.Decoded:
    parts = [name.split("/") for name, _ in files]
    if not parts:
        raise DataError(f"{source}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    depth = _class_depth(parts)
    sizes = dict(files)
    entries = sorted((p[depth], "/".join(p)) for p in parts if len(p) > depth + 1)
    classes = tuple(sorted({label for label, _ in entries}))
    if len(classes) < 2:
        found = f"only one class folder ({classes[0]!r})" if classes else "no class folders"
        raise DataError(f"{source}: found {found}; an ImageFolder dataset needs at least two")
    try:
        arrays = _decode.decode_files(
            [(name, sizes[name]) for _, name in entries],
            read,
            opts.channels,
            opts.image_size,
            decode_size=opts.decode_size,
            max_image_pixels=opts.limits.max_image_pixels,
            max_pixels=opts.limits.max_pixels,
        )
    except _decode.DecodeLimitError as exc:
        raise DataError(f"{source}: {exc.name!r}: {exc.detail}") from None
    good = [i for i, array in enumerate(arrays) if array is not None]
    if not good:
        raise DataError(f"{source}: none of the {len(entries)} image files could be decoded")
    index = {label: i for i, label in enumerate(classes)}
    return _cache.Decoded(
        images=_decode.stack([arrays[i] for i in good], opts.image_size),
        labels=np.array([index[entries[i][0]] for i in good], dtype=np.int64),
        classes=classes,
        skipped=tuple(name for (_, name), array in zip(entries, arrays, strict=True) if array is None),
    )


def _load_npz(path: Path, opts: _Options) -> ImageData:
    with path.open("rb") as handle:  # our own handle: np.load leaks its own when the zip is damaged
        try:
            npz = np.load(handle, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: not a readable .npz file ({one_line(exc)})") from exc
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: not a .npz archive (holds one array; use np.savez(path, x=..., y=...))")
        with npz:
            arrays = _npz_arrays(npz, path, opts.limits)
    return _from_arrays(
        arrays["x"], arrays["y"], arrays.get("classes"), f"npz {path}", _file_sha256(path), opts
    )


def _npz_arrays(npz: np.lib.npyio.NpzFile, path: Path, limits: DataLimits) -> dict[str, np.ndarray]:
    for key in ("x", "y"):
        if key not in npz.files:
            raise DataError(f"{path}: missing array {key!r} (found: {', '.join(npz.files) or 'none'})")
    wanted = {f"{key}.npy" for key in ("x", "y", "classes")}
    declared = [(i.filename, i.file_size) for i in npz.zip.infolist() if i.filename in wanted]
    total = sum(size for _, size in declared)
    if total > limits.max_bytes:  # an .npz is a zip: a bomb inflates on access
        raise DataError(f"{path}: arrays hold {human_bytes(total)} uncompressed (over max_bytes="
                        f"{human_bytes(limits.max_bytes)}); pass larger DataLimits to load them")
    for member, size in declared:  # numpy allocates what a header declares before reading the data
        _check_npy_header(npz.zip, member, size, path)
    try:
        return {key: npz[key] for key in ("x", "y", "classes") if key in npz.files}
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise DataError(f"{path}: {one_line(exc)} (store 'classes' as a str array)") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({one_line(exc)})") from exc


def _check_npy_header(archive: zipfile.ZipFile, member: str, size: int, path: Path) -> None:
    """One-line DataError if an array's header declares more bytes than its zip member holds."""
    try:
        with archive.open(member) as handle:
            version = np.lib.format.read_magic(handle)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in readers:
                return  # format 3.0 (utf-8 field names): np.load checks it
            shape, _, dtype = readers[version](handle)
            header = handle.tell()
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({one_line(exc)})") from exc
    if dtype.hasobject:
        return  # refused by np.load's allow_pickle=False, with its own message
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if need > size - header:
        raise DataError(f"{path}: array {member.removesuffix('.npy')!r} declares shape {shape} ({human_bytes(need)}) "
                        f"but holds {human_bytes(max(size - header, 0))}")


def _to_nhwc(x: np.ndarray, source: str) -> np.ndarray:
    if x.ndim == 3:
        return x[..., None]
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4):
        return x
    if x.ndim == 4 and x.shape[1] in (1, 3, 4):
        return x.transpose(0, 2, 3, 1)
    raise DataError(
        f"{source}: array 'x' has shape {x.shape}; expected NHWC, NCHW or NHW with 1, 3 or 4 channels"
    )


def _from_arrays(
    x: np.ndarray, y: np.ndarray, names: np.ndarray | None, source: str, digest: str, opts: _Options
) -> ImageData:
    if x.dtype != np.uint8:
        raise DataError(f"{source}: array 'x' must be uint8, got {x.dtype}")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: array 'y' must hold {x.shape[0]} integer labels, got {y.dtype} {y.shape}")
    if y.size and y.min() < 0:
        raise DataError(f"{source}: array 'y' has negative labels")
    if np.unique(y).size < 2:
        raise DataError(f"{source}: array 'y' has fewer than two classes")
    classes = _class_names(names, int(y.max()) + 1, source)
    nhwc = _to_nhwc(x, source)
    height, width = nhwc.shape[1:3]
    if opts.image_size:
        height = width = opts.image_size
    elif opts.decode_size and min(height, width) > opts.decode_size:
        width, height = _decode.shorter_side_to(width, height, opts.decode_size)
    _check_pixels((nhwc.shape[0], opts.channels, height, width), source, opts.limits)  # before converting
    images = _decode.conform(nhwc, opts.channels, opts.image_size, opts.decode_size)
    return ImageData(torch.from_numpy(images), torch.from_numpy(y.astype(np.int64)), classes, source, digest)


def _class_names(names: np.ndarray | None, needed: int, source: str) -> tuple[str, ...]:
    if names is None:
        return tuple(str(i) for i in range(needed))
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) < needed:
        raise DataError(
            f"{source}: array 'classes' must be {needed} or more strings, got {names.dtype} {names.shape}"
        )
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())


def _load_torchvision(name: str, root: str | None, download: bool, opts: _Options) -> ImageData:
    if name not in _TORCHVISION:
        raise DataError(
            f"unknown dataset 'torchvision:{name}'; choose from {', '.join(sorted(_TORCHVISION))}"
        )
    from torchvision import datasets  # deferred: importing torchvision is slow and rarely needed

    class_name, kwargs = _TORCHVISION[name]
    where = Path(root).expanduser() if root else opts.cache_dir / "torchvision"
    try:
        dataset = getattr(datasets, class_name)(str(where), download=download, **kwargs)
    except RuntimeError as exc:
        if download:
            raise DataError(f"torchvision:{name}: {one_line(exc)}") from exc
        raise DataError(
            f"torchvision:{name}: not found under {where}; pass download=True to fetch it"
        ) from exc
    except OSError as exc:
        raise DataError(f"torchvision:{name}: download to {where} failed ({one_line(exc)})") from exc
    x = np.asarray(dataset.data)
    y = np.asarray(dataset.targets if hasattr(dataset, "targets") else dataset.labels, dtype=np.int64)
    digest = hashlib.sha256(np.ascontiguousarray(x).data)
    digest.update(y.data)
    names = np.array(dataset.classes) if hasattr(dataset, "classes") else None
    return _from_arrays(x, y, names, f"torchvision {class_name} train ({where})", digest.hexdigest(), opts)
