"""Campaign overhead: trials per minute through the real Tuner/OptunaSearch/ASHA/SQLite setup, no-op trainable.

Everything but the training is the production path (``policy_search.campaign.make_tuner``): the study in SQLite,
OptunaSearch + TPE, ASHA, Tune's experiment snapshots, one Ray worker process per trial.

Usage (from the project root): ``python benchmarks/campaign_overhead.py [--trials 40] [--concurrent 2]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import ray
from ray import tune

from policy_search.campaign import make_tuner, ray_session
from policy_search.config import load_config


def noop(config: dict) -> None:
    """Report once, immediately (what is left is the campaign machinery)."""
    tune.report({"val_acc": float(config["magnitude"]) / 30.0, "epoch": 1,
                 "node_id": ray.get_runtime_context().get_node_id()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--concurrent", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(overrides={"name": "overhead", "output": out, "num_trials": args.trials,
                                     "max_concurrent": args.concurrent, "proxy.epochs": 1, "objective": "proxy",
                                     "space": "randaugment"})
        cfg.folder.mkdir(parents=True)
        t0 = time.monotonic()
        with ray_session(cfg):
            t1 = time.monotonic()
            grid = make_tuner(cfg, tune.with_resources(noop, {"cpu": cfg.resources.cpu})).fit()
            t2 = time.monotonic()
    fit_s = t2 - t1
    print(json.dumps({"trials": len(grid), "errors": grid.num_errors, "concurrent": args.concurrent,
                      "ray_start_s": round(t1 - t0, 2), "fit_s": round(fit_s, 2),
                      "trials_per_minute": round(60 * len(grid) / fit_s, 1),
                      "seconds_per_trial": round(fit_s / len(grid), 3)}))


if __name__ == "__main__":
    main()
