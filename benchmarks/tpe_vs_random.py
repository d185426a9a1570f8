"""TPE vs random search on the density-matching objective: best-so-far curves over 3 seeds (PNG + CSV).

Each (sampler, seed) is a full campaign (``policy_search.campaign.run_campaign``, density objective, the
autoaugment space unless ``--space``); the fold models depend only on the seed, so both samplers score
policies against the same models. Writes ``tpe_vs_random.csv`` (sampler, seed, trial, value, best_so_far)
and ``tpe_vs_random.png`` (mean best-so-far per sampler, min/max band) into ``--out``.

Usage (from the project root): ``python benchmarks/tpe_vs_random.py [--trials 24] [--seeds 0 1 2]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import ray  # noqa: E402

from policy_search.campaign import run_campaign  # noqa: E402
from policy_search.config import load_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--space", default="autoaugment")
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for sampler in ("tpe", "random"):
                t0 = time.monotonic()
                cfg = load_config(overrides={
                    "name": f"{sampler}-{seed}", "output": tmp, "objective": "density", "space": args.space,
                    "sampler": sampler, "num_trials": args.trials, "seed": seed, "baselines": [],
                    "train_size": args.train_size, "val_size": 100, "proxy.epochs": 4, "proxy.width": 16})
                run_campaign(cfg)
                df = pd.read_csv(cfg.folder / "trials.csv").sort_values("number")
                values = df["val_acc"].fillna(float("-inf"))
                for i, (value, best) in enumerate(zip(values, values.cummax(), strict=True)):
                    rows.append({"sampler": sampler, "seed": seed, "trial": i, "value": value, "best_so_far": best})
                print(f"{sampler} seed {seed}: best {values.max():.4f} in {time.monotonic() - t0:.0f} s", flush=True)
    ray.shutdown()
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "tpe_vs_random.csv", index=False)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for sampler, part in table.groupby("sampler"):
        stats = part.groupby("trial")["best_so_far"].agg(["mean", "min", "max"])
        ax.plot(stats.index, stats["mean"], label=f"{sampler} (mean of {part['seed'].nunique()} seeds)")
        ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.2)
    ax.set_xlabel("trial")
    ax.set_ylabel("best density-matching score so far")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "tpe_vs_random.png", dpi=100)
    print(table.groupby(["sampler", "seed"])["best_so_far"].last().unstack().round(4))


if __name__ == "__main__":
    main()
