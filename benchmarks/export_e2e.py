"""Does the native torchvision export train as well as our Augmenter? Same model, data and seeds, two paths.

For each policy (default: RandAugment(2, 9) and the searched winner ``docs/results/search_wins_best_policy.json``)
and each seed, the same ProxyCNN (same initial weights: ``ProxyConfig.build`` from the seed) is trained on the
same labelled images for the same epochs, batch size, learning-rate schedule and normalisation, then scored
once on held-out test images that no run trains on:

* ``augmenter``: the normal path, ``trainers.proxy.train_proxy``: crop+flip then the policy through our batched
  :class:`~search_spaces.Augmenter`, inside ``trainers.engine.fit``.
* ``torchvision``: the native torchvision v2 export (``search_spaces.export.to_torchvision``: crop+flip's export, then
  the policy's) applied per image in a ``torch.utils.data.DataLoader`` (``--workers`` 0 or 1), in the plain
  PyTorch loop a user of the exported file writes, built from the engine's own pieces (``make_optimizer``,
  ``schedule_factor``, ``default_loss``, ``channel_stats``, ``evaluate``) so that only the augmentation path
  and the batch order differ.

Data: the shared 50,000-image CIFAR-10 zip, one stratified split (seed 0): ``--train-size`` labelled images and
``--test-size`` disjoint test images (as ``benchmarks/search_wins.py``). Every finished run appends a row to
``<out>/runs.csv`` (policy, path, seed, test accuracy, seconds); a rerun skips the rows it finds. The summary
(``<out>/export_e2e.csv`` / ``.md``; with ``--publish`` also ``docs/results/``): mean test accuracy per policy and
path (std, 95% t-interval) and the paired difference torchvision - augmenter per policy (mean over seeds and its
95% t-interval).

Usage (real numbers; about 25 minutes on 2 CPU cores): ``python benchmarks/export_e2e.py --publish``.
Smoke test: ``python benchmarks/export_e2e.py --seeds 1 --epochs 1 --train-size 256 --test-size 256
--out /tmp/e2e_smoke``.
"""

from __future__ import annotations

import argparse
import math
import platform
import shutil
import time
from pathlib import Path

import pandas as pd
import torch
from _summary import interval_table, markdown  # benchmarks/ (the script folder, on sys.path)
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from policy_search.race import paired_interval
from search_spaces.export import to_torchvision
from trainers.data import load_dataset, make_splits
from trainers.engine import channel_stats, default_loss, evaluate, make_optimizer, schedule_factor, select_device
from trainers.proxy import ProxyConfig, ProxyData, train_proxy

DEFAULT_POLICIES = ["RandAugment(2, 9)=randaugment",
                    "searched (search_wins winner)=docs/results/search_wins_best_policy.json"]
PATHS = ("augmenter", "torchvision")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policy", action="append", default=[], metavar="NAME=POLICY",
                   help="a policy to compare: preset name or policy file (repeatable; default: RandAugment(2, 9) "
                        "and the search_wins winner)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (model init, batch order, augmentation)")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument("--test-size", type=int, default=10000)
    p.add_argument("--workers", type=int, default=0, choices=(0, 1), help="DataLoader workers of the torchvision path")
    p.add_argument("--dataset", default="cifar10-jpeg")
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/export_e2e"))
    p.add_argument("--publish", action="store_true", help="copy the summary to docs/results/export_e2e.csv/.md")
    args = p.parse_args()
    if min(args.seeds, args.width, args.epochs, args.train_size, args.test_size) < 1:
        p.error("--seeds, --width, --epochs, --train-size and --test-size must be positive")
    return args


def policies(args: argparse.Namespace) -> dict[str, str]:
    """Name -> policy spec (preset name or file)."""
    out = {}
    for spec in args.policy or DEFAULT_POLICIES:
        name, sep, policy = spec.rpartition("=")
        if not policy:
            raise SystemExit(f"error: --policy {spec!r}: expected NAME=POLICY or a preset name / policy file")
        out[name if sep else policy] = policy
    return out


def make_data(args: argparse.Namespace) -> ProxyData:
    """Labelled training images and the disjoint held-out test images (as ``val_*``), uint8 on the CPU."""
    data = load_dataset(args.dataset)
    splits = make_splits(data.labels, train_size=args.train_size, val_size=0, test_size=args.test_size, seed=0)
    assert not set(splits.train.tolist()) & set(splits.test.tolist())
    train, test = torch.as_tensor(splits.train), torch.as_tensor(splits.test)
    return ProxyData(data.images[train].contiguous(), data.labels[train].contiguous(),
                     data.images[test].contiguous(), data.labels[test].contiguous(), tuple(data.classes))


class ExportedImages(Dataset):
    """uint8 images ``(N, C, H, W)`` and labels, each image through ``transform`` (the exported policy) on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: v2.Transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.labels[i]


def train_torchvision(policy: str, data: ProxyData, cfg: ProxyConfig, device: torch.device,
                      workers: int) -> tuple[float, float]:
    """Train with the torchvision export in a DataLoader; (test accuracy, seconds)."""
    t0 = time.perf_counter()
    transform = v2.Compose([to_torchvision("crop_flip", seed=2 * cfg.seed),  # two streams: independent draws
                            to_torchvision(policy, seed=2 * cfg.seed + 1)])
    loader = DataLoader(ExportedImages(data.train_x, data.train_y, transform), batch_size=cfg.batch_size,
                        shuffle=True, drop_last=True, num_workers=workers, persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(cfg.seed))
    tc = cfg.train_config()
    model = cfg.build(data.num_classes, data.channels).to(device, memory_format=torch.channels_last)
    opt = make_optimizer(model, tc)
    mean, std = channel_stats(data.train_x)
    shift = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    scale = 1.0 / torch.tensor(std, device=device).view(1, -1, 1, 1)
    steps = len(loader)
    total = tc.epochs * steps
    for epoch in range(tc.epochs):
        model.train()
        loss_sum = torch.zeros((), device=device)
        for step, (xb, yb) in enumerate(loader):
            xb = ((xb.to(device).float() / 255.0 - shift) * scale).contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = tc.lr * schedule_factor(epoch * steps + step, total, tc)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and tc.amp):
                loss, _ = default_loss(model, xb, yb.to(device), tc.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().float()
        if not math.isfinite(float(loss_sum)):
            raise RuntimeError(f"torchvision path: non-finite training loss in epoch {epoch + 1}")
    acc, _ = evaluate(model, data.val_x, data.val_y, device=device, mean=mean, std=std, amp=tc.amp)
    return acc, time.perf_counter() - t0


def train_augmenter(policy: str, data: ProxyData, cfg: ProxyConfig, device: torch.device) -> tuple[float, float]:
    """The normal path (crop+flip, then the policy, through the Augmenter in ``fit``); (test accuracy, seconds)."""
    t0 = time.perf_counter()
    fit = train_proxy(policy, data, cfg, device=device)
    return float(fit.final_val_acc), time.perf_counter() - t0


def run_all(args: argparse.Namespace, pols: dict[str, str], data: ProxyData, device: torch.device) -> pd.DataFrame:
    path = args.out / "runs.csv"
    rows = pd.read_csv(path).to_dict("records") if path.is_file() else []
    budget = {"width": args.width, "epochs": args.epochs, "train_size": args.train_size, "test_size": args.test_size}
    for r in rows:
        if any(int(r[k]) != v for k, v in budget.items()):
            raise SystemExit(f"error: {path} holds runs of another budget ({ {k: r[k] for k in budget} }); "
                             "use another --out")
    done = {(r["policy"], r["path"], int(r["seed"])) for r in rows}
    for seed in range(args.seeds):  # seed-major: a partial run is already paired
        cfg = ProxyConfig(width=args.width, epochs=args.epochs, seed=seed, eval_every=args.epochs)
        for name, policy in pols.items():
            for which in PATHS:
                if (name, which, seed) in done:
                    continue
                if which == "augmenter":
                    acc, seconds = train_augmenter(policy, data, cfg, device)
                else:
                    acc, seconds = train_torchvision(policy, data, cfg, device, args.workers)
                rows.append({"policy": name, "path": which, "seed": seed, "test_acc": acc,
                             "seconds": round(seconds, 1), **budget})
                pd.DataFrame(rows).to_csv(path, index=False)
                print(f"{name:35s} {which:11s} seed {seed}: {acc:.4f} ({seconds:.0f} s)", flush=True)
    return pd.DataFrame(rows)


def summarise(args: argparse.Namespace, runs: pd.DataFrame, pols: dict[str, str], device: torch.device) -> str:
    runs = runs[runs["policy"].isin(list(pols))]
    table = interval_table(runs, ["policy", "path"], "test_acc", [(p, w) for p in pols for w in PATHS])
    diffs: dict[tuple[str, str], tuple[float, float, float, int]] = {}
    for name in pols:
        part = runs[runs["policy"] == name].pivot_table(index="seed", columns="path", values="test_acc")
        paired = part.dropna() if set(PATHS) <= set(part.columns) else part.iloc[0:0]
        d = (paired["torchvision"] - paired["augmenter"]).tolist() if len(paired) else []
        diffs[(name, "torchvision")] = (*paired_interval(d), len(d))
    table["diff"] = [diffs.get(i, (math.nan,) * 4)[0] for i in table.index]
    table["diff_low"] = [diffs.get(i, (math.nan,) * 4)[1] for i in table.index]
    table["diff_high"] = [diffs.get(i, (math.nan,) * 4)[2] for i in table.index]
    table["seconds"] = runs.groupby(["policy", "path"])["seconds"].mean().reindex(table.index)
    table.index.names = ["policy", "path"]
    table.to_csv(args.out / "export_e2e.csv")
    text = markdown(table, {"test acc (mean ± std)": "{mean:.4f} ± {std:.4f}",
                            "95% CI": "[{ci95_low:.4f}, {ci95_high:.4f}]",
                            "torchvision - augmenter (paired)": "{diff:+.4f}",
                            "95% CI of the difference": "[{diff_low:+.4f}, {diff_high:+.4f}]",
                            "seeds": "{n:.0f}", "s per run": "{seconds:.0f}"}, "policy / path")
    text = text.replace("[nan, nan]", "").replace("+nan", "").replace("[, ]", "").replace(" ± nan", "")
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else \
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    text += (f"\nProxyCNN width {args.width}, {args.epochs} epochs, batch 128, {args.train_size:,} labelled CIFAR-10 "
             f"images, test on {args.test_size:,} disjoint images (split seed 0); seeds 0..{args.seeds - 1}; "
             f"torchvision path: DataLoader with {args.workers} workers; {where}.\n")
    (args.out / "export_e2e.md").write_text(text)
    print(text)
    return text


def main() -> None:
    args = parse()
    args.out.mkdir(parents=True, exist_ok=True)
    device = select_device(args.device)
    pols = policies(args)
    data = make_data(args)
    runs = run_all(args, pols, data, device)
    summarise(args, runs, pols, device)
    if args.publish:
        for suffix in ("csv", "md"):
            shutil.copy(args.out / f"export_e2e.{suffix}", Path("docs/results") / f"export_e2e.{suffix}")


if __name__ == "__main__":
    main()
