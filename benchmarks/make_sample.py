"""Regenerate the bundled offline sample ``trainers/sample/cifar10-sample.zip`` from the shared zip.

Takes ``PER_CLASS`` images per class, chosen with ``numpy.random.default_rng(SEED)`` from the sorted
member names of each class (classes in sorted order), and copies their original JPEG bytes into an
ImageFolder-layout zip (``<class>/<name>.jpg``, stored, fixed timestamps) so that reruns are byte-identical.
Also rewrites ``PROVENANCE.md`` next to it.

Usage (from the project root): ``python benchmarks/make_sample.py [--source ZIP] [--out ZIP]``
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import zipfile
from pathlib import Path

import numpy as np

SOURCE = Path("..", "shared", "data", "cifar10-train-jpeg.zip")
SOURCE_SHA256 = "8c63264468f67a4d71e73d014900f3b8f1c779affb3d986d181e340561544f1f"
OUT = Path(__file__).resolve().parents[1] / "trainers" / "sample" / "cifar10-sample.zip"
SEED = 20240601
PER_CLASS = 400
_EPOCH = (1980, 1, 1, 0, 0, 0)

log = logging.getLogger("make_sample")


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def select(names: list[str], seed: int = SEED, per_class: int = PER_CLASS) -> dict[str, list[str]]:
    """Pick ``per_class`` member names per class folder (the parent directory), deterministically."""
    by_class: dict[str, list[str]] = {}
    for name in sorted(names):
        if name.lower().endswith(".jpg"):
            by_class.setdefault(name.split("/")[-2], []).append(name)
    rng = np.random.default_rng(seed)
    chosen = {}
    for label in sorted(by_class):
        members = by_class[label]
        if len(members) < per_class:
            raise SystemExit(f"class {label!r} has only {len(members)} images, need {per_class}")
        picks = rng.choice(len(members), size=per_class, replace=False)
        chosen[label] = [members[i] for i in sorted(picks)]
    return chosen


def write_sample(source: Path, out: Path) -> None:
    """Write the sample zip to ``out`` (atomically) from the shared zip at ``source``."""
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as dst:
        for label, members in select(src.namelist()).items():
            for member in members:
                info = zipfile.ZipInfo(f"{label}/{member.split('/')[-1]}", date_time=_EPOCH)
                info.external_attr = 0o644 << 16
                dst.writestr(info, src.read(member))
    tmp.replace(out)


def write_provenance(source: Path, source_digest: str, out: Path) -> None:
    """Write PROVENANCE.md next to the sample zip."""
    text = f"""# Bundled sample: `{out.name}`

- **What:** {PER_CLASS * 10:,} CIFAR-10 training images, {PER_CLASS} per class, 32x32 RGB JPEG, in
  ImageFolder layout (`<class>/<NNNN>.jpg`, zip stored uncompressed). Label index = sorted class name:
  airplane automobile bird cat deer dog frog horse ship truck.
- **Origin:** CIFAR-10 (Alex Krizhevsky, *Learning Multiple Layers of Features from Tiny Images*,
  2009), training split, via the project's shared JPEG re-encoding `cifar10-train-jpeg.zip`
  (sha256 `{source_digest}`). The JPEG bytes are copied unchanged from that zip (same file names).
- **Selection:** for each class in sorted order, `numpy.random.default_rng({SEED})` chooses {PER_CLASS}
  of the class's sorted member names without replacement (one generator shared across classes).
- **Reproduce:** from the project root, `python benchmarks/make_sample.py` (reads `{source.as_posix()}`).
  The output is byte-identical across runs; sha256 of this zip: `{sha256(out)}`.
- **Use:** `trainers.data.load_dataset("sample")`, the offline quick-start and the tests. Because of the
  JPEG step, pixels differ slightly from the original binary CIFAR-10 release.
"""
    out.with_name("PROVENANCE.md").write_text(text, encoding="utf-8")


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    digest = sha256(args.source)
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{args.source}: sha256 {digest} differs from the expected {SOURCE_SHA256}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_sample(args.source, args.out)
    write_provenance(args.source, digest, args.out)
    log.info("wrote %s (%d bytes, sha256 %s)", args.out, args.out.stat().st_size, sha256(args.out))


if __name__ == "__main__":
    main()
