"""The confirmation race: the search's top policies against the fixed recipes, at full target fidelity,
over paired seeds. It decides the winner; the search only nominates.

Every entry (``rank1..rankK`` from the search, then the baselines: crop+flip alone, RandAugment(2, 9),
TrivialAugmentWide, the AutoAugment CIFAR-10 policy, or any preset or policy file) trains the campaign's
target recipe from scratch once per race seed, as Ray Tune trials, and is scored on the validation split.
Race seeds are ``seed + 1 .. seed + S``: disjoint from the search's seed (so a trial's luck on its search seed
does not carry over) and shared by every entry (same initial weights, data order and augmentation draws per
seed), so entries are compared *paired*, seed by seed.

The winner is the entry with the best mean. Each searched entry is also compared with the best baseline
(highest mean): the mean of its per-seed differences with a 95% t-interval. ``race_runs.csv`` gets one row
per finished run as it finishes; a killed race resumes without retraining those runs.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
from ray import tune
from scipy import stats

from search_spaces import Policy, PolicyError, Schedule, load_policy_or_schedule
from search_spaces.files import atomic_write_text
from trainers.proxy import ProxyConfig, ProxyData, accuracy_se, train_proxy

from .config import CampaignConfig
from .reliability import CampaignInterrupted, InterruptWatch, take_interrupted
from .session import Progress, target_config, trial_dirname
from .tracking import tracking_callbacks

__all__ = ["Entry", "RaceResult", "RowLog", "race_entries", "run_race", "race_table", "paired_interval", "RUNS_FILE",
           "TABLE_FILE", "BASELINE_LABELS"]

RUNS_FILE, TABLE_FILE, RACE_TUNE = "race_runs.csv", "race.csv", "race_tune"
RUN_COLUMNS = ["entry", "label", "kind", "seed", "val_acc", "val_se", "seconds"]
BASELINE_LABELS = {"crop_flip": "crop+flip", "randaugment": "RandAugment(2, 9)",
                   "trivialaugment_wide": "TrivialAugmentWide", "autoaugment_cifar10": "AutoAugment CIFAR-10",
                   "none": "no augmentation", "crop_flip_cutout": "crop+flip+cutout"}


@dataclass(frozen=True)
class Entry:
    """One race entry: ``policy`` runs after the target's base augmentation (None: the base alone)."""

    label: str
    kind: str  # "searched" | "baseline"
    source: str  # rank<i>, a preset name or a policy file
    policy: Policy | Schedule | None


def race_entries(config: CampaignConfig, searched: Sequence[tuple[str, Policy | Schedule]]) -> list[Entry]:
    """The searched policies (``(label, policy)``, best first) followed by ``config.race.baselines``."""
    baselines = []
    for name in config.race.baselines:
        if name == "crop_flip" and config.target.base_augment:
            policy = None  # the base augmentation is crop+flip: the baseline is the base alone
        else:
            policy = load_policy_or_schedule(name)
        baselines.append(Entry(BASELINE_LABELS.get(name, Path(name).stem), "baseline", name, policy))
    known = {_behaviour(e.policy) for e in baselines}
    entries = []
    for label, policy in searched:  # a searched trial that replays a baseline (e.g. the enqueued RandAugment(2, 9))
        if _behaviour(policy) not in known:  # races once, as the baseline
            entries.append(Entry(label, "searched", label, policy))
            known.add(_behaviour(policy))
    entries += baselines
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise PolicyError(f"race.baselines: entries must differ, got {labels}")
    return entries


def _behaviour(policy: Policy | Schedule | None) -> str:
    """What a policy does (its document without name and provenance), to spot duplicates."""
    if policy is None:
        return "base only"
    doc = policy.to_dict()
    strip = ("name", "provenance")
    if "segments" in doc:
        doc["segments"] = [{**s, "policy": {k: v for k, v in s["policy"].items() if k not in strip}}
                           for s in doc["segments"]]
    return json.dumps({k: v for k, v in doc.items() if k not in strip}, sort_keys=True)


def race_seeds(config: CampaignConfig) -> list[int]:
    """The paired seeds: ``seed + 1 .. seed + race.seeds`` (disjoint from the search's seed)."""
    return [config.seed + 1 + s for s in range(config.race.seeds)]


# ---------------------------------------------------------------------------------------------
# Trainable (runs in Ray workers)


@dataclass(frozen=True)
class RaceJob:
    entries: tuple[Entry, ...]
    target: dict[str, Any]


def run_race_trial(config: dict[str, Any], *, job: RaceJob, data: ProxyData) -> None:
    """One run: entry ``config["pair"]["entry"]`` trained with the target recipe and ``config["pair"]["seed"]``."""
    entry = job.entries[int(config["pair"]["entry"])]
    target = ProxyConfig.from_dict({**job.target, "seed": int(config["pair"]["seed"])})
    fit = train_proxy(entry.policy, data, target)
    acc = float(fit.final_val_acc)
    tune.report({"val_acc": acc, "val_se": accuracy_se(acc, len(data.val_y)), "epoch": target.epochs,
                 "seconds": fit.seconds, "node_id": ray.get_runtime_context().get_node_id()})


class RowLog(tune.Callback):
    """Driver-side: append one CSV row per finished trial the moment it finishes (the durable record a resumed
    race or calibration reads). ``row(config, result)`` builds the row; ``on_row`` runs after each write."""

    def __init__(self, path: Path, row: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]],
                 on_row: Callable[[], None] | None = None) -> None:
        self.path, self.row, self.on_row = path, row, on_row

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the experiment state: the progress hook (a live view holding locks)
        stays behind in the driver."""
        return {**self.__dict__, "on_row": None}

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        if "val_acc" not in result:
            return
        row = self.row(trial.config, result)
        # the file is rewritten whole (atomically: a full disk leaves the old rows intact, never half a row);
        # Tune calls back in the driver's one loop: no two writes at once
        old = self.path.read_text() if self.path.exists() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        line = pd.DataFrame([row], columns=list(row)).to_csv(header=not old, index=False)
        atomic_write_text(self.path, old + line)
        if self.on_row is not None:
            self.on_row()


@dataclass(frozen=True)
class _RunRow:
    entries: tuple[Entry, ...]

    def __call__(self, config: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        pair = config["pair"]
        entry = self.entries[int(pair["entry"])]
        return {"entry": int(pair["entry"]), "label": entry.label, "kind": entry.kind, "seed": int(pair["seed"]),
                "val_acc": result["val_acc"], "val_se": result.get("val_se"),
                "seconds": round(float(result.get("seconds", 0.0)), 2)}


# ---------------------------------------------------------------------------------------------
# Analysis


def paired_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean per-seed difference and its t-interval (nan bounds for one seed)."""
    d = np.asarray(diffs, dtype=float)
    mean = float(d.mean()) if len(d) else math.nan
    if len(d) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return mean, mean - half, mean + half


def race_table(runs: pd.DataFrame, entries: Sequence[Entry]) -> pd.DataFrame:
    """One row per entry: mean, std and runs; for every entry, the paired difference with the best baseline
    (mean and 95% interval over the seeds both ran); sorted by mean, best first."""
    rows = []
    for i, e in enumerate(entries):
        part = runs[runs["entry"] == i]
        rows.append({"entry": i, "label": e.label, "kind": e.kind, "source": e.source, "runs": len(part),
                     "mean": part["val_acc"].mean() if len(part) else math.nan,
                     "std": part["val_acc"].std(ddof=1) if len(part) > 1 else math.nan,
                     "val_se": part["val_se"].mean() if len(part) else math.nan})
    table = pd.DataFrame(rows)
    baselines = table[(table["kind"] == "baseline") & (table["runs"] > 0)]
    best_base = None if baselines.empty else int(baselines.sort_values("mean", ascending=False).iloc[0]["entry"])
    diff, low, high = [], [], []
    for i in table["entry"]:
        if best_base is None or i == best_base:
            diff.append(math.nan), low.append(math.nan), high.append(math.nan)
            continue
        a = runs[runs["entry"] == i].set_index("seed")["val_acc"]
        b = runs[runs["entry"] == best_base].set_index("seed")["val_acc"]
        common = a.index.intersection(b.index)
        m, lo, hi = paired_interval((a[common] - b[common]).tolist()) if len(common) else (math.nan,) * 3
        diff.append(m), low.append(lo), high.append(hi)
    table["vs_best_baseline"], table["ci_low"], table["ci_high"] = diff, low, high
    table["best_baseline"] = "" if best_base is None else entries[best_base].label
    return table.sort_values(["mean", "entry"], ascending=[False, True], na_position="last").reset_index(drop=True)


@dataclass
class RaceResult:
    """The race's table, its runs and the winning entry (None when no run finished)."""

    entries: list[Entry]
    runs: pd.DataFrame
    table: pd.DataFrame
    seeds: list[int]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def winner(self) -> Entry | None:
        done = self.table.dropna(subset=["mean"])
        return None if done.empty else self.entries[int(done.iloc[0]["entry"])]

    def verdict(self) -> str:
        """The race's outcome in plain words."""
        win = self.winner
        if win is None:
            return "no race run finished: no winner"
        top = self.table.iloc[0]
        n = int(top["runs"])
        if win.kind == "baseline":
            searched = self.table[self.table["kind"] == "searched"].dropna(subset=["mean"])
            best = "" if searched.empty else (
                f"; the best searched policy ({searched.iloc[0]['label']}) scored "
                f"{100 * (searched.iloc[0]['mean'] - top['mean']):+.2f} points against it")
            return (f"the baseline {win.label} won the confirmation race ({top['mean']:.4f} mean over {n} seeds): "
                    f"no searched policy beat the fixed recipes{best}")
        d, lo, hi = top["vs_best_baseline"], top["ci_low"], top["ci_high"]
        against = top["best_baseline"] or "the baselines"
        if math.isnan(d):
            return f"{win.label} won the confirmation race ({top['mean']:.4f} mean over {n} seeds)"
        sure = ("the paired 95% interval is above zero" if lo > 0 else
                "but the paired 95% interval includes zero: the margin is within seed noise")
        return (f"{win.label} (searched) won the confirmation race: {top['mean']:.4f} mean over {n} seeds, "
                f"{100 * d:+.2f} points vs {against} (95% CI [{100 * lo:+.2f}, {100 * hi:+.2f}]); {sure}")

    def winner_policy(self) -> Policy | Schedule | None:
        """The winner as a policy file: the searched policy, or the baseline preset/file (crop+flip alone is the
        ``crop_flip`` preset), with the race's verdict in its provenance (None when no run finished)."""
        entry = self.winner
        if entry is None:
            return None
        policy = entry.policy if entry.policy is not None else load_policy_or_schedule("crop_flip")
        return policy.with_provenance(race=self.winner_provenance())

    def winner_provenance(self) -> dict[str, Any]:
        top = self.table.iloc[0]
        return {"winner": top["label"], "kind": top["kind"], "mean_val_acc": round(float(top["mean"]), 5),
                "seeds": self.seeds, "verdict": self.verdict()}

    def summary(self) -> dict[str, Any]:
        rows = self.table.drop(columns=["entry"]).replace({np.nan: None}).to_dict(orient="records")
        return {"seeds": self.seeds, "winner": None if self.winner is None else self.winner.label,
                "winner_kind": None if self.winner is None else self.winner.kind, "verdict": self.verdict(),
                "table": rows}


# ---------------------------------------------------------------------------------------------
# Driver


def _read_runs(path: Path, entries: Sequence[Entry]) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=RUN_COLUMNS)
    runs = pd.read_csv(path)
    labels = {i: e.label for i, e in enumerate(entries)}
    stale = runs[[labels.get(int(i)) != label for i, label in zip(runs["entry"], runs["label"], strict=True)]]
    if not stale.empty:  # the entries changed since these runs (e.g. a different search result): start over
        raise PolicyError(f"{path.name}: its runs belong to other race entries ({sorted(set(stale['label']))}); "
                          "move the file away to race again")
    return runs.drop_duplicates(subset=["entry", "seed"], keep="first").reset_index(drop=True)


def run_race(config: CampaignConfig, entries: Sequence[Entry], data: ProxyData, *,
             folder: Path | None = None, on_progress: Callable[[Progress], None] | None = None,
             t0: float | None = None) -> RaceResult:
    """Train every (entry, seed) not yet in ``race_runs.csv`` as a Ray Tune trial, then write ``race.csv``.

    Runs inside an initialised Ray (``policy_search.session.ray_session``); ``folder`` defaults to the
    campaign folder."""
    folder = Path(folder or config.folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = list(entries)
    seeds = race_seeds(config)
    runs_path = folder / RUNS_FILE
    done = _read_runs(runs_path, entries)
    have = {(int(e), int(s)) for e, s in zip(done["entry"], done["seed"], strict=True)}
    pending = [{"entry": i, "seed": s} for s in seeds for i in range(len(entries)) if (i, s) not in have]
    t0 = time.monotonic() if t0 is None else t0
    total = len(entries) * len(seeds)

    def progress() -> None:
        if on_progress is not None:
            n = len(_read_runs(runs_path, entries))
            on_progress(Progress(n, total, 0, None, time.monotonic() - t0, stage="race"))

    if pending:
        progress()
        shutil.rmtree(folder / RACE_TUNE, ignore_errors=True)  # race_runs.csv is the durable record
        job = RaceJob(tuple(entries), target_config(config).to_dict())
        trainable = tune.with_resources(tune.with_parameters(run_race_trial, job=job, data=data),
                                        {"cpu": config.resources.cpu, "gpu": config.resources.gpu})
        tuner = tune.Tuner(
            trainable, param_space={"pair": tune.grid_search(pending)},  # seed-major: paired runs come first
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=config.max_concurrent,
                                        trial_dirname_creator=trial_dirname, reuse_actors=config.reuse_actors),
            run_config=tune.RunConfig(name=RACE_TUNE, storage_path=str(folder), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=1),
                                      callbacks=[RowLog(runs_path, _RunRow(tuple(entries)), progress),
                                                 *tracking_callbacks(config, "race"), InterruptWatch(folder)]))
        tuner.fit()
        if take_interrupted(folder) is not None:  # Ctrl-C: the finished runs are in race_runs.csv
            raise CampaignInterrupted(f"interrupted during the race: {len(_read_runs(runs_path, entries))} of "
                                      f"{total} runs done, kept in {runs_path}; run it again (policy-search resume "
                                      f"for a campaign) to finish the race")
    runs = _read_runs(runs_path, entries)
    table = race_table(runs, entries)
    atomic_write_text(folder / TABLE_FILE, table.to_csv(index=False))
    return RaceResult(entries, runs, table, seeds, {"race": folder / TABLE_FILE, "race_runs": runs_path})

