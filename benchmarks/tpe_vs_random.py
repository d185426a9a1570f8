"""TPE vs random search on the density-matching objective: best-so-far curves over 3 seeds (PNG + CSV).

Each (sampler, seed) is a full campaign (``policy_search.campaign.run_campaign``, density objective, the
autoaugment space unless ``--space``); the fold models depend only on the seed, so both samplers score
policies against the same models. Writes ``tpe_vs_random.csv`` (sampler, seed, trial, value, best_so_far,
elapsed_s: seconds from the campaign's start to the trial's completion, fold-model training included) and
``tpe_vs_random.png`` (mean best-so-far per sampler against trials and against wall time, min/max band)
into ``--out``.

Usage (from the project root): ``python benchmarks/tpe_vs_random.py [--trials 60] [--seeds 0 1 2]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import ray  # noqa: E402

from policy_search.campaign import load_study, run_campaign  # noqa: E402
from policy_search.config import load_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--space", default="autoaugment")
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the CSV in --out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        plot(pd.read_csv(args.out / "tpe_vs_random.csv"), args.out / "tpe_vs_random.png")
        return
    rows = []
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for sampler in ("tpe", "random"):
                t0, start = time.monotonic(), dt.datetime.now()
                cfg = load_config(overrides={
                    "name": f"{sampler}-{seed}", "output": tmp, "objective": "density", "race.enabled": False,
                    "space": args.space,
                    "sampler": sampler, "num_trials": args.trials, "seed": seed, "baselines": [],
                    "train_size": args.train_size, "val_size": 100, "proxy.epochs": 4, "proxy.width": 16})
                run_campaign(cfg)
                done = sorted((t for t in load_study(cfg).trials if t.datetime_complete),
                              key=lambda t: t.datetime_complete)
                best = float("-inf")
                for i, t in enumerate(done):
                    value = t.value if t.value is not None else float("-inf")
                    best = max(best, value)
                    rows.append({"sampler": sampler, "seed": seed, "trial": i, "value": value, "best_so_far": best,
                                 "elapsed_s": (t.datetime_complete - start).total_seconds()})
                values = pd.Series([r["value"] for r in rows if r["sampler"] == sampler and r["seed"] == seed])
                print(f"{sampler} seed {seed}: best {values.max():.4f} in {time.monotonic() - t0:.0f} s", flush=True)
    ray.shutdown()
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "tpe_vs_random.csv", index=False)
    plot(table, args.out / "tpe_vs_random.png")
    print(table.groupby(["sampler", "seed"])["best_so_far"].last().unstack().round(4))


def plot(table: pd.DataFrame, path: Path) -> None:
    """Mean best-so-far per sampler (min/max band over seeds) against trials and against wall time; the time
    curve starts once every seed has completed a trial."""
    fig, (ax, ax_t) = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    grid = np.linspace(0, table["elapsed_s"].max(), 200)
    for sampler, part in table.groupby("sampler"):
        label = f"{sampler} (mean of {part['seed'].nunique()} seeds)"
        stats = part.groupby("trial")["best_so_far"].agg(["mean", "min", "max"])
        ax.plot(stats.index + 1, stats["mean"], label=label)
        ax.fill_between(stats.index + 1, stats["min"], stats["max"], alpha=0.2)
        curves = np.array([_step(g["elapsed_s"].to_numpy(), g["best_so_far"].to_numpy(), grid)
                           for _, g in part.groupby("seed")])
        ax_t.plot(grid, curves.mean(0), label=label)  # nan until every seed has a first result
        ax_t.fill_between(grid, curves.min(0), curves.max(0), alpha=0.2)
    ax.set(xlabel="trials completed", ylabel="best density-matching score so far")
    ax_t.set(xlabel="wall time since campaign start (s)")
    for a in (ax, ax_t):
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _step(t: np.ndarray, best: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Best-so-far as a step function of time sampled on ``grid`` (nan before the first completion)."""
    idx = np.searchsorted(t, grid, side="right") - 1
    return np.where(idx >= 0, best[np.clip(idx, 0, None)], np.nan)


if __name__ == "__main__":
    main()
