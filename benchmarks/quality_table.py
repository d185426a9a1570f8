"""The quality table: fixed recipes vs searched policies on reduced CIFAR-10, same model, same budget.

Phases (each resumable: finished rows in the CSVs are kept and skipped on a re-run):

1. Data: ``--labelled`` (4,000) stratified images from the dataset form the labelled set (written as an
   ``.npz`` so campaigns see only it); ``--test`` (10,000) further images form the held-out test split
   that no search touches.
2. Campaigns on the labelled set only: the density objective (Fast AutoAugment's density matching) and the
   proxy objective (short proxy trainings, ASHA), both in the AutoAugment space, and a PBT campaign (PBA's
   space and explore step) whose best schedule is replayed stretched to the final budget. Their trials,
   wall time and machine are recorded next to their rows.
3. Final training: every condition (no augmentation, crop+flip, crop+flip+cutout, RandAugment(2, 9),
   TrivialAugmentWide, AutoAugment CIFAR-10, the two searched policies, any ``--extra NAME=policy.json``,
   and two more RandAugment settings for the rank study) trains the same model on all labelled images for
   the same epochs, ``--seeds`` seeds each, and is scored once on the test split.
4. Rank agreement: each policy is also scored by the cheap objectives (density score with the campaign's
   fold models; proxy accuracy with the campaign's proxy budget) and Spearman correlations with the
   held-out accuracy are reported.

Outputs in ``--out`` (default ``benchmarks/out/quality``): ``runs.csv`` (one row per condition and seed),
``quality_table.csv`` / ``quality_table.md`` (mean, std, 95% t-interval), ``quality_table.png``,
``campaigns.csv``, ``rank_agreement.csv`` / ``rank_agreement.md``.

Usage (2-core CPU, about an hour): ``python benchmarks/quality_table.py``
Full scale on a GPU: ``python benchmarks/quality_table.py --model resnet18 --epochs 200 --batch-size 256
--density-trials 200 --proxy-trials 100 --proxy-epochs 20 --device cuda``
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _summary import bar_chart, interval_table, markdown  # benchmarks/ (the script folder, on sys.path)
from scipy import stats

from policy_search.campaign import run_campaign
from policy_search.config import load_config
from search_spaces import Schedule, load_policy_or_schedule
from search_spaces.magnitudes import rand_augment
from trainers.data import load_dataset, make_splits
from trainers.engine import evaluate, fit, select_device
from trainers.proxy import DensityMatcher, ProxyConfig, ProxyData, build_augment, train_proxy

FIXED = {  # condition -> (crop+flip base, policy preset or None)
    "none": (False, None),
    "crop+flip": (True, None),
    "crop+flip+cutout": (False, "crop_flip_cutout"),
    "RandAugment(2, 9)": (True, "randaugment"),
    "TrivialAugmentWide": (True, "trivialaugment_wide"),
    "AutoAugment CIFAR-10": (True, "autoaugment_cifar10"),
}
RANK_EXTRAS = {"RandAugment(1, 5)": (1, 5), "RandAugment(3, 15)": (3, 15)}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="cifar10-jpeg")
    p.add_argument("--labelled", type=int, default=4000)
    p.add_argument("--test", type=int, default=10000)
    p.add_argument("--model", default="proxy")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--density-trials", type=int, default=100)
    p.add_argument("--proxy-trials", type=int, default=24)
    p.add_argument("--proxy-epochs", type=int, default=6)
    p.add_argument("--pbt-population", type=int, default=8)
    p.add_argument("--pbt-epochs", type=int, default=12)
    p.add_argument("--pbt-interval", type=int, default=2)
    p.add_argument("--pbt-init", nargs="+", default=["zero", "random"], choices=["zero", "random"])
    p.add_argument("--skip-pbt", action="store_true")
    p.add_argument("--extra", action="append", default=[], help="NAME=policy.json: another row (e.g. a PBT schedule)")
    p.add_argument("--skip-rank", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/quality"))
    return p.parse_args()


def make_data(args: argparse.Namespace) -> tuple[Path, ProxyData]:
    """The labelled set as an .npz (what the campaigns load) and labelled/test tensors for final training."""
    data = load_dataset(args.dataset)
    splits = make_splits(data.labels, train_size=args.labelled, val_size=0, test_size=args.test, seed=0)
    npz = args.out / "labelled.npz"
    if not npz.is_file():
        idx = torch.as_tensor(splits.train)
        np.savez(npz, x=data.images[idx].numpy(), y=data.labels[idx].numpy(), classes=np.array(data.classes))
    tr, te = torch.as_tensor(splits.train), torch.as_tensor(splits.test)
    return npz, ProxyData(data.images[tr], data.labels[tr], data.images[te], data.labels[te], tuple(data.classes))


def campaign_configs(args: argparse.Namespace, npz: Path) -> dict[str, dict]:
    common = {"dataset": str(npz.resolve()), "output": str((args.out / "campaigns").resolve()), "seed": 0,
              "space": "autoaugment", "sampler": "tpe", "baselines": [], "race.enabled": False,
              "train_size": args.labelled * 3 // 4, "val_size": args.labelled - args.labelled * 3 // 4,
              "max_concurrent": 2, "proxy.width": 16, "proxy.epochs": args.proxy_epochs}
    out = {
        "searched (density)": {**common, "name": "density", "objective": "density",
                               "num_trials": args.density_trials, "density_k": 2},
        "searched (proxy)": {**common, "name": "proxy", "objective": "proxy", "num_trials": args.proxy_trials},
    }
    for init in [] if args.skip_pbt else args.pbt_init:  # zero: PBA's start (no augmentation); random: uniform bins
        condition = "searched (PBT schedule)" if init == "zero" else f"searched (PBT schedule, {init} init)"
        out[condition] = {
            **common, "name": "pbt" if init == "zero" else f"pbt-{init}", "mode": "pbt", "objective": "proxy",
            "proxy.epochs": args.pbt_epochs, "pbt.population_size": args.pbt_population,
            "pbt.perturbation_interval": args.pbt_interval, "pbt.init": init}
    return out


def budget(cfg) -> str:
    """A campaign's search budget in words."""
    if cfg.mode == "pbt":
        return (f"PBT: {cfg.pbt.population_size} members x {cfg.proxy.epochs} epochs, perturbation every "
                f"{cfg.pbt.perturbation_interval}")
    return f"{cfg.num_trials} {cfg.objective} trials"


def run_campaigns(args: argparse.Namespace, npz: Path) -> pd.DataFrame:
    path = args.out / "campaigns.csv"
    done = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["condition"])
    rows = done.to_dict("records")
    for condition, overrides in campaign_configs(args, npz).items():
        if condition in set(done["condition"]):
            continue
        cfg = load_config(overrides=overrides)
        t0 = time.monotonic()
        result = run_campaign(cfg)
        best = result.files.get("best_policy") or result.files["best_schedule"]
        rows.append({"condition": condition, "policy": str(best), "objective": cfg.objective, "mode": cfg.mode,
                     "trials": cfg.num_trials if cfg.mode == "search" else cfg.pbt.population_size,
                     "budget": budget(cfg), "wall_s": round(time.monotonic() - t0),
                     "best_score": result.best_score, "machine": machine()})
        pd.DataFrame(rows).to_csv(path, index=False)
        print(f"campaign {condition}: best {result.best_score:.4f} in {rows[-1]['wall_s']} s", flush=True)
    return pd.DataFrame(rows)


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import os

    return f"{os.cpu_count()}-core CPU ({platform.machine()}), no GPU"


def conditions(args: argparse.Namespace, campaigns: pd.DataFrame) -> dict[str, tuple[bool, object]]:
    out: dict[str, tuple[bool, object]] = {k: (base, load_policy_or_schedule(p) if p else None)
                                           for k, (base, p) in FIXED.items()}
    for _, row in campaigns.iterrows():
        out[row["condition"]] = (True, load_policy_or_schedule(row["policy"]))
    for spec in args.extra:
        name, _, path = spec.partition("=")
        out[name] = (True, path)  # a policy or schedule file; build_augment loads it
    if not args.skip_rank:
        for name, (n, m) in RANK_EXTRAS.items():
            out[name] = (True, rand_augment(n, m))
    return out


def final_accuracy(policy: object, base: bool, data: ProxyData, args: argparse.Namespace, seed: int,
                   device: torch.device) -> tuple[float, float]:
    """Train the table's model on all labelled images; (test accuracy, seconds)."""
    cfg = ProxyConfig(model=args.model, width=args.width, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, seed=seed)
    model = cfg.build(data.num_classes, data.channels)
    result = fit(model, data.train_x, data.train_y, config=cfg.train_config(eval_every=args.epochs),
                 device=device, augment=build_augment(policy, base, epochs=args.epochs))  # schedules: stretched
    acc, _ = evaluate(model, data.val_x, data.val_y, device=device, mean=result.mean, std=result.std)
    return acc, result.seconds


def run_final(args: argparse.Namespace, conds: dict, data: ProxyData, device: torch.device) -> pd.DataFrame:
    path = args.out / "runs.csv"
    rows = pd.read_csv(path).to_dict("records") if path.is_file() else []
    done = {(r["condition"], r["seed"]) for r in rows}
    for seed in args.seeds:  # seed-major: a partial run still has every condition at the first seeds
        for name, (base, policy) in conds.items():
            if (name, seed) in done:
                continue
            acc, seconds = final_accuracy(policy, base, data, args, seed, device)
            rows.append({"condition": name, "seed": seed, "test_acc": acc, "seconds": round(seconds, 1)})
            pd.DataFrame(rows).to_csv(path, index=False)
            print(f"{name:28s} seed {seed}: {acc:.4f} ({seconds:.0f} s)", flush=True)
    return pd.DataFrame(rows)


def summarise(args: argparse.Namespace, runs: pd.DataFrame, campaigns: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    table = interval_table(runs, "condition", "test_acc", order)
    base = table.loc["crop+flip", "mean"] if "crop+flip" in table.index else np.nan
    table["vs_crop_flip"] = table["mean"] - base
    cost = {r["condition"]: f"{r['budget']}, {r['wall_s'] / 60:.0f} min, {r['machine']}"
            for _, r in campaigns.iterrows()}
    table["search_cost"] = [cost.get(c, "") for c in table.index]
    table.index.name = "condition"
    table.to_csv(args.out / "quality_table.csv")
    text = markdown(table, {"test acc (mean ± std)": "{mean:.4f} ± {std:.4f}",
                            "95% CI": "[{ci95_low:.4f}, {ci95_high:.4f}]", "vs crop+flip": "{vs_crop_flip:+.4f}",
                            "n": "{n:.0f}", "search cost": "{search_cost}"}, "condition")
    (args.out / "quality_table.md").write_text(text)
    bar_chart(table, args.out / "quality_table.png",
              f"held-out test accuracy ({args.test:,} images), mean and 95% CI over {len(args.seeds)} seeds",
              f"{args.model} w{args.width}, {args.epochs} epochs, {args.labelled:,} labelled CIFAR-10 images",
              highlight=("searched",))
    print(text)
    return table


def rank_agreement(args: argparse.Namespace, conds: dict, runs: pd.DataFrame, device: torch.device) -> None:
    """Spearman correlations between the cheap objectives and the held-out accuracy of each policy."""
    labelled = load_dataset(str((args.out / "labelled.npz").resolve()))
    cfg = load_config(overrides=campaign_configs(args, args.out / "labelled.npz")["searched (proxy)"])
    splits = make_splits(labelled.labels, train_size=cfg.train_size, val_size=cfg.val_size, seed=cfg.seed)
    pdata = ProxyData.from_dataset(labelled, splits)
    pcfg = ProxyConfig(width=cfg.proxy.width, epochs=cfg.proxy.epochs, batch_size=cfg.proxy.batch_size, seed=0)
    matcher = DensityMatcher.fit(pdata, pcfg, k=2, device=device)
    path = args.out / "rank_scores.csv"
    rows = pd.read_csv(path).to_dict("records") if path.is_file() else []
    done = {r["condition"] for r in rows}
    extras = {spec.partition("=")[0] for spec in args.extra}  # schedules: no single policy to score
    for name, (base, policy) in conds.items():
        if name in done or name in extras or isinstance(policy, Schedule):
            continue
        # density scores the policy alone (no crop+flip), as the campaign does
        density = matcher.score(policy, seed=0, device=device) if policy is not None else matcher.clean_accuracy
        proxy = train_proxy(policy, pdata, pcfg.model_copy(update={"base_augment": base}), device=device).final_val_acc
        rows.append({"condition": name, "density_score": density, "proxy_score": proxy})
        pd.DataFrame(rows).to_csv(path, index=False)
    scores = pd.DataFrame(rows).set_index("condition")
    scores["heldout_acc"] = runs.groupby("condition")["test_acc"].mean()
    scores = scores.dropna()
    out = []
    for a, b in (("density_score", "heldout_acc"), ("proxy_score", "heldout_acc"), ("density_score", "proxy_score")):
        rho, p = stats.spearmanr(scores[a], scores[b])
        out.append({"pair": f"{a} vs {b}", "spearman": rho, "p_value": p, "policies": len(scores)})
    table = pd.DataFrame(out)
    table.to_csv(args.out / "rank_agreement.csv", index=False)
    lines = ["| pair | Spearman ρ | p | policies |", "|---|---|---|---|"]
    lines += [f"| {r['pair']} | {r['spearman']:+.2f} | {r['p_value']:.2f} | {r['policies']} |" for r in out]
    lines += ["", "| policy | density score | proxy score | held-out acc |", "|---|---|---|---|"]
    lines += [f"| {c} | {r['density_score']:.4f} | {r['proxy_score']:.4f} | {r['heldout_acc']:.4f} |"
              for c, r in scores.iterrows()]
    (args.out / "rank_agreement.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(scores.round(4))


def main() -> None:
    args = parse()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=2))
    device = select_device(args.device)
    t0 = time.monotonic()
    npz, data = make_data(args)
    campaigns = run_campaigns(args, npz)
    conds = conditions(args, campaigns)
    runs = run_final(args, conds, data, device)
    summarise(args, runs, campaigns, list(conds))
    if not args.skip_rank:
        rank_agreement(args, conds, runs, device)
    print(f"total {time.monotonic() - t0:.0f} s on {machine()}")


if __name__ == "__main__":
    main()
