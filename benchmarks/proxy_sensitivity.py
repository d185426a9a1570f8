"""Is the proxy sensitive enough to rank policies? Default proxy budget on reduced CIFAR-10, several policies.

Trains the default ``ProxyConfig`` on 4,000 labelled images (400 per class, stratified, seeded) drawn from
``../shared/data/cifar10-train-jpeg.zip`` and reports validation accuracy on 2,000 held-out images under:
no augmentation, crop+flip, crop+flip + RandAugment(2, 9), crop+flip + TrivialAugmentWide, over 3 seeds
(seed changes the model init, batch order and augmentation draws; the split is fixed). Prints a table
(mean, std, per-seed), training images/s, and writes ``proxy_sensitivity.csv``.

Usage: ``python benchmarks/proxy_sensitivity.py [--seeds 3] [--epochs 8] [--out benchmarks/out]``
(about 15 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from trainers.data import load_dataset, make_splits
from trainers.proxy import ProxyConfig, ProxyData, train_proxy

ARMS = {  # name -> (policy after the base augmentation, base crop+flip on?)
    "none": (None, False),
    "crop+flip": (None, True),
    "crop+flip + RandAugment(2, 9)": ("randaugment", True),
    "crop+flip + TrivialAugmentWide": ("trivialaugment_wide", True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="cifar10-jpeg")
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--val", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=ProxyConfig().epochs)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    data = load_dataset(args.data)
    splits = make_splits(data, train_size=args.train, val_size=args.val, seed=0)
    proxy_data = ProxyData.from_dataset(data, splits)
    rows = []
    for name, (policy, base) in ARMS.items():
        for seed in range(args.seeds):
            config = ProxyConfig(epochs=args.epochs, base_augment=base, seed=seed)
            t0 = time.perf_counter()
            result = train_proxy(policy, proxy_data, config)
            rows.append({"policy": name, "seed": seed, "val_acc": result.final_val_acc,
                         "images_per_s": sum(h.images_per_s for h in result.history) / len(result.history),
                         "seconds": time.perf_counter() - t0})
            print(f"{name:32s} seed {seed}: val_acc {result.final_val_acc:.4f} ({rows[-1]['seconds']:.0f} s)",
                  flush=True)
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "proxy_sensitivity.csv", index=False)
    summary = table.groupby("policy", sort=False).agg(
        mean=("val_acc", "mean"), std=("val_acc", "std"), images_per_s=("images_per_s", "mean"),
        seconds=("seconds", "mean"))
    print(f"\n{args.train} train / {args.val} val images, ProxyConfig(epochs={args.epochs}), "
          f"{args.seeds} seeds, torch threads {torch.get_num_threads()}")
    print(summary.round(4).to_string())


if __name__ == "__main__":
    main()
