"""Does the search beat the fixed recipes on data it never saw? A campaign as a user runs it, then held-out test.

Phases (each resumable: a rerun keeps finished rows and skips them):

1. Data, from the 50,000-image CIFAR-10 zip (seed 0, stratified): 4,000 labelled training images and 10,000
   validation images (written as one ``.npz``: the only images the campaign can see) and 10,000 *test*
   images that no search, race or choice ever touches.
2. One campaign on the ``.npz``: the default objective (``finetune``: late-phase scoring from a shared
   checkpoint), the ``randaugment_plus`` space, the target recipe (ProxyCNN width 32, 30 epochs), then its
   confirmation race (top 3 against crop+flip, RandAugment(2, 9), TrivialAugmentWide and AutoAugment
   CIFAR-10 on paired seeds, on the 10,000 validation images). Wall time and machine are recorded.
3. Final: every row trains the target recipe on the campaign's 4,000 training images and is scored once on
   the 10,000 test images: the campaign's winner (``best_policy.json``; if a baseline won, it is that
   baseline), the search's best trial (``top_k/rank1.json``), and the four presets. Seeds 100.. (disjoint from
   the search seed 0 and the race seeds 1..S); ``--seeds`` for the searched rows and RandAugment(2, 9),
   ``--preset-seeds`` for the other presets; seed-major order, so a partial run is already paired.
4. Table: mean, std, 95% t-interval per row, and the paired difference of each searched row with
   RandAugment(2, 9) (95% t-interval over the seeds both ran).

Outputs in ``--out`` (default ``benchmarks/out/search_wins``) and, with ``--publish``, copied to
``docs/results/search_wins*``.
Usage (2-core CPU, about 1.5 hours): ``python benchmarks/search_wins.py --publish``
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _summary import bar_chart, interval_table, markdown  # benchmarks/ (the script folder, on sys.path)

from policy_search.campaign import resume_campaign, run_campaign
from policy_search.config import load_config
from policy_search.race import paired_interval
from search_spaces import load_policy_or_schedule
from trainers.data import Splits, load_dataset, make_splits
from trainers.engine import select_device
from trainers.proxy import ProxyConfig, ProxyData, train_proxy

PRESETS = {"crop+flip": None, "RandAugment(2, 9)": "randaugment", "TrivialAugmentWide": "trivialaugment_wide",
           "AutoAugment CIFAR-10": "autoaugment_cifar10"}
REFERENCE = "RandAugment(2, 9)"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="cifar10-jpeg")
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--val", type=int, default=10000)
    p.add_argument("--test", type=int, default=10000)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--objective", default="finetune")
    p.add_argument("--race-seeds", type=int, default=2)
    p.add_argument("--seeds", type=int, default=5, help="final seeds for the searched rows and RandAugment(2, 9)")
    p.add_argument("--preset-seeds", type=int, default=3, help="final seeds for the other presets")
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/search_wins"))
    p.add_argument("--publish", action="store_true", help="copy the tables and plot to docs/results/")
    return p.parse_args()


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import os

    return f"{os.cpu_count()}-core CPU ({platform.machine()}), no GPU"


def make_data(args: argparse.Namespace) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """The campaign's ``.npz`` (train + validation only) and the held-out test tensors."""
    data = load_dataset(args.dataset)
    splits = make_splits(data.labels, train_size=args.train, val_size=args.val, test_size=args.test, seed=0)
    npz = args.out / "searchable.npz"
    if not npz.is_file():
        idx = torch.as_tensor(np.concatenate([splits.train, splits.val]))
        np.savez(npz, x=data.images[idx].numpy(), y=data.labels[idx].numpy(), classes=np.array(data.classes))
    test = torch.as_tensor(splits.test)
    assert not set(splits.test.tolist()) & set(np.concatenate([splits.train, splits.val]).tolist())
    return npz, data.images[test], data.labels[test]


def campaign_overrides(args: argparse.Namespace, npz: Path) -> dict:
    return {"name": "search-wins", "dataset": str(npz.resolve()), "output": str((args.out / "campaigns").resolve()),
            "train_size": args.train, "val_size": args.val, "seed": 0, "objective": args.objective,
            "space": "randaugment_plus", "num_trials": args.trials, "max_concurrent": 2, "resources.cpu": 1,
            "target.width": args.width, "target.epochs": args.epochs, "race.top_k": 3,
            "race.seeds": args.race_seeds, "num_cpus": 2}


def run_search(args: argparse.Namespace, npz: Path) -> Path:
    cfg = load_config(overrides=campaign_overrides(args, npz))
    folder = cfg.folder
    if (folder / "summary.json").is_file():
        return folder
    t0 = time.monotonic()
    if (folder / "config.yaml").is_file():
        resume_campaign(folder)
    else:
        run_campaign(cfg)
    log = args.out / "campaign_wall.json"
    prior = json.loads(log.read_text())["wall_s"] if log.is_file() else 0.0
    log.write_text(json.dumps({"wall_s": prior + time.monotonic() - t0, "machine": machine()}))
    return folder


def conditions(folder: Path) -> dict[str, object]:
    summary = json.loads((folder / "summary.json").read_text())
    winner = summary["race"]["winner"]
    out = {f"campaign winner ({winner})": load_policy_or_schedule(folder / "best_policy.json")}
    if summary["race"]["winner_kind"] == "searched" and winner == "rank1":
        out = {"campaign winner (rank1)": load_policy_or_schedule(folder / "best_policy.json")}
    else:
        out["search's best trial (rank1)"] = load_policy_or_schedule(folder / "top_k" / "rank1.json")
    if summary["race"]["winner_kind"] == "baseline":  # the winner row is that preset: train it once, as a preset
        out.pop(f"campaign winner ({winner})")
    out.update({k: load_policy_or_schedule(v) if v else None for k, v in PRESETS.items()})
    return out


def run_final(args: argparse.Namespace, folder: Path, conds: dict, test_x: torch.Tensor, test_y: torch.Tensor,
              device: torch.device) -> pd.DataFrame:
    searchable = load_dataset(str((args.out / "searchable.npz").resolve()))
    splits = Splits.load(folder / "splits.json")  # the campaign's own 4,000 training images
    train = torch.as_tensor(splits.train)
    data = ProxyData(searchable.images[train], searchable.labels[train], test_x, test_y, tuple(searchable.classes))
    path = args.out / "runs.csv"
    rows = pd.read_csv(path).to_dict("records") if path.is_file() else []
    done = {(r["condition"], int(r["seed"])) for r in rows}
    many = [c for c in conds if c not in PRESETS or c == REFERENCE]
    for s in range(args.seeds):
        seed = 100 + s
        for name, policy in conds.items():
            if (name, seed) in done or (name not in many and s >= args.preset_seeds):
                continue
            cfg = ProxyConfig(width=args.width, epochs=args.epochs, seed=seed, eval_every=args.epochs)
            fit = train_proxy(policy, data, cfg, device=device)
            rows.append({"condition": name, "seed": seed, "test_acc": fit.final_val_acc,
                         "seconds": round(fit.seconds, 1)})
            pd.DataFrame(rows).to_csv(path, index=False)
            print(f"{name:40s} seed {seed}: {fit.final_val_acc:.4f} ({fit.seconds:.0f} s)", flush=True)
    return pd.DataFrame(rows)


def summarise(args: argparse.Namespace, folder: Path, runs: pd.DataFrame, order: list[str]) -> str:
    table = interval_table(runs, "condition", "test_acc", order)
    ref = runs[runs["condition"] == REFERENCE].set_index("seed")["test_acc"]
    diffs, lows, highs = [], [], []
    for cond in table.index:
        a = runs[runs["condition"] == cond].set_index("seed")["test_acc"]
        common = a.index.intersection(ref.index)
        m, lo, hi = paired_interval((a[common] - ref[common]).tolist()) if cond != REFERENCE and len(common) \
            else (math.nan,) * 3
        diffs.append(m), lows.append(lo), highs.append(hi)
    table["vs_ra29"], table["vs_ra29_low"], table["vs_ra29_high"] = diffs, lows, highs
    table.index.name = "condition"
    table.to_csv(args.out / "search_wins.csv")
    wall = json.loads((args.out / "campaign_wall.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    text = markdown(table, {"test acc (mean ± std)": "{mean:.4f} ± {std:.4f}",
                            "95% CI": "[{ci95_low:.4f}, {ci95_high:.4f}]",
                            "paired vs RandAugment(2, 9), points": "{vs_ra29:+.4f}",
                            "95% CI of the difference": "[{vs_ra29_low:+.4f}, {vs_ra29_high:+.4f}]",
                            "seeds": "{n:.0f}"}, "condition")
    text = text.replace("+nan", "").replace("[, ]", "")
    race = pd.read_csv(folder / "race.csv")
    text += (f"\nCampaign: {summary['num_trials']} {args.objective} trials + confirmation race (seeds "
             f"{summary['race']['seeds']}), {wall['wall_s'] / 60:.0f} min wall on {wall['machine']}. "
             f"Race verdict: {summary['race']['verdict']}\n\nRace (validation, {args.val:,} images):\n\n")
    text += "| entry | mean | vs best baseline | 95% CI |\n|---|---|---|---|\n"
    for _, r in race.iterrows():
        ci = "" if pd.isna(r["ci_low"]) else f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]"
        vs = "" if pd.isna(r["vs_best_baseline"]) else f"{100 * r['vs_best_baseline']:+.2f}"
        text += f"| {r['label']} | {r['mean']:.4f} | {vs} | {ci} |\n"
    (args.out / "search_wins.md").write_text(text)
    bar_chart(table, args.out / "search_wins.png",
              f"held-out test accuracy ({args.test:,} images), mean and 95% CI",
              f"ProxyCNN w{args.width}, {args.epochs} epochs, {args.train:,} labelled CIFAR-10 images",
              highlight=("campaign", "search"))
    print(text)
    return text


def main() -> None:
    args = parse()
    args.out.mkdir(parents=True, exist_ok=True)
    device = select_device(args.device)
    npz, test_x, test_y = make_data(args)
    folder = run_search(args, npz)
    conds = conditions(folder)
    runs = run_final(args, folder, conds, test_x, test_y, device)
    summarise(args, folder, runs, list(conds))
    if args.publish:
        dest = Path("docs/results")
        for name in ("search_wins.csv", "search_wins.md", "search_wins.png", "runs.csv"):
            shutil.copy(args.out / name, dest / ("search_wins_runs.csv" if name == "runs.csv" else name))
        for name in ("race.csv", "race_runs.csv", "trials.csv", "best_policy.json"):
            shutil.copy(folder / name, dest / f"search_wins_{name}")


if __name__ == "__main__":
    main()
