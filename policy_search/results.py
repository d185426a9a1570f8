"""Campaign outputs: ``trials.csv``, ``best_policy.json``, ``top_k/rank<i>.json``, ``summary.json``, plots.

``trials.csv`` has one row per Tune trial, joined with its Optuna study trial through the ``tune_trial_id``
user attr: ``number`` (study trial number), ``trial_id``, ``status`` (COMPLETE, PRUNED = stopped early by
ASHA, FAILED), ``val_acc`` (last reported), ``best_val_acc``, ``epochs``, ``val_acc_history``
(``;``-separated per epoch), ``duration_s``, ``node_id``, ``error`` and one ``param_<name>`` column per
searched parameter. A trial that finished after Tune's last experiment snapshot before a crash is known only to
the study; its row comes from there (empty ``node_id``), so ``trials.csv`` and the study always agree.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from ray.tune import ResultGrid

from search_spaces import Policy, Schedule, save_policy
from search_spaces.files import atomic_write_text
from search_spaces.spaces import policy_from_params
from trainers.plotting import pyplot

from .config import CampaignConfig
from .export import preview_policy
from .objectives import make_objective
from .race import RaceResult
from .reliability import INTERRUPTED
from .session import STUDY_ATTR, CampaignResult, library_versions, load_study, machine_info, stale_numbers, study_name

__all__ = ["write_results", "trials_table", "ranked_trials", "trial_policy", "noise_warning", "STATUS_ORDER"]

STATUS_ORDER = ("COMPLETE", "PRUNED", "FAILED")


def _error_line(error: BaseException | None) -> str:
    if error is None:
        return ""
    cause = getattr(error, "cause", None) or error
    lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}".strip()[:300]


def trials_table(config: CampaignConfig, grid: ResultGrid, study: optuna.Study | None = None) -> pd.DataFrame:
    """One row per Tune trial (see the module docstring), sorted by study trial number. ``study`` must be the
    campaign's own (:func:`~policy_search.session.load_study`): its trials are all this campaign's."""
    max_t = make_objective(config).max_t
    if study is not None and study.study_name != study_name(config):
        raise ValueError(f"study {study.study_name!r} is not campaign {config.name!r}'s ({study_name(config)!r})")
    by_tune_id: dict[str, optuna.trial.FrozenTrial] = {}
    if study is not None:
        for t in study.get_trials(deepcopy=False):
            if STUDY_ATTR in t.user_attrs:
                by_tune_id[t.user_attrs[STUDY_ATTR]] = t  # a re-run after resume overrides the FAILed one
    rows = []
    for result in grid:
        trial_id = Path(result.path).name  # campaign.trial_dirname
        history = result.metrics_dataframe
        accs = [] if history is None or "val_acc" not in history else history["val_acc"].dropna().tolist()
        iters = int(result.metrics.get("epoch") or 0)  # the last reported epoch of training
        status = "FAILED" if result.error else ("PRUNED" if iters < max_t else "COMPLETE")
        se = result.metrics.get("val_se")
        ot = by_tune_id.get(trial_id)
        params = ot.params if ot is not None else {k: v for k, v in (result.config or {}).items()}
        rows.append({
            "number": ot.number if ot is not None else None, "trial_id": trial_id, "status": status,
            "val_acc": accs[-1] if accs and status != "FAILED" else np.nan,
            "val_se": float(se) if se is not None and status != "FAILED" else np.nan,
            "best_val_acc": max(accs) if accs else np.nan, "epochs": iters,
            "val_acc_history": ";".join(f"{a:.4f}" for a in accs),
            "duration_s": round(float(result.metrics.get("time_total_s") or 0.0), 2),
            "node_id": result.metrics.get("node_id", ""),
            "error": _error_line(result.error),
            **{f"param_{k}": v for k, v in params.items()},
        })
    seen = {row["trial_id"] for row in rows}
    stale = stale_numbers(study) if study is not None else set()  # FAILed by resume, re-run or never known to Tune
    for t in study.get_trials(deepcopy=False) if study is not None else ():
        trial_id = t.user_attrs.get(STUDY_ATTR)
        if trial_id and trial_id not in seen and t.state.is_finished() and t.number not in stale:
            rows.append(_study_only_row(t, trial_id, max_t))  # finished after Tune's last snapshot, then a crash
            seen.add(trial_id)
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values(["number", "trial_id"], na_position="last").reset_index(drop=True)
    return df


def _study_only_row(t: optuna.trial.FrozenTrial, trial_id: str, max_t: int) -> dict[str, Any]:
    """The ``trials.csv`` row of a trial only the study knows: it finished after Tune's last experiment snapshot
    and the driver died before the next one, so the restored Tune experiment never saw it finish."""
    accs = [t.intermediate_values[k] for k in sorted(t.intermediate_values)]
    status = {"COMPLETE": "COMPLETE", "PRUNED": "PRUNED"}.get(t.state.name, "FAILED")
    value = t.value if status == "COMPLETE" else (accs[-1] if accs and status == "PRUNED" else np.nan)
    seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start \
        else 0.0
    return {"number": t.number, "trial_id": trial_id, "status": status, "val_acc": value,
            "best_val_acc": max(accs) if accs else value, "epochs": max_t if status == "COMPLETE" else len(accs),
            "val_acc_history": ";".join(f"{a:.4f}" for a in accs), "duration_s": round(seconds, 2),
            "node_id": "",
            "error": "" if status != "FAILED" else "failed after Tune's last snapshot (reason not recorded)",
            **{f"param_{k}": v for k, v in t.params.items()}}


def ranked_trials(df: pd.DataFrame) -> pd.DataFrame:
    """Trials eligible for the top-k, best first: full-budget COMPLETE ones, or (if none) anything scored."""
    if df.empty:
        return df
    scored = df[df["status"] == "COMPLETE"].dropna(subset=["val_acc"])
    if scored.empty:
        scored = df[df["status"] != "FAILED"].dropna(subset=["val_acc"])
    return scored.sort_values(["val_acc", "number"], ascending=[False, True])


def trial_policy(config: CampaignConfig, row: pd.Series, rank: int) -> Policy | Schedule:
    """The policy (or, for a ramped space, schedule) of one ``trials.csv`` row, with its provenance."""
    return policy_from_params(config.space, _params(row), **config.space_options).with_provenance(
        campaign=config.name, trial_number=None if pd.isna(row["number"]) else int(row["number"]),
        trial_id=row["trial_id"], rank=rank, score=float(row["val_acc"]), metric="val_acc",
        objective=config.objective, target=config.target.model_dump(), dataset=config.dataset, seed=config.seed,
        space=config.space, params=_params(row), versions=library_versions())


def noise_warning(df: pd.DataFrame) -> str | None:
    """A warning when the validation standard error is larger than the spread of the trials' scores: the
    search then ranks mostly noise (more validation images or a ``full``/``finetune`` objective help)."""
    if df.empty or "val_se" not in df:
        return None
    done = df[df["status"] == "COMPLETE"].dropna(subset=["val_acc", "val_se"])
    if len(done) < 3:
        return None
    se, spread = float(done["val_se"].median()), float(done["val_acc"].std())
    if se <= spread:
        return None
    return (f"validation noise (standard error {se:.4f}) is larger than the spread of the trial scores "
            f"({spread:.4f}): the search ranks mostly noise; use more validation images (val_size; val_folds K "
            f"validates every training image too, at K times the cost) or a late-phase objective (finetune)")


def _params(row: pd.Series) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if key.startswith("param_") and not (isinstance(value, float) and np.isnan(value)):
            out[key[6:]] = value.item() if hasattr(value, "item") else value
    return out


def _plot_history(df: pd.DataFrame, path: Path) -> Path:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.5))
    order = df.assign(x=df["number"].fillna(df.index.to_series())).sort_values("x")
    colours = {"COMPLETE": "tab:blue", "PRUNED": "tab:gray", "FAILED": "tab:red"}
    for status, part in order.groupby("status"):
        y = part["val_acc"].fillna(0.0) if status == "FAILED" else part["val_acc"]
        marker = "x" if status == "FAILED" else "o"
        ax.scatter(part["x"], y, s=18, c=colours.get(status, "k"), label=status, marker=marker)
    done = order[order["status"] == "COMPLETE"]
    if not done.empty:
        ax.step(done["x"], done["val_acc"].cummax(), where="post", c="tab:orange", label="best so far")
    ax.set_xlabel("trial number")
    ax.set_ylabel("val_acc")
    ax.legend(fontsize=7)
    ax.set_title("Optimisation history")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_importances(study: optuna.Study | None, path: Path) -> Path:
    plt = pyplot()

    importances: dict[str, float] = {}
    reason = ""
    try:
        if study is None:
            reason = "no study"
        else:
            complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if len(complete) < 3:
                reason = f"need >= 3 completed trials, have {len(complete)}"
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:  # e.g. a single-valued search space
        reason = str(exc).splitlines()[0][:80]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance")
    else:
        ax.text(0.5, 0.5, f"parameter importances unavailable:\n{reason}", ha="center", va="center")
        ax.axis("off")
    ax.set_title("Parameter importances")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_results(config: CampaignConfig, df: pd.DataFrame, data: Any, wall_s: float,
                  race: RaceResult | None = None) -> CampaignResult:
    """Write every output file of a campaign into ``config.folder``: ``trials.csv`` (``df``, from
    :func:`trials_table`), ``top_k/``, plots, ``summary.json`` and ``best_policy.json`` -- the race winner when
    a confirmation race ran (``race.csv``, ``race_runs.csv``), else the search's best trial. ``data``
    (ImageData) feeds the preview."""
    folder = config.folder
    try:
        study = load_study(config)
    except KeyError:
        study = None
    files = {"trials": folder / "trials.csv"}
    atomic_write_text(files["trials"], df.to_csv(index=False))
    ranked = ranked_trials(df)
    (folder / "top_k").mkdir(exist_ok=True)
    for old in (folder / "top_k").glob("rank*.json"):
        old.unlink()
    best = None
    for i, (_, row) in enumerate(ranked.head(config.top_k).iterrows(), start=1):
        policy = trial_policy(config, row, i)
        save_policy(policy, folder / "top_k" / f"rank{i}.json")
        if i == 1:
            best = policy
    if race is not None and race.winner is not None:
        best = race.winner_policy()
    if best is not None:
        files["best_policy"] = save_policy(best, folder / "best_policy.json")
    elif (folder / "best_policy.json").exists():
        (folder / "best_policy.json").unlink()
    files["history_png"] = _plot_history(df, folder / "history.png") if not df.empty else None
    files["importances_png"] = _plot_importances(study, folder / "importances.png")
    if best is not None:
        spread = data.images[:: max(1, len(data.images) // 8)][:8]  # one image from across the classes
        preview = best.segments[-1].policy if isinstance(best, Schedule) else best
        files["preview_png"] = preview_policy(preview, spread, folder / "best_policy_preview.png", seed=config.seed)
    counts = {s: int((df["status"] == s).sum()) if not df.empty else 0 for s in STATUS_ORDER}
    if not df.empty and (df["status"] == INTERRUPTED).any():  # Ctrl-C
        counts[INTERRUPTED] = int((df["status"] == INTERRUPTED).sum())
    best_score = float(ranked.iloc[0]["val_acc"]) if len(ranked) else None
    warning = noise_warning(df)
    summary = {
        "campaign": config.name, "config": config.public_dict(), "target": config.target.model_dump(),
        "objective": make_objective(config).describe(), "best_score": best_score,
        "best_trial": None if ranked.empty else (None if pd.isna(ranked.iloc[0]["number"])
                                                 else int(ranked.iloc[0]["number"])),
        "best_params": None if ranked.empty else _params(ranked.iloc[0]),
        "counts": counts, "num_trials": int(len(df)), "wall_s": round(wall_s, 2),
        "noise_warning": warning,
        "val_se_median": None if "val_se" not in df or df["val_se"].dropna().empty
        else round(float(df["val_se"].median()), 5),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(), "versions": library_versions(),
    }
    if race is not None:
        files.update(race.files)
        summary["race"] = race.summary()
    summary["files"] = {k: str(v.relative_to(folder)) for k, v in files.items() if v is not None}
    files["summary"] = folder / "summary.json"
    atomic_write_text(files["summary"], json.dumps(summary, indent=2, default=str) + "\n")
    return CampaignResult(folder, best_score, summary["best_params"], counts, wall_s,
                          {k: v for k, v in files.items() if v is not None}, race=race)

