"""Campaign scale: a 500-trial density-objective campaign with a tiny model, driver memory sampled every second.

The production path end to end (``policy_search.campaign.run_campaign``: Ray Tune, OptunaSearch + TPE on
SQLite, the fold models of density matching, ``write_results``) with a ProxyCNN of width 8. A thread in the
driver samples the driver's resident set size (psutil when installed, else ``/proc/self/status``) and the
number of finished trials once a second. Reports RSS at the start, when the first trial finished, the peak
and the end, the growth per 100 trials over the trial phase (least squares) and trials per minute.

Writes ``campaign_scale.csv`` (t_s, rss_mib, trials_done) and ``campaign_scale.png`` into ``--out`` (default
``benchmarks/out``, not committed) and, with ``--publish``, copies them to ``docs/results/`` (what the README
cites).

Usage (from the project root): ``python benchmarks/campaign_scale.py [--trials 500] [--concurrent 2] [--publish]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from policy_search.campaign import Progress, run_campaign
from policy_search.config import load_config

MIB = 2**20


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of ``pid`` (default: this process) in bytes."""
    try:
        import psutil

        return int(psutil.Process(pid or os.getpid()).memory_info().rss)
    except ImportError:
        with open(f"/proc/{pid or 'self'}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read the resident set size (no psutil, no /proc)")


class MemorySampler:
    """Samples this process's RSS and a progress counter every ``interval`` seconds in a daemon thread."""

    def __init__(self, interval: float = 1.0, echo_every: int = 60) -> None:
        self.interval, self.done, self.echo_every = interval, 0, echo_every
        self.rows: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def on_progress(self, progress: Progress) -> None:
        """``run_campaign``'s progress callback: remember how many trials have finished."""
        self.done = progress.done

    def _sample(self) -> None:
        self.rows.append((time.monotonic() - self._t0, rss_bytes() / MIB, self.done))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()
            if self.echo_every and len(self.rows) % self.echo_every == 0:
                t, rss, done = self.rows[-1]
                print(f"{t:7.0f} s  rss {rss:7.1f} MiB  trials done {done}", flush=True)

    def __enter__(self) -> MemorySampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def frame(self) -> pd.DataFrame:
        """The samples as a DataFrame (t_s, rss_mib, trials_done)."""
        return pd.DataFrame(self.rows, columns=["t_s", "rss_mib", "trials_done"])


def summarise(df: pd.DataFrame, trials: int, wall_s: float) -> dict[str, float]:
    """Start / first-trial / peak / end RSS, growth per 100 trials over the trial phase, trials per minute (trial
    phase: first to last finished trial; overall: including Ray start, fold models and writing results)."""
    phase = df[df["trials_done"] >= 1]
    first = phase.iloc[0] if len(phase) else df.iloc[0]
    slope = 0.0
    if phase["trials_done"].nunique() > 1:
        slope = float(np.polyfit(phase["trials_done"], phase["rss_mib"], 1)[0]) * 100
    finished = df[df["trials_done"] >= trials]
    trial_s = float((finished["t_s"].iloc[0] if len(finished) else df["t_s"].iloc[-1]) - first["t_s"])
    return {"trials": trials, "wall_s": round(wall_s, 1), "start_rss_mib": round(df["rss_mib"].iloc[0], 1),
            "first_trial_rss_mib": round(float(first["rss_mib"]), 1), "peak_rss_mib": round(df["rss_mib"].max(), 1),
            "end_rss_mib": round(df["rss_mib"].iloc[-1], 1), "growth_mib_per_100_trials": round(slope, 2),
            "trials_per_minute": round(60 * (trials - 1) / trial_s, 1) if trial_s > 0 else float("nan"),
            "trials_per_minute_overall": round(60 * trials / wall_s, 1)}


def plot(df: pd.DataFrame, path: Path, title: str) -> Path:
    """RSS over time, finished trials on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(df["t_s"], df["rss_mib"], c="tab:blue", label="driver RSS")
    ax.set_xlabel("seconds")
    ax.set_ylabel("driver RSS (MiB)", color="tab:blue")
    ax.set_ylim(0, df["rss_mib"].max() * 1.15)
    twin = ax.twinx()
    twin.plot(df["t_s"], df["trials_done"], c="tab:orange", label="trials done")
    twin.set_ylabel("trials finished", color="tab:orange")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    parser.add_argument("--publish", action="store_true", help="copy the CSV and plot to docs/results/")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(overrides={
            "name": "scale", "output": tmp, "objective": "density", "race.enabled": False,
            "space": "autoaugment", "sampler": "tpe",
            "num_trials": args.trials, "max_concurrent": args.concurrent, "num_cpus": os.cpu_count(),
            "train_size": args.train_size, "val_size": 100, "proxy.width": 8, "proxy.epochs": 2})
        t0 = time.monotonic()
        with MemorySampler() as sampler:
            result = run_campaign(cfg, on_progress=sampler.on_progress)
        wall_s = time.monotonic() - t0
    df = sampler.frame()
    n = sum(result.counts.values())
    stats = summarise(df, n, wall_s)
    df.to_csv(args.out / "campaign_scale.csv", index=False)
    title = (f"{n}-trial density campaign, ProxyCNN width 8, {os.cpu_count()} CPUs, "
             f"{dt.date.today().isoformat()}")
    plot(df, args.out / "campaign_scale.png", title)
    if args.publish:
        for name in ("campaign_scale.csv", "campaign_scale.png"):
            shutil.copy(args.out / name, Path("docs/results") / name)
    print(f"{title} ({platform.node()})")
    print(f"counts {result.counts}")
    width = max(len(k) for k in stats)
    for key, value in stats.items():
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    main()
