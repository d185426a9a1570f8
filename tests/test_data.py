"""Tests for trainers.data: loading real JPEGs (bundled sample, shared zip), decoding rules, cache, splits."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import time
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_ZIP  # tests/ is on sys.path under pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from trainers.data import (
    DataError,
    DataLimits,
    ImageData,
    Splits,
    _decode,
    load_dataset,
    make_splits,
    stratified_kfold,
    to_device_tensors,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "trainers" / "sample" / "cifar10-sample.zip"
SHARED = SHARED_ZIP
SHARED_SHA256 = "8c63264468f67a4d71e73d014900f3b8f1c779affb3d986d181e340561544f1f"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
needs_shared = pytest.mark.skipif(not SHARED.is_file(), reason=f"shared data zip absent: {SHARED}")


# ---------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLICY_SEARCH_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.delenv("POLICY_SEARCH_SHARED_DATA", raising=False)


@contextmanager
def data_error(match: str) -> Iterator[pytest.ExceptionInfo[DataError]]:
    """pytest.raises(DataError) that also checks the message is one line."""
    with pytest.raises(DataError, match=match) as info:
        yield info
    assert "\n" not in str(info.value)


@pytest.fixture(scope="session")
def jpegs() -> dict[str, list[bytes]]:
    """Real CIFAR-10 JPEG bytes from the bundled sample, first 8 per class."""
    out: dict[str, list[bytes]] = {}
    with zipfile.ZipFile(SAMPLE) as archive:
        for name in sorted(archive.namelist()):
            label = name.split("/")[0]
            if len(out.setdefault(label, [])) < 8:
                out[label].append(archive.read(name))
    return out


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory) -> ImageData:
    return load_dataset("sample", cache_dir=tmp_path_factory.mktemp("sample-cache"))


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, blob in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(blob)
    return root


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, blob in files.items():
            archive.writestr(name, blob)
    return path


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def decoded(blob: bytes, mode: str = "RGB") -> Image.Image:
    with Image.open(io.BytesIO(blob)) as image:
        return image.convert(mode)


def reference_fit(image: Image.Image, size: int) -> np.ndarray:
    """The documented rule, written independently: shorter side to `size` (bicubic), centre crop."""
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)))


def two_classes(jpegs: dict[str, list[bytes]], n: int = 3) -> dict[str, bytes]:
    return {f"{label}/{i}.jpg": jpegs[label][i] for label in ("cat", "dog") for i in range(n)}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- bundled sample


def test_sample_loads_as_documented(sample: ImageData) -> None:
    assert sample.images.shape == (4000, 3, 32, 32)
    assert sample.images.dtype == torch.uint8 and sample.images.is_contiguous()
    assert sample.labels.dtype == torch.int64
    assert sample.classes == CIFAR_CLASSES
    assert sample.labels.bincount().tolist() == [400] * 10
    assert sample.digest == sha256(SAMPLE) and sample.skipped == 0
    assert "sample" in sample.source


def test_sample_pixels_match_pillow(sample: ImageData, jpegs: dict[str, list[bytes]]) -> None:
    cat = CIFAR_CLASSES.index("cat")
    first_cat = int(torch.nonzero(sample.labels == cat)[0])
    expected = np.asarray(decoded(jpegs["cat"][0])).transpose(2, 0, 1)
    assert np.array_equal(sample.images[first_cat].numpy(), expected)


def test_sample_provenance_names_source_and_seed() -> None:
    text = (SAMPLE.parent / "PROVENANCE.md").read_text()
    assert SHARED_SHA256 in text and sha256(SAMPLE) in text
    assert "Krizhevsky" in text and "make_sample.py" in text and "default_rng(" in text


@pytest.mark.slow
@needs_shared
def test_make_sample_regenerates_bundled_zip_byte_identical(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_sample", ROOT / "benchmarks" / "make_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_sample(SHARED, tmp_path / "again.zip")
    assert (tmp_path / "again.zip").read_bytes() == SAMPLE.read_bytes()


# ---------------------------------------------------------------- folder and zip layouts


def test_directory_and_zip_give_identical_data(tmp_path: Path, jpegs: dict[str, list[bytes]]) -> None:
    files = two_classes(jpegs)
    folder = load_dataset(write_tree(tmp_path / "tree", files))
    archive = load_dataset(write_zip(tmp_path / "data.zip", {f"train/{k}": v for k, v in files.items()}))
    assert folder.classes == archive.classes == ("cat", "dog")
    assert folder.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(folder.images, archive.images)
    assert archive.digest == sha256(tmp_path / "data.zip")
    assert archive.source == f"zip {tmp_path / 'data.zip'}"


def test_zip_class_level_detected_below_wrappers_and_noise_ignored(
    tmp_path: Path, jpegs: dict[str, list[bytes]]
) -> None:
    files = {f"export/cifar/train/{k}": v for k, v in two_classes(jpegs).items()}
    files |= {
        "export/cifar/train/README.txt": b"x",
        "__MACOSX/export/._a.jpg": b"x",
        "export/.DS_Store": b"x",
    }
    files |= {
        "export/cifar/train/cat/.hidden.jpg": b"garbage",
        "export/cifar/train/stray.jpg": jpegs["cat"][7],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_dataset(write_zip(tmp_path / "nested.zip", files))
    assert data.classes == ("cat", "dog") and len(data) == 6 and data.skipped == 0


def test_file_order_is_sorted_class_then_name(tmp_path: Path, jpegs: dict[str, list[bytes]]) -> None:
    files = {"b/2.jpg": jpegs["dog"][0], "b/10.jpg": jpegs["dog"][1], "a/z.jpg": jpegs["cat"][0]}
    files |= {"a-x/y.jpg": jpegs["ship"][0]}
    data = load_dataset(write_tree(tmp_path / "tree", files))
    assert data.classes == ("a", "a-x", "b")
    order = [jpegs["cat"][0], jpegs["ship"][0], jpegs["dog"][1], jpegs["dog"][0]]  # "10.jpg" < "2.jpg"
    expected = np.stack([np.asarray(decoded(blob)).transpose(2, 0, 1) for blob in order])
    assert data.labels.tolist() == [0, 1, 2, 2] and np.array_equal(data.images.numpy(), expected)


@pytest.mark.parametrize("kind", ["dir", "zip"])
def test_single_class_is_rejected(tmp_path: Path, jpegs: dict[str, list[bytes]], kind: str) -> None:
    files = {f"train/cat/{i}.jpg": blob for i, blob in enumerate(jpegs["cat"])}
    path = write_tree(tmp_path / "d", files) if kind == "dir" else write_zip(tmp_path / "d.zip", files)
    with data_error(r"only one class folder \('cat'\)") as info:
        load_dataset(path)
    assert str(path) in str(info.value)


def test_empty_folder_and_empty_zip_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with data_error("no image files"):
        load_dataset(tmp_path / "empty")
    with data_error("no image files"):
        load_dataset(write_zip(tmp_path / "empty.zip", {}))


def test_images_without_class_folders_are_rejected(tmp_path: Path, jpegs: dict[str, list[bytes]]) -> None:
    with data_error("no class folders"):
        load_dataset(write_tree(tmp_path / "flat", {"a.jpg": jpegs["cat"][0], "b.jpg": jpegs["dog"][0]}))


def test_missing_and_unsupported_paths(tmp_path: Path) -> None:
    with data_error(f"dataset not found: {tmp_path / 'nope.zip'}"):
        load_dataset(tmp_path / "nope.zip")
    (tmp_path / "data.csv").write_text("a,b")
    with data_error("unsupported dataset .*data.csv"):
        load_dataset(tmp_path / "data.csv")
    (tmp_path / "fake.zip").write_bytes(b"not a zip at all")
    with data_error("fake.zip: not a readable zip file"):
        load_dataset(tmp_path / "fake.zip")


def test_special_names_are_plain_strings_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with data_error("dataset not found: sample"):
        load_dataset(Path("sample"))


def test_nothing_decodable_is_rejected(tmp_path: Path) -> None:
    with data_error("none of the 2 image files could be decoded"):
        load_dataset(write_tree(tmp_path / "bad", {"a/x.jpg": b"junk", "b/y.png": b"junk"}))


def test_bad_options_are_rejected(tmp_path: Path) -> None:
    with data_error("channels must be 1 or 3, got 2"):
        load_dataset("sample", channels=2)
    with data_error("image_size must be a positive integer"):
        load_dataset("sample", image_size=0)


def test_directory_digest_depends_on_content_not_location(
    tmp_path: Path, jpegs: dict[str, list[bytes]]
) -> None:
    files = two_classes(jpegs)
    first = load_dataset(write_tree(tmp_path / "one", files))
    second = load_dataset(write_tree(tmp_path / "two", files))
    changed = load_dataset(write_tree(tmp_path / "three", files | {"cat/0.jpg": jpegs["cat"][5]}))
    assert first.digest == second.digest != changed.digest
    assert not torch.equal(first.images, changed.images)


# ---------------------------------------------------------------- decoding rules


@pytest.fixture
def odd_folder(tmp_path: Path, jpegs: dict[str, list[bytes]]) -> tuple[Path, dict[str, Image.Image]]:
    """Two classes of real JPEGs plus every awkward variant of a real image in class `cat`."""
    base = decoded(jpegs["cat"][3])
    rgba = base.convert("RGBA")
    rgba.putalpha(90)
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    variants = {
        "cat/v_cmyk.jpg": base.convert("CMYK"),
        "cat/v_gray.jpg": base.convert("L"),
        "cat/v_odd.jpg": base.resize((48, 40)),
        "cat/v_palette.png": palette,
        "cat/v_rgba.png": rgba,
        "cat/v_tiny.png": base.resize((5, 7)),
        "cat/v_wide.png": base.resize((64, 32)),
    }
    files = two_classes(jpegs) | {
        name: encode(image, "JPEG" if name.endswith(".jpg") else "PNG") for name, image in variants.items()
    }
    files["cat/v_ptrans.png"] = encode(palette, "PNG", transparency=0)
    files["cat/z_corrupt.jpg"] = b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10
    files["dog/z_truncated.jpg"] = jpegs["dog"][4][: len(jpegs["dog"][4]) // 2]
    sources = {name: decoded(blob, "RGBA") for name, blob in files.items() if "/v_" in name}
    return write_tree(tmp_path / "odd", files), sources


def _position(root: Path, name: str) -> int:
    """Index of `name` in load order (sorted class, sorted name), corrupt files excluded."""
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*") if "/z_" not in p.as_posix())
    return names.index(name)


def test_awkward_images_convert_and_broken_ones_are_skipped_with_one_warning(
    odd_folder: tuple[Path, dict[str, Image.Image]],
) -> None:
    root, _ = odd_folder
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset(root)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "skipped 2 undecodable" in message and "z_corrupt.jpg" in message and "z_truncated.jpg" in message
    assert data.skipped == 2 and data.images.shape == (14, 3, 32, 32)
    assert data.labels.bincount().tolist() == [11, 3]


def test_mode_conversions_follow_the_documented_rules(
    odd_folder: tuple[Path, dict[str, Image.Image]],
) -> None:
    root, sources = odd_folder
    with pytest.warns(UserWarning, match="skipped 2"):
        data = load_dataset(root)

    def pixels(name: str) -> np.ndarray:
        return data.images[_position(root, name)].numpy().transpose(1, 2, 0)

    gray = pixels("cat/v_gray.jpg")
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])
    assert np.array_equal(pixels("cat/v_rgba.png"), np.asarray(sources["cat/v_rgba.png"])[..., :3])
    for name in ("cat/v_palette.png", "cat/v_ptrans.png"):
        assert np.array_equal(pixels(name), np.asarray(sources[name].convert("RGB")))
    cmyk = decoded((root / "cat/v_cmyk.jpg").read_bytes())
    assert np.array_equal(pixels("cat/v_cmyk.jpg"), np.asarray(cmyk))
    for name in ("cat/v_tiny.png", "cat/v_odd.jpg", "cat/v_wide.png"):
        assert np.array_equal(pixels(name), reference_fit(decoded((root / name).read_bytes()), 32)), name


def test_grayscale_output_and_explicit_size(odd_folder: tuple[Path, dict[str, Image.Image]]) -> None:
    root, _ = odd_folder
    with pytest.warns(UserWarning, match="skipped 2"):
        gray = load_dataset(root, channels=1)
    with pytest.warns(UserWarning, match="skipped 2"):
        small = load_dataset(root, image_size=16)
    assert gray.images.shape == (14, 1, 32, 32) and small.images.shape == (14, 3, 16, 16)
    name = "dog/0.jpg"
    expected = np.asarray(decoded((root / name).read_bytes(), "L"))
    assert np.array_equal(gray.images[_position(root, name), 0].numpy(), expected)
    expected = reference_fit(decoded((root / name).read_bytes()), 16)
    assert np.array_equal(small.images[_position(root, name)].numpy().transpose(1, 2, 0), expected)


def test_most_common_size_wins(tmp_path: Path, jpegs: dict[str, list[bytes]]) -> None:
    files = {
        f"{label}/s{i}.png": encode(decoded(jpegs[label][i]).resize((20, 20)), "PNG")
        for label in ("cat", "ship")
        for i in (0, 1)
    }
    files["cat/big.jpg"] = jpegs["cat"][5]
    data = load_dataset(write_tree(tmp_path / "sizes", files))
    assert data.images.shape == (5, 3, 20, 20)
    expected = reference_fit(decoded(jpegs["cat"][5]), 20)
    assert np.array_equal(data.images[0].numpy().transpose(1, 2, 0), expected)


def test_centre_crop_keeps_the_middle(tmp_path: Path) -> None:
    bands = np.zeros((32, 96, 3), np.uint8)
    bands[:, :32, 0] = bands[:, 32:64, 1] = bands[:, 64:, 2] = 255
    files = {"wide/a.png": encode(Image.fromarray(bands), "PNG")}
    files["tall/a.png"] = encode(Image.fromarray(bands.transpose(1, 0, 2).copy()), "PNG")
    data = load_dataset(write_tree(tmp_path / "bands", files), image_size=32)
    green = np.zeros((3, 32, 32), np.uint8)
    green[1] = 255
    assert all(np.array_equal(image, green) for image in data.images.numpy())


# ---------------------------------------------------------------- limits: zip bombs, huge images, decode_size

MIB = 1 << 20


def write_bomb(path: Path, members: dict[str, int], good: dict[str, bytes] | None = None) -> Path:
    """A real zip bomb: members of `size` zero bytes, deflated (1,000:1) and streamed, so neither the file
    nor this process ever holds them; `good` members are stored as given."""
    zeros = bytes(MIB)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, blob in (good or {}).items():
            archive.writestr(name, blob)
        for name, size in members.items():
            with archive.open(name, "w") as member:
                for _ in range(size // MIB):
                    member.write(zeros)
    return path


def lie_about_size(path: Path, name: str, declared: int) -> None:
    """Rewrite a member's uncompressed size in the local header and the central directory (no zip64)."""
    blob = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    encoded = name.encode()
    local = info.header_offset
    assert blob[local : local + 4] == b"PK\x03\x04"
    blob[local + 22 : local + 26] = declared.to_bytes(4, "little")
    central = next(i for i in range(len(blob)) if blob[i : i + 4] == b"PK\x01\x02"
                   and blob[i + 46 : i + 46 + len(encoded)] == encoded)
    blob[central + 24 : central + 28] = declared.to_bytes(4, "little")
    path.write_bytes(bytes(blob))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels, with almost no pixel data behind it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_zip_bomb_is_refused_from_its_directory_without_inflating(
    tmp_path: Path, jpegs: dict[str, list[bytes]]
) -> None:
    bomb = write_bomb(tmp_path / "bomb.zip", {"dog/bomb.png": 300 * MIB}, two_classes(jpegs))
    assert bomb.stat().st_size < 2 * MIB  # 300 MiB inflated, under 1% of it on disk
    started = time.perf_counter()
    with data_error(r"bomb.zip: 'dog/bomb.png' is 300.0 MiB uncompressed \(over max_file_bytes=256.0 MiB\)"):
        load_dataset(bomb)  # the default limits
    assert time.perf_counter() - started < 0.5  # refused from the directory: nothing was inflated
    many = write_bomb(tmp_path / "many.zip", {f"dog/{i}.png": 8 * MIB for i in range(4)}, two_classes(jpegs))
    with data_error(r"many.zip: 10 image files hold 32.0 MiB uncompressed \(over max_bytes=16.0 MiB\)"):
        load_dataset(many, limits=DataLimits(max_bytes=16 * MIB))
    assert len(load_dataset(write_zip(tmp_path / "ok.zip", two_classes(jpegs)), limits=DataLimits(max_bytes=MIB))) == 6


def test_zip_member_that_lies_about_its_size_is_read_only_to_the_declared_size(
    tmp_path: Path, jpegs: dict[str, list[bytes]]
) -> None:
    import tracemalloc

    bomb = write_bomb(tmp_path / "liar.zip", {"dog/liar.png": 200 * MIB}, two_classes(jpegs))
    lie_about_size(bomb, "dog/liar.png", 1000)
    tracemalloc.start()
    try:
        with pytest.warns(UserWarning, match="skipped 1 undecodable image file.*dog/liar.png"):
            data = load_dataset(bomb, cache_dir=tmp_path / "cache")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(data) == 6 and data.skipped == 1
    assert peak < 50 * MIB  # the 200 MiB behind the lie were never inflated into memory


def test_reads_stop_at_max_file_bytes_whatever_stat_says(tmp_path: Path, jpegs: dict[str, list[bytes]]) -> None:
    root = write_tree(tmp_path / "tree", two_classes(jpegs))
    (root / "dog" / "endless.jpg").symlink_to("/dev/zero")  # stat size 0, endless content
    with data_error(r"'endless.jpg' holds more than max_file_bytes=1.0 MiB"):
        load_dataset(root, limits=DataLimits(max_file_bytes=MIB))
    (root / "dog" / "endless.jpg").unlink()
    (root / "dog" / "big.jpg").write_bytes(bytes(2 * MIB))
    with data_error(r"'dog/big.jpg' is 2.0 MiB \(over max_file_bytes=1.0 MiB\)"):
        load_dataset(root, limits=DataLimits(max_file_bytes=MIB))


def test_npz_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False,
                                                          "shape": (3000, 3, 32, 32)})
            member.write(bytes(3000 * 3 * 32 * 32))
        with archive.open("y.npy", "w") as member:
            np.lib.format.write_array(member, np.arange(3000) % 2)
    with data_error(r"bomb.npz: arrays hold 8.8 MiB uncompressed \(over max_bytes=1.0 MiB\)"):
        load_dataset(path, limits=DataLimits(max_bytes=MIB))
    assert load_dataset(path).images.shape == (3000, 3, 32, 32)


def test_npz_header_that_lies_about_its_shape_is_refused_before_allocating(tmp_path: Path) -> None:
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("x.npy", "w") as member:  # declares 8 EiB; numpy would allocate that first
            np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False,
                                                          "shape": (1 << 56, 3, 32, 32)})
            member.write(bytes(3 * 32 * 32))
        with archive.open("y.npy", "w") as member:
            np.lib.format.write_array(member, np.array([0, 1]))
    with data_error(r"liar.npz: array 'x' declares shape \(72057594037927936, 3, 32, 32\) .* but holds 3.0 KiB"):
        load_dataset(path)


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A 6000 x 4000 (24-megapixel) JPEG: smooth colour gradients plus a square, like a full-size photo."""
    yy, xx = np.mgrid[0:4000, 0:6000]
    rgb = np.stack([xx * 255 // 6000, yy * 255 // 4000, (xx + yy) * 255 // 10000], axis=-1).astype(np.uint8)
    rgb[1500:2500, 2500:3500] = (250, 30, 30)
    return encode(Image.fromarray(rgb), "JPEG", quality=90)


def test_large_photos_are_scaled_at_decode(tmp_path: Path, jpegs: dict[str, list[bytes]], photo: bytes) -> None:
    root = write_tree(tmp_path / "photos", {"cat/photo.jpg": photo, "dog/photo.jpg": photo,
                                           "dog/small.jpg": jpegs["dog"][0]})
    data = load_dataset(root, decode_size=48, cache_dir=tmp_path / "cache")
    assert data.images.shape == (3, 3, 48, 72)  # shorter side 48, aspect kept; the CIFAR image is left alone
    expected = np.asarray(decoded(photo).resize((72, 48), Image.Resampling.BICUBIC)).astype(int)
    got = data.images[0].numpy().transpose(1, 2, 0).astype(int)
    assert np.abs(got - expected).mean() < 3  # JPEG draft scaling + bicubic ~ bicubic from full size
    assert tuple(got[24, 36]) == pytest.approx((250, 30, 30), abs=12)  # the square is in the middle
    small = load_dataset(root, decode_size=48, image_size=32, cache_dir=tmp_path / "cache")
    assert small.images.shape == (3, 3, 32, 32)
    assert {p.name.split("-", 1)[1] for p in (tmp_path / "cache").iterdir()} == {
        "sizeauto-d48-c3-v1.npz", "size32-d48-c3-v1.npz"}  # decode_size is part of the cache key
    with data_error("decode_size must be a positive integer or None, got 0"):
        load_dataset(root, decode_size=0)


def test_decode_size_scales_arrays_too(tmp_path: Path) -> None:
    x = np.zeros((4, 96, 64, 3), np.uint8)
    np.savez(tmp_path / "a.npz", x=x, y=np.array([0, 1, 0, 1]))
    assert load_dataset(tmp_path / "a.npz", decode_size=32).images.shape == (4, 3, 48, 32)
    with data_error(r"4 images of 64x96 are 24,576 pixels \(over max_pixels=10,000\)"):
        load_dataset(tmp_path / "a.npz", limits=DataLimits(max_pixels=10_000))


def test_pixel_caps(tmp_path: Path, jpegs: dict[str, list[bytes]], photo: bytes) -> None:
    root = write_tree(tmp_path / "photos", {"cat/photo.jpg": photo, **two_classes(jpegs)})
    with data_error(r"'cat/photo.jpg': 6000x4000 pixels, over max_image_pixels=10,000,000"):
        load_dataset(root, limits=DataLimits(max_image_pixels=10_000_000))
    with data_error(r"the decoded images pass max_pixels=1,000,000 .* after 4 of 7 files; pass decode_size"):
        load_dataset(root, limits=DataLimits(max_pixels=1_000_000))  # native size: 24M pixels
    assert len(load_dataset(root, decode_size=32, limits=DataLimits(max_pixels=1_000_000))) == 7
    (root / "dog" / "claims.png").write_bytes(png_header_only(12_000, 12_000))  # 144M pixels, 100 bytes
    with data_error(r"'dog/claims.png': 12000x12000 pixels, over max_image_pixels=67,108,864"):
        load_dataset(root, decode_size=32)
    (root / "dog" / "claims.png").write_bytes(png_header_only(20_000, 20_000))  # over Pillow's own ceiling
    with data_error(r"'dog/claims.png': over Pillow's decompression-bomb limit"):
        load_dataset(root, decode_size=32, limits=DataLimits(max_image_pixels=10**9))


def test_pixel_caps_hold_in_the_process_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jpegs: dict[str, list[bytes]], photo: bytes
) -> None:
    monkeypatch.setattr(_decode, "POOL_MIN_FILES", 0)
    monkeypatch.setattr(_decode, "CHUNK_FILES", 2)
    root = write_tree(tmp_path / "photos", {"cat/photo.jpg": photo, **two_classes(jpegs)})
    with data_error(r"'cat/photo.jpg': 6000x4000 pixels, over max_image_pixels=10,000,000"):
        load_dataset(root, limits=DataLimits(max_image_pixels=10_000_000))
    with data_error(r"'cat/photo.jpg': the decoded images pass max_pixels=1,000,000"):
        load_dataset(root, limits=DataLimits(max_pixels=1_000_000))
    assert load_dataset(root, decode_size=32).images.shape == (7, 3, 32, 32)


def test_cached_data_obeys_the_pixel_cap(tmp_path: Path, jpegs: dict[str, list[bytes]]) -> None:
    root = write_tree(tmp_path / "t", two_classes(jpegs))
    load_dataset(root, cache_dir=tmp_path / "cache")
    with data_error(r"6 images of 32x32 are 6,144 pixels \(over max_pixels=1,000\)"):
        load_dataset(root, cache_dir=tmp_path / "cache", limits=DataLimits(max_pixels=1000))


def test_bad_limits_are_one_line() -> None:
    with data_error("max_pixels must be a positive integer, got 0"):
        DataLimits(max_pixels=0)
    with data_error("limits must be a trainers.data.DataLimits, got dict"):
        load_dataset("sample", limits={"max_bytes": 1})


# ---------------------------------------------------------------- npz


@pytest.fixture
def arrays(sample: ImageData) -> tuple[np.ndarray, np.ndarray]:
    """40 real images (4 classes) as NHWC uint8 and int labels."""
    idx = torch.cat([torch.nonzero(sample.labels == c)[:10, 0] for c in range(4)])
    return sample.images[idx].numpy().transpose(0, 2, 3, 1).copy(), sample.labels[idx].numpy()


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_npz_layouts(tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray], layout: str) -> None:
    x, y = arrays
    stored = x if layout == "NHWC" else x.transpose(0, 3, 1, 2)
    np.savez(tmp_path / "d.npz", x=stored, y=y.astype(np.int32), classes=np.array(CIFAR_CLASSES[:4]))
    data = load_dataset(tmp_path / "d.npz")
    assert np.array_equal(data.images.numpy(), x.transpose(0, 3, 1, 2)) and data.images.is_contiguous()
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == y.tolist()
    assert data.classes == CIFAR_CLASSES[:4] and data.digest == sha256(tmp_path / "d.npz")


def test_npz_grayscale_rgba_and_conversions(tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = arrays
    luma = np.stack([np.asarray(Image.fromarray(a).convert("L")) for a in x])
    np.savez(tmp_path / "gray.npz", x=luma, y=y)
    gray3 = load_dataset(tmp_path / "gray.npz")
    assert gray3.classes == ("0", "1", "2", "3")
    assert np.array_equal(gray3.images.numpy(), np.repeat(luma[:, None], 3, axis=1))
    assert np.array_equal(load_dataset(tmp_path / "gray.npz", channels=1).images.numpy()[:, 0], luma)
    rgba = np.concatenate([x, np.full(x.shape[:3] + (1,), 7, np.uint8)], axis=-1)
    np.savez(tmp_path / "rgba.npz", x=rgba, y=y)
    assert np.array_equal(load_dataset(tmp_path / "rgba.npz").images.numpy(), x.transpose(0, 3, 1, 2))
    np.savez(tmp_path / "rgb.npz", x=x, y=y)
    assert np.array_equal(load_dataset(tmp_path / "rgb.npz", channels=1).images.numpy()[:, 0], luma)
    resized = load_dataset(tmp_path / "rgb.npz", image_size=20).images.numpy()
    assert np.array_equal(resized[5].transpose(1, 2, 0), reference_fit(Image.fromarray(x[5]), 20))


def test_npz_errors_name_the_field(tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = arrays
    cases = {
        "no_y": ({"x": x}, r"missing array 'y' \(found: x\)"),
        "float": ({"x": x.astype(np.float32), "y": y}, "array 'x' must be uint8, got float32"),
        "short_y": ({"x": x, "y": y[:-1]}, "array 'y' must hold 40 integer labels"),
        "one_class": ({"x": x, "y": np.zeros_like(y)}, "fewer than two classes"),
        "shape": ({"x": x[..., :2], "y": y}, r"array 'x' has shape \(40, 32, 32, 2\)"),
        "classes": ({"x": x, "y": y, "classes": np.array(["a", "b"])}, "array 'classes' must be 4 or more"),
        "pickled": ({"x": x, "y": y, "classes": np.array(["a", 1, 2, 3], dtype=object)}, "allow_pickle"),
    }
    for name, (content, message) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **content)
        with data_error(message):
            load_dataset(tmp_path / f"{name}.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with data_error("junk.npz: not a readable .npz"):
        load_dataset(tmp_path / "junk.npz")
    with (tmp_path / "single.npz").open("wb") as handle:
        np.save(handle, x)
    with data_error("single.npz: not a .npz archive"):
        load_dataset(tmp_path / "single.npz")


# ---------------------------------------------------------------- special specs


def test_torchvision_missing_root_says_to_download(tmp_path: Path) -> None:
    with data_error(r"torchvision:cifar10: not found under .*; pass download=True"):
        load_dataset("torchvision:cifar10", root=str(tmp_path / "tv"))
    with data_error("unknown dataset 'torchvision:mnist'; choose from cifar10, cifar100, svhn"):
        load_dataset("torchvision:mnist")


def test_cifar10_jpeg_shortcut_missing_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with data_error("cifar10-jpeg: .*cifar10-train-jpeg.zip not found .*POLICY_SEARCH_SHARED_DATA"):
        load_dataset("cifar10-jpeg")
    monkeypatch.setenv("POLICY_SEARCH_SHARED_DATA", str(tmp_path / "elsewhere"))
    with data_error("elsewhere/cifar10-train-jpeg.zip not found"):
        load_dataset("cifar10-jpeg")


def test_cifar10_jpeg_shortcut_uses_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jpegs: dict[str, list[bytes]]
) -> None:
    stand_in = write_zip(
        tmp_path / "cifar10-train-jpeg.zip", {f"train/{k}": v for k, v in two_classes(jpegs).items()}
    )
    monkeypatch.setenv("POLICY_SEARCH_SHARED_DATA", str(tmp_path))
    data = load_dataset("cifar10-jpeg")
    assert len(data) == 6 and data.digest == sha256(stand_in) and str(stand_in) in data.source
    monkeypatch.setenv("POLICY_SEARCH_SHARED_DATA", str(stand_in))  # the zip itself also works
    assert load_dataset("cifar10-jpeg").digest == data.digest


# ---------------------------------------------------------------- cache


def _forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise AssertionError("decoded although the cache should have been used")

    monkeypatch.setattr(_decode, "decode_image", boom)


def test_second_load_uses_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample: ImageData) -> None:
    first = load_dataset("sample", cache_dir=tmp_path)
    _forbid_decoding(monkeypatch)
    again = load_dataset("sample", cache_dir=tmp_path)
    assert torch.equal(first.images, again.images) and torch.equal(sample.images, again.images)
    assert again.classes == first.classes and again.digest == first.digest
    with pytest.raises(AssertionError, match="decoded although"):  # other options are other entries
        load_dataset("sample", cache_dir=tmp_path, image_size=16)


def test_default_cache_dir_comes_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jpegs: dict[str, list[bytes]]
) -> None:
    monkeypatch.setenv("POLICY_SEARCH_CACHE", str(tmp_path / "env-cache"))
    data = load_dataset(write_tree(tmp_path / "tree", two_classes(jpegs)))
    assert [p.name for p in (tmp_path / "env-cache").iterdir()] == [f"{data.digest}-sizeauto-c3-v1.npz"]


def test_cache_replays_the_skip_warning(
    odd_folder: tuple[Path, dict[str, Image.Image]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = odd_folder
    with pytest.warns(UserWarning, match="skipped 2"):
        load_dataset(root, cache_dir=tmp_path / "c")
    _forbid_decoding(monkeypatch)
    with pytest.warns(UserWarning, match="skipped 2 .*z_corrupt.jpg"):
        assert load_dataset(root, cache_dir=tmp_path / "c").skipped == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bitflip", "foreign", "npy"])
def test_corrupt_cache_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jpegs: dict[str, list[bytes]], damage: str
) -> None:
    source = write_zip(tmp_path / "small.zip", two_classes(jpegs, n=8))
    cache = tmp_path / "cache"
    first = load_dataset(source, cache_dir=cache)
    (entry,) = cache.glob("*.npz")
    if damage == "garbage":
        entry.write_bytes(b"\0garbage" * 100)
    elif damage == "truncated":
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    elif damage == "bitflip":  # caught by the zip member's CRC-32
        blob = bytearray(entry.read_bytes())
        blob[len(blob) // 3] ^= 0xFF
        entry.write_bytes(bytes(blob))
    elif damage == "npy":
        with entry.open("wb") as handle:
            np.save(handle, np.zeros(3))
    else:
        np.savez(
            entry,
            images=np.zeros((2, 3, 8, 8), np.uint8),
            labels=np.zeros(2, np.int64),
            classes=np.array(["a", "b"]),
            skipped=np.array([], str),
        )
    with pytest.warns(UserWarning, match="ignoring unreadable dataset cache .*; rebuilding it") as record:
        rebuilt = load_dataset(source, cache_dir=cache)
    assert all("\n" not in str(w.message) for w in record)
    assert torch.equal(rebuilt.images, first.images)
    _forbid_decoding(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(load_dataset(source, cache_dir=cache).images, first.images)
    assert [p.name for p in cache.iterdir()] == [entry.name]  # no temp files left behind


def test_unwritable_cache_only_warns(tmp_path: Path, jpegs: dict[str, list[bytes]]) -> None:
    (tmp_path / "not-a-dir").write_text("file in the way")
    with pytest.warns(UserWarning, match="could not write dataset cache"):
        data = load_dataset(write_tree(tmp_path / "t", two_classes(jpegs)), cache_dir=tmp_path / "not-a-dir")
    assert len(data) == 6


def test_process_pool_matches_in_process_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample: ImageData
) -> None:
    monkeypatch.setattr(_decode, "POOL_MIN_FILES", 0)
    monkeypatch.setattr(_decode, "CHUNK_FILES", 300)
    pooled = load_dataset("sample", cache_dir=tmp_path)
    assert torch.equal(pooled.images, sample.images) and torch.equal(pooled.labels, sample.labels)


# ---------------------------------------------------------------- ImageData


def test_subset_and_device_tensors(sample: ImageData) -> None:
    idx = np.array([5, 0, 3999])
    for index in (idx, torch.from_numpy(idx), idx.tolist()):
        part = sample.subset(index)
        assert torch.equal(part.images, sample.images[idx]) and part.images.is_contiguous()
        assert part.labels.tolist() == sample.labels[idx].tolist() and part.classes == sample.classes
        assert part.digest != sample.digest and "3 of 4000" in part.source
    mask = sample.labels == 2
    assert len(sample.subset(mask)) == 400 and len(sample.subset(mask.numpy())) == 400
    images, labels = to_device_tensors(sample, idx, "cpu")
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert torch.equal(images, sample.images[idx]) and labels.device.type == "cpu"


def test_image_data_validates_shapes() -> None:
    with data_error("labels must be int64"):
        ImageData(
            torch.zeros(2, 3, 4, 4, dtype=torch.uint8),
            torch.zeros(3, dtype=torch.int64),
            ("a", "b"),
            "t",
            "d",
        )
    with data_error("labels must lie in 0..1"):
        ImageData(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.tensor([2]), ("a", "b"), "t", "d")


# ---------------------------------------------------------------- splits


def _per_class(labels: np.ndarray, idx: np.ndarray, k: int) -> list[int]:
    return np.bincount(labels[idx], minlength=k).tolist()


def test_splits_are_exactly_stratified_and_disjoint(sample: ImageData) -> None:
    labels = sample.labels.numpy()
    splits = make_splits(sample, train_size=1000, val_size=500, test_size=300, seed=3)
    assert _per_class(labels, splits.train, 10) == [100] * 10
    assert _per_class(labels, splits.val, 10) == [50] * 10
    assert _per_class(labels, splits.test, 10) == [30] * 10
    assert splits.summary() == {"train": 1000, "val": 500, "test": 300, "unlabeled": 2200}
    together = np.concatenate([splits.train, splits.val, splits.test, splits.unlabeled])
    assert np.array_equal(np.sort(together), np.arange(4000))
    assert all(
        np.array_equal(a, np.sort(a)) and a.dtype == np.int64 for a in (splits.train, splits.unlabeled)
    )


def test_unbalanced_classes_get_floor_or_ceil_shares() -> None:
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    splits = make_splits(torch.from_numpy(labels), train_size=37, val_size=21, test_size=13, seed=1)
    for part, size in ((splits.train, 37), (splits.val, 21), (splits.test, 13)):
        quota = size * np.array([50, 30, 15, 5]) / 100
        counts = np.array(_per_class(labels, part, 4))
        assert counts.sum() == size and (np.floor(quota) <= counts).all() and (counts <= np.ceil(quota)).all()


def test_seeds_reproduce_and_differ(sample: ImageData) -> None:
    def make(seed: int) -> Splits:
        return make_splits(sample.labels, train_size=400, val_size=200, seed=seed)

    assert make(7) == make(7)
    assert not np.array_equal(make(7).train, make(8).train)
    assert make(7).seed == 7


def test_unlabeled_size_takes_part_of_the_rest(sample: ImageData) -> None:
    full = make_splits(sample.labels, train_size=400, val_size=100, seed=2)
    part = make_splits(sample.labels, train_size=400, val_size=100, seed=2, unlabeled_size=123)
    assert len(part.unlabeled) == 123 and np.isin(part.unlabeled, full.unlabeled).all()
    assert np.array_equal(part.train, full.train)


def test_split_sizes_beyond_the_data_are_rejected(sample: ImageData) -> None:
    with data_error(r"^train_size\+val_size\+test_size = 6000 exceeds the 4000 images in bundled sample"):
        make_splits(sample, train_size=3000, val_size=2000, test_size=1000)
    with data_error(r"train_size\+val_size\+test_size\+unlabeled_size = 4001 exceeds the 4000 images"):
        make_splits(sample.labels, train_size=1000, val_size=0, unlabeled_size=3001)
    with data_error("val_size must be a non-negative integer, got -1"):
        make_splits(sample.labels, train_size=10, val_size=-1)
    with data_error("no labels to split"):
        make_splits(np.array([], np.int64), train_size=0, val_size=0)


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 40), min_size=2, max_size=8),
    fractions=st.lists(st.floats(0, 1), min_size=3, max_size=3),
    seed=st.integers(0, 2**32 - 1),
)
def test_split_properties(counts: list[int], fractions: list[float], seed: int) -> None:
    labels = np.repeat(np.arange(len(counts)), counts)
    n = len(labels)
    train, val, test = (int(f * n / 2 / 3) for f in fractions)  # at most half the data in all
    splits = make_splits(labels, train_size=train, val_size=val, test_size=test, seed=seed)
    assert splits == make_splits(labels, train_size=train, val_size=val, test_size=test, seed=seed)
    assert np.array_equal(
        np.sort(np.concatenate([splits.train, splits.val, splits.test, splits.unlabeled])), np.arange(n)
    )
    for part, size in ((splits.train, train), (splits.val, val), (splits.test, test)):
        quota = size * np.array(counts) / n
        per_class = np.array(_per_class(labels, part, len(counts)))
        assert per_class.sum() == size
        assert (np.floor(quota) <= per_class).all() and (per_class <= np.ceil(quota)).all()


def test_splits_json_round_trip(tmp_path: Path, sample: ImageData) -> None:
    splits = make_splits(sample, train_size=400, val_size=100, test_size=50, seed=11)
    splits.save(tmp_path / "splits.json")
    assert Splits.load(tmp_path / "splits.json") == splits
    assert Splits.from_dict(json.loads(json.dumps(splits.to_dict()))) == splits
    assert json.loads((tmp_path / "splits.json").read_text())["seed"] == 11


def test_malformed_splits_are_rejected(tmp_path: Path) -> None:
    good = {"seed": 0, "train": [0, 1], "val": [2], "test": [], "unlabeled": [3]}
    with data_error("missing field 'val'"):
        Splits.from_dict({k: v for k, v in good.items() if k != "val"})
    with data_error("splits overlap"):
        Splits.from_dict(good | {"test": [1]})
    with data_error("split 'train' must be a 1-D array of non-negative integers"):
        Splits.from_dict(good | {"train": [0.5]})
    with data_error("seed must be an integer, got '0'"):
        Splits.from_dict(good | {"seed": "0"})
    with data_error("cannot read splits from .*missing.json"):
        Splits.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with data_error("cannot read splits from .*bad.json"):
        Splits.load(tmp_path / "bad.json")


def test_kfold_holds_out_each_index_exactly_once(sample: ImageData) -> None:
    labels = sample.labels.numpy()
    indices = make_splits(labels, train_size=503, val_size=0, seed=4).train
    folds = stratified_kfold(indices, sample.labels, k=5, seed=9)
    held = np.concatenate([h for _, h in folds])
    assert np.array_equal(np.sort(held), indices)
    for fit, heldout in folds:
        assert np.array_equal(np.sort(np.concatenate([fit, heldout])), indices)
    sizes = [len(h) for _, h in folds]
    assert max(sizes) - min(sizes) <= 1
    per_class = np.array([_per_class(labels, h, 10) for _, h in folds])
    assert (per_class.max(axis=0) - per_class.min(axis=0) <= 1).all()
    again = stratified_kfold(indices, labels, k=5, seed=9)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    with data_error("k must be between 2 and the 503 indices, got 1"):
        stratified_kfold(indices, labels, k=1)


# ---------------------------------------------------------------- the full shared zip


@pytest.mark.slow
@needs_shared
def test_subset_of_shared_zip_matches_pillow(tmp_path: Path) -> None:
    with zipfile.ZipFile(SHARED) as archive:
        names = [
            n
            for n in sorted(archive.namelist())
            if n.endswith(".jpg") and n.split("/")[1] in ("frog", "ship")
        ]
        files = {name: archive.read(name) for name in names[:20] + names[-20:]}
    data = load_dataset(write_zip(tmp_path / "part.zip", files))
    expected = np.stack([np.asarray(decoded(files[name])).transpose(2, 0, 1) for name in sorted(files)])
    assert data.classes == ("frog", "ship") and np.array_equal(data.images.numpy(), expected)


@pytest.mark.slow
@needs_shared
def test_full_shared_zip_decodes_once_then_loads_from_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLICY_SEARCH_SHARED_DATA", str(SHARED))  # wherever the tests found it
    data = load_dataset("cifar10-jpeg", cache_dir=tmp_path)
    assert data.images.shape == (50000, 3, 32, 32) and data.classes == CIFAR_CLASSES
    assert data.labels.bincount().tolist() == [5000] * 10 and data.digest == SHARED_SHA256
    _forbid_decoding(monkeypatch)
    start = time.perf_counter()
    again = load_dataset("cifar10-jpeg", cache_dir=tmp_path)
    assert time.perf_counter() - start < 3.0  # ~0.4 s measured; generous for loaded CI machines
    assert torch.equal(again.images, data.images)
    splits = make_splits(again, train_size=4000, val_size=1000, test_size=5000, seed=0)
    assert _per_class(again.labels.numpy(), splits.train, 10) == [400] * 10
