"""Does a policy help in the full pipelines? Each pipeline at one fixed budget, crop+flip alone against crop+flip
plus a policy, on a held-out test split, several seeds.

* transfer: LP-FT from the bundled ImageNet EfficientNet-Lite0 onto the CIFAR-10 sample (the policy acts in
  the fine-tune stage; the probe trains on cached features);
* distill: a ProxyCNN width-32 teacher trained in the run with the condition's augmentation, distilled
  (T = 4, alpha = 0.9) into a width-16 student that sees the same augmented batches;
* self-train: Noisy Student on CIFAR-10 with 4,000 labels and an unlabelled pool from the rest of
  ``../shared/data/cifar10-train-jpeg.zip``, two iterations, width-16 teacher and students; the policy is
  the students' input noise (and the first teacher's augmentation).

A seed changes the splits, initialisation, batch order and augmentation draws; both conditions of a seed
share the splits. Rows already in ``runs.csv`` are kept and skipped on a re-run.

Outputs in ``--out`` (default ``benchmarks/out/pipelines``): ``runs.csv`` (pipeline, condition, seed, test
accuracy and the pipeline's other numbers), ``pipelines.csv`` / ``pipelines.md`` (mean, std, 95% interval,
difference to crop+flip) and ``pipelines.png``.

Usage (2-core CPU, about 30 minutes): ``python benchmarks/pipelines.py``; a searched policy as a third
condition: ``--policy searched=results/quickstart/best_policy.json`` (repeatable).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from _summary import bar_chart, interval_table, markdown  # benchmarks/ (the script folder, on sys.path)

from trainers.pipelines.distill import DistillConfig, run_distill
from trainers.pipelines.self_train import SelfTrainConfig, run_self_train
from trainers.pipelines.transfer import TransferConfig, run_transfer

BUDGETS: dict[str, dict[str, Any]] = {  # the fixed budget of each pipeline (the same for every condition)
    "transfer": {"train_size": 500, "val_size": 200, "test_size": 1000, "approach": "lp_ft", "probe_epochs": 10,
                 "finetune_epochs": 3, "image_size": 48, "batch_size": 32, "num_threads": 1},
    "distill": {"train_size": 2000, "val_size": 500, "test_size": 1000, "teacher_epochs": 15, "epochs": 15},
    "self-train": {"dataset": "cifar10-jpeg", "train_size": 4000, "val_size": 1000, "test_size": 5000,
                   "unlabeled_size": 8000, "teacher_epochs": 12, "epochs": 12, "iterations": 2},
}
RUNNERS = {"transfer": (TransferConfig, run_transfer), "distill": (DistillConfig, run_distill),
           "self-train": (SelfTrainConfig, run_self_train)}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipelines", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--policy", action="append", default=[], metavar="NAME=POLICY",
                   help="a condition: preset name or policy file (default: randaugment)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/pipelines"))
    return p.parse_args()


def conditions(args: argparse.Namespace) -> dict[str, str | None]:
    """Condition name -> policy (None: crop+flip only)."""
    out: dict[str, str | None] = {"crop+flip": None}
    for spec in args.policy or ["crop+flip + RandAugment(2, 9)=randaugment"]:
        name, sep, policy = spec.rpartition("=")
        out[name if sep else f"crop+flip + {policy}"] = policy
    return out


def run_one(pipeline: str, policy: str | None, seed: int, device: str | None) -> dict[str, Any]:
    """One pipeline run in a scratch folder; the numbers of its final.json that the table reports."""
    config_cls, run = RUNNERS[pipeline]
    config = config_cls(**BUDGETS[pipeline], policy=policy, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        final = run(config, output=tmp, name="run", device=device)
    row = {"test_acc": final["test_acc"]}
    if pipeline == "distill":
        row["teacher_test_acc"] = final["teacher_test_acc"]
    if pipeline == "self-train":
        row["teacher_test_acc"] = final["teacher_test_acc"]
        row["pseudo_acc"] = final["iterations"][0].get("pseudo_acc")
        row["kept_fraction"] = final["iterations"][0].get("kept_fraction")
    if pipeline == "transfer":
        row["probe_val_acc"] = final["stages"]["probe"]["final_val_acc"]
    return row


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{os.cpu_count()}-core CPU ({platform.machine()}), no GPU"


def main() -> None:
    args = parse()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "runs.csv"
    rows = pd.read_csv(path).to_dict("records") if path.is_file() else []
    done = {(r["pipeline"], r["condition"], r["seed"]) for r in rows}
    conds = conditions(args)
    t0 = time.monotonic()
    for pipeline in args.pipelines:
        for seed in args.seeds:
            for name, policy in conds.items():
                if (pipeline, name, seed) in done:
                    continue
                start = time.monotonic()
                row = run_one(pipeline, policy, seed, args.device)
                rows.append({"pipeline": pipeline, "condition": name, "seed": seed, **row,
                             "seconds": round(time.monotonic() - start, 1), "machine": machine()})
                pd.DataFrame(rows).to_csv(path, index=False)
                print(f"{pipeline:10s} {name:34s} seed {seed}: test_acc {row['test_acc']:.4f} "
                      f"({rows[-1]['seconds']:.0f} s)", flush=True)
    runs = pd.DataFrame(rows)
    runs = runs[runs["pipeline"].isin(args.pipelines) & runs["condition"].isin(conds)]
    order = [(p, c) for p in args.pipelines for c in conds]
    table = interval_table(runs, ["pipeline", "condition"], "test_acc", order)
    base = {p: table.loc[(p, "crop+flip"), "mean"] for p in args.pipelines if (p, "crop+flip") in table.index}
    table["vs_crop_flip"] = [table.loc[i, "mean"] - base.get(i[0], float("nan")) for i in table.index]
    table["seconds"] = runs.groupby(["pipeline", "condition"])["seconds"].mean().reindex(table.index)
    table.to_csv(args.out / "pipelines.csv")
    text = markdown(table, {"test acc (mean ± std)": "{mean:.4f} ± {std:.4f}",
                            "95% CI": "[{ci95_low:.4f}, {ci95_high:.4f}]", "vs crop+flip": "{vs_crop_flip:+.4f}",
                            "n": "{n:.0f}", "s per run": "{seconds:.0f}"}, "pipeline / condition")
    (args.out / "pipelines.md").write_text(text)
    bar_chart(table, args.out / "pipelines.png", f"held-out test accuracy, mean and 95% CI over {len(args.seeds)} "
              "seeds", "full pipelines: crop+flip vs crop+flip + policy, same budget", highlight=("+",))
    print(text)
    print(f"total {time.monotonic() - t0:.0f} s on {machine()}")


if __name__ == "__main__":
    main()
