"""Augmentation throughput: this package's per-sample Augmenter vs torchvision and kornia RandAugment.

Same run, same inputs (real CIFAR-10 images when ../shared/data is present, else random), batch 256,
32x32, float32. Rows:

* ``policy-search Augmenter``: RandAugment(2, 9), every image draws its own ops, signs and magnitudes.
* ``torchvision v2 RandAugment, per image``: the per-sample reference (what a DataLoader does).
* ``kornia auto.RandAugment, per batch``: kornia's preset (one op choice per batch).
* ``torchvision v2 RandAugment, whole batch``: one op choice for the whole batch (not per sample).

Usage: ``python benchmarks/augment_throughput.py [--repeats 10] [--out benchmarks/out]``. Prints a table
and writes ``augment_throughput.csv``; ratios are against the torchvision per-image row.
"""

from __future__ import annotations

import argparse
import io
import platform
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from kornia.augmentation.auto import RandAugment as KorniaRandAugment
from PIL import Image
from torchvision.transforms import v2

from search_spaces import Augmenter

SHARED_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-train-jpeg.zip"


def real_batch(n: int) -> torch.Tensor:
    """``n`` real CIFAR-10 images as float (n, 3, 32, 32), or random pixels when the data is absent."""
    if not SHARED_ZIP.is_file():
        return torch.rand(n, 3, 32, 32)
    with zipfile.ZipFile(SHARED_ZIP) as zf:
        names = sorted(x for x in zf.namelist() if x.endswith(".jpg"))[:: 50][:n]
        arrays = [np.asarray(Image.open(io.BytesIO(zf.read(x))).convert("RGB")) for x in names]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def timed(fn, x: torch.Tensor, repeats: int) -> float:
    """Images per second of ``fn(x)`` (median of ``repeats`` runs after one warm-up)."""
    fn(x)
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return x.shape[0] / float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    ours = Augmenter("randaugment")
    tv = v2.RandAugment(num_ops=2, magnitude=9)
    kornia_ra = KorniaRandAugment(n=2, m=9)
    rows = []
    for dev in devices:
        x = real_batch(args.batch).to(dev)
        g = torch.Generator(device=dev).manual_seed(0)
        kornia_ra.to(dev)
        cases = {
            "policy-search Augmenter (per sample)": lambda b, g=g: ours(b, generator=g),
            "torchvision v2 RandAugment, per image": lambda b: torch.stack([tv(img) for img in b]),
            "kornia auto.RandAugment (per batch)": kornia_ra,
            "torchvision v2 RandAugment, whole batch": tv,
        }
        speeds = {name: timed(fn, x, args.repeats) for name, fn in cases.items()}
        base = speeds["torchvision v2 RandAugment, per image"]
        per_sample = {"policy-search Augmenter (per sample)", "torchvision v2 RandAugment, per image"}
        for name, ips in speeds.items():
            rows.append({"device": dev, "method": name, "per_sample": name in per_sample,
                         "images_per_s": round(ips), "vs_tv_per_image": round(ips / base, 2)})
    table = pd.DataFrame(rows)
    table.attrs["machine"] = f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "augment_throughput.csv", index=False)
    print(f"batch {args.batch}, 32x32 float32, threads {torch.get_num_threads()}, {table.attrs['machine']}")
    print(table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
