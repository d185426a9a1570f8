"""``policy-search calibrate``: how well does each objective rank policies the way the target training does?

On the campaign's own data and target recipe, a fixed panel of policies (the presets, a RandAugment (N, M)
grid and random draws from the campaign's space: at least 25) is

* trained with the full target recipe over ``seeds`` paired seeds (the reference; through
  :func:`policy_search.race.run_race`, so it runs as Ray Tune trials and resumes without retraining), and
* scored by each objective (``proxy``, ``finetune``, ``density``, ``full``: one trial per policy).

For each objective: the Spearman correlation of its scores with the reference (mean over seeds), with a bootstrap
95% interval over policies. The *noise ceiling* is the Spearman correlation of the target training with itself
across two seeds: no objective can agree with the target better than the target agrees with itself. A search
decides near the top of the ranking, so each row also gives the agreement among the 10 policies best by the
reference (``top10_spearman``) and the *regret* of the objective's choice: the points of reference accuracy its
top-scored policy loses to the reference's best (``regret_points``; for the noise ceiling, seed 1 against seed 2
among the same 10 policies, and seed 1 chooses while seed 2 judges). Outputs in ``<output>/<name>-calibration/``:
``scores.csv`` (one row per objective and policy, appended as each finishes), ``calibration.csv`` /
``calibration.md`` / ``calibration.json``, ``calibration.png``. A campaign with the same dataset, splits and target
prints the calibrated agreement of its objective.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from ray import tune
from scipy import stats

from search_spaces import Policy, Schedule, load_policy_or_schedule
from search_spaces.magnitudes import rand_augment
from search_spaces.spaces import SPACES_BY_NAME, policy_from_params
from trainers.plotting import pyplot
from trainers.proxy import ProxyData

from .config import CampaignConfig, validate_config
from .objectives import OBJECTIVES, Objective, make_objective
from .race import BASELINE_LABELS, Entry, RowLog, run_race
from .session import Progress, prepare_data, ray_session, trial_dirname

__all__ = ["calibration_panel", "run_calibration", "objective_spec", "agreement", "near_the_top", "calibration_folder",
           "find_calibration", "CalibrationResult", "GRID_N", "GRID_M"]

GRID_N, GRID_M = (1, 2, 3), (5, 10, 15, 20, 25)
PRESETS = ("crop_flip", "randaugment", "trivialaugment_wide", "autoaugment_cifar10")
SCORES_FILE = "scores.csv"


def calibration_folder(config: CampaignConfig) -> Path:
    return (config.output / f"{config.name}-calibration").resolve()


def calibration_panel(config: CampaignConfig, num_random: int = 6) -> list[Entry]:
    """The presets, RandAugment at every (N, M) of ``GRID_N`` x ``GRID_M`` and ``num_random`` random draws
    from the campaign's space (seeded), as race entries."""
    entries = []
    for name in PRESETS:
        policy = None if name == "crop_flip" and config.target.base_augment else load_policy_or_schedule(name)
        entries.append(Entry(BASELINE_LABELS[name], "preset", name, policy))
    for n in GRID_N:
        for m in GRID_M:
            entries.append(Entry(f"RandAugment({n}, {m})", "grid", f"randaugment-n{n}-m{m}",
                                 rand_augment(n, m, interpolation="nearest")))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=config.seed))
    space = SPACES_BY_NAME[config.space]
    for i in range(num_random):
        trial = study.ask()
        space(trial, **config.space_options)
        policy = policy_from_params(config.space, trial.params, **config.space_options)
        entries.append(Entry(f"random {i + 1}", "random", json.dumps(trial.params, default=str), policy))
    return entries


# ---------------------------------------------------------------------------------------------
# Objective scores (Ray Tune trials)


@dataclass(frozen=True)
class _ScoreJob:
    objective: Objective
    policies: tuple[Policy | Schedule | None, ...]


def _score_trial(config: dict[str, Any], *, job: _ScoreJob, shared: Any) -> None:
    policy = job.policies[int(config["entry"])]
    job.objective.run(policy if policy is not None else _crop_flip_only(), shared, tune.report)


def _crop_flip_only() -> Policy:
    """The identity policy: the target's base augmentation alone (objectives need a policy object)."""
    return load_policy_or_schedule("none")


@dataclass(frozen=True)
class _ScoreRow:
    objective: str
    entries: tuple[Entry, ...]

    def __call__(self, config: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        return {"objective": self.objective, "label": self.entries[int(config["entry"])].label,
                "score": result["val_acc"], "val_se": result.get("val_se")}


def objective_spec(config: CampaignConfig, spec: str) -> tuple[CampaignConfig, str]:
    """``spec`` is an objective name, or ``finetune@P`` for the finetune objective with ``finetune.fraction``
    P (so one calibration can measure which fraction ranks policies best). Returns the config to build the
    objective from and the objective's name; a bad spec is a one-line ``ValueError``."""
    name, _, fraction = spec.partition("@")
    if name not in OBJECTIVES:
        raise ValueError(f"objectives: unknown objective {name!r} (known: {', '.join(OBJECTIVES)}, finetune@P)")
    if not fraction:
        return config, name
    if name != "finetune":
        raise ValueError(f"objectives: only finetune takes a fraction (finetune@P), got {spec!r}")
    try:
        p = float(fraction)
    except ValueError:
        raise ValueError(f"objectives: {spec!r}: the fraction must be a number in (0, 1)") from None
    try:
        return validate_config({**config.model_dump(), "finetune": {**config.finetune.model_dump(),
                                                                   "fraction": p}}), name
    except ValueError as exc:
        raise ValueError(f"objectives: {spec!r}: {exc}") from None


def _score(config: CampaignConfig, spec: str, entries: Sequence[Entry], data: ProxyData, folder: Path) -> None:
    path = folder / SCORES_FILE
    name = spec
    done = set()
    if path.is_file():
        prior = pd.read_csv(path)
        done = set(prior.loc[prior["objective"] == name, "label"])
    pending = [i for i, e in enumerate(entries) if e.label not in done]
    if not pending:
        return
    objective = make_objective(*objective_spec(config, spec))
    job = _ScoreJob(objective, tuple(e.policy for e in entries))
    trainable = tune.with_resources(tune.with_parameters(_score_trial, job=job, shared=objective.prepare(data)),
                                    {"cpu": config.resources.cpu, "gpu": config.resources.gpu})
    tune.Tuner(trainable, param_space={"entry": tune.grid_search(pending)},
               tune_config=tune.TuneConfig(max_concurrent_trials=config.max_concurrent,
                                           trial_dirname_creator=trial_dirname, reuse_actors=config.reuse_actors),
               run_config=tune.RunConfig(name=f"tune-{name}", storage_path=str(folder), verbose=0,
                                         failure_config=tune.FailureConfig(max_failures=1),
                                         callbacks=[RowLog(path, _ScoreRow(name, tuple(entries)))])).fit()


# ---------------------------------------------------------------------------------------------
# Agreement


def agreement(x: Sequence[float], y: Sequence[float], reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Spearman's rho of ``x`` and ``y`` with a percentile bootstrap 95% interval over the items."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rho = float(stats.spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(reps):
        idx = rng.integers(0, len(x), len(x))
        if len(set(idx)) < 3:
            continue
        r = stats.spearmanr(x[idx], y[idx]).statistic
        if not math.isnan(r):
            boots.append(r)
    low, high = (np.percentile(boots, [2.5, 97.5]) if boots else (math.nan, math.nan))
    return rho, float(low), float(high)


def near_the_top(score: pd.Series, reference: pd.Series, top: int = 10,
                 best_by: pd.Series | None = None) -> tuple[float, float]:
    """How ``score`` decides where a search decides: Spearman's rho with ``reference`` among the ``top``
    policies best by ``best_by`` (default: the reference; NaN with fewer policies), and the regret of choosing
    by ``score``: the reference's best minus the reference value of the policy ``score`` ranks first, in
    accuracy points."""
    both = pd.DataFrame({"score": score, "reference": reference,
                         "best_by": reference if best_by is None else best_by}).dropna()
    best = both.nlargest(top, "best_by")
    rho = float(stats.spearmanr(best["score"], best["reference"]).statistic) if len(both) >= top else math.nan
    regret = 100 * float(both["reference"].max() - both.loc[both["score"].idxmax(), "reference"])
    return rho, regret


@dataclass
class CalibrationResult:
    folder: Path
    table: pd.DataFrame  # objective, spearman, ci_low, ci_high, policies, top10_spearman, regret_points
    scores: pd.DataFrame  # one row per policy: reference (per seed and mean) and each objective's score


def _identity(config: CampaignConfig) -> dict[str, Any]:
    return {"dataset": config.dataset, "train_size": config.train_size, "val_size": config.val_size,
            "seed": config.seed, "target": config.target.model_dump()}


def run_calibration(config: CampaignConfig | dict[str, Any], objectives: Sequence[str] = ("proxy", "finetune"),
                    seeds: int = 2, num_random: int = 6,
                    on_progress: Callable[[Progress], None] | None = None) -> CalibrationResult:
    """Measure each objective's rank agreement with full target training (see the module docstring)."""
    config = validate_config(config)
    for name in objectives:
        objective_spec(config, name)
    if seeds < 2:
        raise ValueError(f"seeds: the noise ceiling needs >= 2 seeds, got {seeds}")
    folder = calibration_folder(config)
    folder.mkdir(parents=True, exist_ok=True)
    ref_config = validate_config({**config.model_dump(), "race": {**config.race.model_dump(), "seeds": seeds},
                                  "output": str(folder.parent)})
    entries = calibration_panel(config, num_random)
    t0 = time.monotonic()
    data, splits, proxy_data = prepare_data(validate_config({**config.model_dump(), "name": folder.name,
                                                             "output": str(folder.parent)}))
    with ray_session(config):
        race = run_race(ref_config, entries, proxy_data, folder=folder, on_progress=on_progress, t0=t0)
        for name in objectives:
            _score(config, name, entries, proxy_data, folder)
    runs = race.runs.pivot_table(index="label", columns="seed", values="val_acc")
    table = pd.DataFrame({"reference": runs.mean(axis=1)})
    for s in runs.columns:
        table[f"full_seed{s}"] = runs[s]
    scores = pd.read_csv(folder / SCORES_FILE) if (folder / SCORES_FILE).is_file() else pd.DataFrame(
        columns=["objective", "label", "score"])
    for name in objectives:
        table[name] = scores[scores["objective"] == name].drop_duplicates("label").set_index("label")["score"]
    table = table.reindex([e.label for e in entries])
    rows = []
    seed_cols = [c for c in table.columns if c.startswith("full_seed")]
    if len(seed_cols) >= 2:
        both = table[seed_cols[:2]].dropna()
        rho, lo, hi = agreement(both[seed_cols[0]], both[seed_cols[1]])
        top, regret = near_the_top(both[seed_cols[0]], both[seed_cols[1]], best_by=table["reference"])
        rows.append({"objective": "noise ceiling (full, seed vs seed)", "spearman": rho, "ci_low": lo, "ci_high": hi,
                     "policies": len(both), "top10_spearman": top, "regret_points": regret})
    for name in objectives:
        part = table[["reference", name]].dropna()
        if len(part) >= 3:
            rho, lo, hi = agreement(part[name], part["reference"])
            top, regret = near_the_top(part[name], part["reference"])
            rows.append({"objective": name, "spearman": rho, "ci_low": lo, "ci_high": hi, "policies": len(part),
                         "top10_spearman": top, "regret_points": regret})
    result = pd.DataFrame(rows)
    result.to_csv(folder / "calibration.csv", index=False)
    table.to_csv(folder / "calibration_scores.csv")
    lines = ["| objective | Spearman ρ with full training | bootstrap 95% CI | policies | ρ among the 10 best "
             "| regret of its choice (points) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.objective} | {r.spearman:+.2f} | [{r.ci_low:+.2f}, {r.ci_high:+.2f}] | {r.policies} "
              f"| {r.top10_spearman:+.2f} | {r.regret_points:.2f} |" for r in result.itertuples()]
    (folder / "calibration.md").write_text("\n".join(lines) + "\n")
    (folder / "calibration.json").write_text(json.dumps(
        {"identity": _identity(config), "seeds": race.seeds, "table": result.to_dict(orient="records")},
        indent=2, default=str) + "\n")
    _plot(table, objectives, result, folder / "calibration.png")
    return CalibrationResult(folder, result, table)


def _plot(table: pd.DataFrame, objectives: Sequence[str], result: pd.DataFrame, path: Path) -> None:
    plt = pyplot()

    names = [n for n in objectives if n in table and table[n].notna().sum() >= 3]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4 * max(1, len(names)), 3.6), squeeze=False)
    rho = dict(zip(result["objective"], result["spearman"], strict=True)) if len(result) else {}
    for ax, name in zip(axes[0], names, strict=False):
        part = table[["reference", name]].dropna()
        ax.scatter(part[name], part["reference"], s=16)
        ax.set(xlabel=f"{name} score", ylabel="full training val_acc (mean over seeds)",
               title=f"{name}: Spearman {rho.get(name, math.nan):+.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def find_calibration(config: CampaignConfig) -> dict[str, Any] | None:
    """The calibrated agreement of ``config.objective`` from a calibration with the same dataset, splits and
    target under ``config.output`` (None when there is none)."""
    for path in sorted(Path(config.output).glob("*-calibration/calibration.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("identity") != json.loads(json.dumps(_identity(config), default=str)):
            continue
        names = {config.objective} | ({f"finetune@{config.finetune.fraction:g}"}
                                      if config.objective == "finetune" else set())
        for row in doc.get("table", []):
            if row.get("objective") in names:
                return {**row, "file": str(path)}
    return None
