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
import os
import platform
import socket
import time
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from ray.tune import ResultGrid

from search_spaces import save_policy
from search_spaces.spaces import policy_from_params

from .campaign import STALE_ATTR, STUDY_ATTR, CampaignResult, load_study
from .config import CampaignConfig
from .export import preview_policy

__all__ = ["write_results", "trials_table", "library_versions", "read_trials"]

STATUS_ORDER = ("COMPLETE", "PRUNED", "FAILED")


def library_versions() -> dict[str, str]:
    """Versions recorded in every policy's provenance."""
    return {name: version(name) for name in ("torch", "kornia", "ray", "optuna", "policy-search")}


def _error_line(error: BaseException | None) -> str:
    if error is None:
        return ""
    cause = getattr(error, "cause", None) or error
    lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}".strip()[:300]


def trials_table(config: CampaignConfig, grid: ResultGrid, study: optuna.Study | None = None) -> pd.DataFrame:
    """One row per Tune trial (see the module docstring), sorted by study trial number."""
    max_t = config.proxy.epochs if config.objective == "proxy" else 1
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
        iters = int(result.metrics.get("training_iteration") or 0)
        status = "FAILED" if result.error else ("PRUNED" if iters < max_t else "COMPLETE")
        ot = by_tune_id.get(trial_id)
        params = ot.params if ot is not None else {k: v for k, v in (result.config or {}).items()}
        rows.append({
            "number": ot.number if ot is not None else None, "trial_id": trial_id, "status": status,
            "val_acc": accs[-1] if accs and status != "FAILED" else np.nan,
            "best_val_acc": max(accs) if accs else np.nan, "epochs": iters,
            "val_acc_history": ";".join(f"{a:.4f}" for a in accs),
            "duration_s": round(float(result.metrics.get("time_total_s") or 0.0), 2),
            "node_id": result.metrics.get("node_id", ""), "hostname": result.metrics.get("hostname", ""),
            "error": _error_line(result.error),
            **{f"param_{k}": v for k, v in params.items()},
        })
    seen = {row["trial_id"] for row in rows}
    for t in study.get_trials(deepcopy=False) if study is not None else ():
        trial_id = t.user_attrs.get(STUDY_ATTR)
        if trial_id and trial_id not in seen and t.state.is_finished() and not t.user_attrs.get(STALE_ATTR):
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
            "node_id": "", "hostname": "",
            "error": "" if status != "FAILED" else "failed after Tune's last snapshot (reason not recorded)",
            **{f"param_{k}": v for k, v in t.params.items()}}


def read_trials(folder: str | os.PathLike) -> pd.DataFrame:
    """``trials.csv`` of a campaign folder."""
    return pd.read_csv(Path(folder) / "trials.csv")


def _ranked(df: pd.DataFrame) -> pd.DataFrame:
    """Trials eligible for the top-k: full-budget COMPLETE ones, or (if none) anything with a score."""
    scored = df[df["status"] == "COMPLETE"].dropna(subset=["val_acc"])
    if scored.empty:
        scored = df[df["status"] != "FAILED"].dropna(subset=["val_acc"])
    return scored.sort_values(["val_acc", "number"], ascending=[False, True])


def _params(row: pd.Series) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if key.startswith("param_") and not (isinstance(value, float) and np.isnan(value)):
            out[key[6:]] = value.item() if hasattr(value, "item") else value
    return out


def _plot_history(df: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def _machine() -> dict[str, Any]:
    import torch

    return {"hostname": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_results(config: CampaignConfig, grid: ResultGrid, data: Any, wall_s: float) -> CampaignResult:
    """Write every output file of a campaign into ``config.folder``; ``data`` (ImageData) feeds the preview."""
    folder = config.folder
    try:
        study = load_study(config)
    except KeyError:
        study = None
    df = trials_table(config, grid, study)
    files = {"trials": folder / "trials.csv"}
    df.to_csv(files["trials"], index=False)
    ranked = _ranked(df) if not df.empty else df
    versions = library_versions()
    (folder / "top_k").mkdir(exist_ok=True)
    for old in (folder / "top_k").glob("rank*.json"):
        old.unlink()
    best = None
    for i, (_, row) in enumerate(ranked.head(config.top_k).iterrows(), start=1):
        policy = policy_from_params(config.space, _params(row), **config.space_options).with_provenance(
            campaign=config.name, trial_number=None if pd.isna(row["number"]) else int(row["number"]),
            trial_id=row["trial_id"], rank=i, score=float(row["val_acc"]), metric="val_acc",
            objective=config.objective, dataset=config.dataset, seed=config.seed, space=config.space,
            params=_params(row), versions=versions)
        save_policy(policy, folder / "top_k" / f"rank{i}.json")
        if i == 1:
            best = policy
            files["best_policy"] = save_policy(policy, folder / "best_policy.json")
    files["history_png"] = _plot_history(df, folder / "history.png") if not df.empty else None
    files["importances_png"] = _plot_importances(study, folder / "importances.png")
    if best is not None:
        spread = data.images[:: max(1, len(data.images) // 8)][:8]  # one image from across the classes
        files["preview_png"] = preview_policy(best, spread, folder / "best_policy_preview.png", seed=config.seed)
    counts = {s: int((df["status"] == s).sum()) if not df.empty else 0 for s in STATUS_ORDER}
    best_score = float(ranked.iloc[0]["val_acc"]) if len(ranked) else None
    summary = {
        "campaign": config.name, "config": config.public_dict(), "best_score": best_score,
        "best_trial": None if best is None else best.provenance.get("trial_number"),
        "best_params": None if best is None else best.provenance.get("params"),
        "counts": counts, "num_trials": int(len(df)), "wall_s": round(wall_s, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": _machine(), "versions": versions,
        "files": {k: str(v.relative_to(folder)) for k, v in files.items() if v is not None},
    }
    files["summary"] = folder / "summary.json"
    files["summary"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return CampaignResult(folder, best_score, summary["best_params"], counts, wall_s,
                          {k: v for k, v in files.items() if v is not None})
