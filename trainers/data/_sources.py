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

import numpy as np
import torch

from . import _cache, _decode
from ._common import DataError, ImageData, one_line

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


def load_dataset(
    spec: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    channels: int = 3,
    root: str | None = None,
    download: bool = False,
) -> ImageData:
    """Load a dataset as uint8 (N, C, H, W) images and int64 labels; see the module docs for ``spec``.

    Image files are decoded once and cached under ``cache_dir`` (default ``$POLICY_SEARCH_CACHE`` or
    ``~/.cache/policy-search``); ``root``/``download`` apply to ``torchvision:<name>`` only.
    Raises DataError for missing paths, empty or single-class sources and malformed arrays.
    """
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image_size must be a positive integer or None, got {image_size!r}")
    opts = _Options(Path(cache_dir) if cache_dir is not None else _cache.default_dir(), image_size, channels)
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
            return _decode_folder(files, lambda name: _read_member(archive, name), source, opts)

    return _cached(_file_sha256(path), source, opts, build)


def _read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, OSError, EOFError):
        return b""  # a damaged member counts as an undecodable image


def _load_directory(path: Path, source: str, opts: _Options) -> tuple[ImageData, tuple[str, ...]]:
    files = []
    for folder, dirs, names in os.walk(path, followlinks=True):
        dirs.sort()
        for name in sorted(names):
            relative = Path(folder, name).relative_to(path).as_posix()
            if _is_image(relative):
                files.append((relative, _size(path / relative)))
    digest = hashlib.sha256()
    for relative, _ in sorted(files):
        content = _read_file(path / relative)
        digest.update(b"%s\0%d\0" % (relative.encode(), len(content)) + content)
    return _cached(
        digest.hexdigest(),
        source,
        opts,
        lambda: _decode_folder(files, lambda n: _read_file(path / n), source, opts),
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # e.g. a broken link: reading it fails later and it is skipped


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""  # an unreadable file counts as an undecodable image


def _cached(
    digest: str, source: str, opts: _Options, build: Callable[[], _cache.Decoded]
) -> tuple[ImageData, tuple[str, ...]]:
    path = _cache.cache_path(opts.cache_dir, digest, opts.image_size, opts.channels)
    decoded = _cache.read(path)
    if decoded is None:
        decoded = build()
        _cache.write(path, decoded)
    images, labels = torch.from_numpy(decoded.images), torch.from_numpy(decoded.labels)
    data = ImageData(images, labels, decoded.classes, source, digest, skipped=len(decoded.skipped))
    return data, decoded.skipped


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
    arrays = _decode.decode_files(
        [(name, sizes[name]) for _, name in entries], read, opts.channels, opts.image_size
    )
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
            arrays = _npz_arrays(npz, path)
    return _from_arrays(
        arrays["x"], arrays["y"], arrays.get("classes"), f"npz {path}", _file_sha256(path), opts
    )


def _npz_arrays(npz: np.lib.npyio.NpzFile, path: Path) -> dict[str, np.ndarray]:
    for key in ("x", "y"):
        if key not in npz.files:
            raise DataError(f"{path}: missing array {key!r} (found: {', '.join(npz.files) or 'none'})")
    try:
        return {key: npz[key] for key in ("x", "y", "classes") if key in npz.files}
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise DataError(f"{path}: {one_line(exc)} (store 'classes' as a str array)") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({one_line(exc)})") from exc


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
    images = _decode.conform(_to_nhwc(x, source), opts.channels, opts.image_size)
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
