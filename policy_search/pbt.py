"""Population-based augmentation schedules (PBA, Ho et al. 2019): the ``mode: pbt`` campaign.

A population of proxy trainings runs under Ray Tune's ``PopulationBasedTraining`` (no Optuna: Ray refuses a
search algorithm next to PBT). Each member trains with the policy of its PBA point
(:mod:`search_spaces.pba`: two copies of each op, a probability bin and a magnitude bin each). Every
``perturbation_interval`` epochs a member checkpoints model, optimizer and its *history* (which member
trained each epoch with which point); PBT then lets the bottom quantile clone a top member's checkpoint and
explore (PBA's step: resample a bin with small probability, else shift it). An exploited member continues
from the better member's weights and inherits its history, so the history in a member's last checkpoint is
the schedule it was trained with. The best member's history becomes ``best_schedule.json``.

Outputs (besides the shared ``config.yaml``, ``splits.json`` and ``tune/``): ``population.csv`` (one row per
member and epoch as reported: member, epoch, val_acc, exploited_from, the bins), ``best_schedule.json`` and
``top_k/rank<i>.json`` (``augschedule/1.0``), ``schedule.png`` and ``summary.json`` (lineage of the best
member, perturbation count).
"""

from __future__ import annotations

import json
import random
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import torch
from ray import tune
from ray.tune.schedulers import PopulationBasedTraining

from search_spaces import Schedule, Segment, save_policy
from search_spaces.pba import PBA_OPS, explore, op_curves, pba_policy, random_params, zero_params
from trainers.engine import load_checkpoint
from trainers.plotting import pyplot
from trainers.proxy import ProxyConfig, ProxyData, train_proxy

from .config import CampaignConfig
from .race import RaceResult, race_entries, run_race
from .reliability import guard_trainable
from .session import (
    TUNE_NAME,
    CampaignResult,
    Progress,
    library_versions,
    machine_info,
    proxy_config,
    ray_session,
    trial_dirname,
    tune_dir,
)

__all__ = ["MemberJob", "PBAExplore", "run_member", "fit_pbt", "write_pbt_results", "population_table",
           "ranked_members", "member_schedule",
           "member_table", "schedule_from_history", "plot_schedule"]

STATE_FILE, HISTORY_FILE = "state.pt", "history.json"
_PROGRESS_HOOKS: dict[str, Callable[[Progress], None]] = {}  # campaign folder -> progress callback (driver only)


# ---------------------------------------------------------------------------------------------
# Trainable (runs in Ray workers)


@dataclass(frozen=True)
class MemberJob:
    """The constant part of every member: the PBA space, the proxy budget and the checkpoint interval."""

    ops: tuple[str, ...]
    copies: int
    proxy: dict[str, Any]
    seed: int
    interval: int


def member_seed(seed: int, trial_id: str) -> int:
    """A member's training seed: the campaign seed plus the member's index (Tune's ``<prefix>_<index>`` ids)."""
    suffix = trial_id.rsplit("_", 1)[-1]
    return seed + (int(suffix) if suffix.isdigit() else zlib.crc32(trial_id.encode()) % 100_000)


def run_member(config: dict[str, Any], *, job: MemberJob, data: ProxyData) -> None:
    """Ray Tune function trainable: one population member.

    Continues from ``tune.get_checkpoint()`` (its own after a pause or resume, a better member's after an
    exploit: then the first report names it in ``exploited_from``), trains with the policy of
    ``config["params"]``, reports every epoch and checkpoints every ``job.interval`` epochs and at the end.
    """
    member = tune.get_context().get_trial_id()
    params = {k: int(v) for k, v in config["params"].items()}
    policy = pba_policy(params, job.ops, job.copies)
    history: list[dict[str, Any]] = []
    resume, donor = None, ""
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_checkpoint(Path(folder) / STATE_FILE)
            history = json.loads((Path(folder) / HISTORY_FILE).read_text())
        if history and history[-1]["member"] != member:
            donor = history[-1]["member"]
    proxy = ProxyConfig.from_dict({**job.proxy, "seed": member_seed(job.seed, member)})
    node_id = ray.get_runtime_context().get_node_id()
    encoded = json.dumps(params, separators=(",", ":"))
    state = {"first": True}

    def on_state(m: Any, snapshot: Callable[[], dict[str, Any]]) -> None:
        history.append({"epoch": m.epoch, "member": member, "val_acc": m.val_acc, "params": params})
        metrics = {"val_acc": m.val_acc, "val_loss": m.val_loss, "train_loss": m.train_loss, "epoch": m.epoch,
                   "member": member, "exploited_from": donor if state["first"] else "", "params": encoded,
                   "node_id": node_id}
        state["first"] = False
        if m.epoch % job.interval and m.epoch != proxy.epochs:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(snapshot(), Path(folder) / STATE_FILE)
            (Path(folder) / HISTORY_FILE).write_text(json.dumps(history))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    train_proxy(policy, data, proxy, resume=resume, on_state=on_state)


class PBAExplore:
    """PBT's ``custom_explore_fn``: PBA's explore step on ``config["params"]`` (seeded, picklable)."""

    def __init__(self, resample_probability: float, max_shift: int, seed: int) -> None:
        self.resample_probability, self.max_shift = resample_probability, max_shift
        self.rng = random.Random(seed)

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        params = explore(config["params"], self.rng, self.resample_probability, self.max_shift)
        return {**config, "params": params}


class _ProgressCallback(tune.Callback):
    """Member-epochs done / population x epochs, best val_acc; the hook is looked up by campaign folder, so
    the pickled callback (Tune saves it with the experiment) carries no driver objects."""

    def __init__(self, key: str, total: int) -> None:
        self.key, self.total = key, total
        self._epochs: dict[str, int] = {}
        self._best: float | None = None
        self._t0 = time.monotonic()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._epochs[trial.trial_id] = int(result.get("epoch") or 0)
        if result.get("val_acc") is not None:
            self._best = max(self._best or 0.0, float(result["val_acc"]))
        hook = _PROGRESS_HOOKS.get(self.key)
        if hook is not None:
            running = sum(t.status == "RUNNING" for t in trials)
            hook(Progress(min(sum(self._epochs.values()), self.total), self.total, running, self._best,
                          time.monotonic() - self._t0))

    def __getstate__(self) -> dict[str, Any]:
        return {"key": self.key, "total": self.total}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["key"], state["total"])


# ---------------------------------------------------------------------------------------------
# Driver


def _space(config: CampaignConfig) -> tuple[tuple[str, ...], int]:
    return tuple(config.pbt.ops or PBA_OPS), config.pbt.copies


def _tuner(config: CampaignConfig, trainable: Any) -> tune.Tuner:
    pbt = config.pbt
    ops, copies = _space(config)
    rng = random.Random(config.seed)
    inits = [zero_params(ops, copies) if pbt.init == "zero" else random_params(rng, ops, copies)
             for _ in range(pbt.population_size)]
    scheduler = PopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=pbt.perturbation_interval,
        quantile_fraction=pbt.quantile_fraction, synch=pbt.synch,
        custom_explore_fn=PBAExplore(pbt.resample_probability, pbt.max_shift, config.seed))
    total = pbt.population_size * config.proxy.epochs
    return tune.Tuner(
        trainable,
        param_space={"params": tune.grid_search(inits)},
        tune_config=tune.TuneConfig(scheduler=scheduler, metric="val_acc", mode="max", num_samples=1,
                                    max_concurrent_trials=config.max_concurrent, trial_dirname_creator=trial_dirname,
                                    reuse_actors=True),  # exploits and pauses restart the function, not the worker
        run_config=tune.RunConfig(
            name=TUNE_NAME, storage_path=str(config.folder), stop={"training_iteration": config.proxy.epochs},
            # a member whose worker (or node) died runs again from its latest checkpoint; an error it raised is not
            # retried (the trial guard replays it)
            failure_config=tune.FailureConfig(max_failures=config.max_failures), verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # an exploit may read any member's latest
            callbacks=[_ProgressCallback(str(config.folder), total)]),
    )


def _trainable(config: CampaignConfig, proxy_data: ProxyData) -> Any:
    ops, copies = _space(config)
    job = MemberJob(ops, copies, proxy_config(config).to_dict(), config.seed, config.pbt.perturbation_interval)
    return guard_trainable(config, tune.with_parameters(run_member, job=job, data=proxy_data))


@contextmanager
def _progress(config: CampaignConfig, on_progress: Callable[[Progress], None] | None) -> Iterator[None]:
    if on_progress is not None:
        _PROGRESS_HOOKS[str(config.folder)] = on_progress
    try:
        yield
    finally:
        _PROGRESS_HOOKS.pop(str(config.folder), None)


def fit_pbt(config: CampaignConfig, proxy_data: ProxyData, t0: float,
            on_progress: Callable[[Progress], None] | None = None, restore: bool = False,
            resume_errored: bool = False) -> CampaignResult:
    """Run (or, with ``restore``, resume) the population and write the results; called by
    :func:`policy_search.campaign.run_campaign` / ``resume_campaign`` once the folder and data are ready."""
    trainable = _trainable(config, proxy_data)
    with ray_session(config), _progress(config, on_progress):
        if restore:
            tuner = tune.Tuner.restore(str(tune_dir(config.folder)), trainable=trainable,
                                       resume_errored=resume_errored)
        else:
            tuner = _tuner(config, trainable)
        grid = tuner.fit()
        race = None
        if config.race.enabled:  # the best schedules against the baselines at the target recipe
            searched = [(f"rank{rank}", schedule) for rank, schedule in enumerate(
                (member_schedule(config, result)[0] for result in ranked_members(config, grid)[: config.race.top_k]),
                start=1)]
            race = run_race(config, race_entries(config, searched), proxy_data, on_progress=on_progress, t0=t0)
    return write_pbt_results(config, grid, wall_s=time.monotonic() - t0, race=race)


# ---------------------------------------------------------------------------------------------
# Results


def _rows(trial_id: str, frame: pd.DataFrame | None) -> list[dict[str, Any]]:
    if frame is None or frame.empty or "epoch" not in frame:
        return []
    rows = []
    for _, r in frame.iterrows():
        params = json.loads(r["params"]) if isinstance(r.get("params"), str) else {}
        donor = r.get("exploited_from")  # pandas reads "" as NaN
        rows.append({"member": trial_id, "epoch": int(r["epoch"]), "val_acc": r.get("val_acc"),
                     "train_loss": r.get("train_loss"), "exploited_from": donor if isinstance(donor, str) else "",
                     **params})
    return rows


def population_table(folder: str | Path) -> pd.DataFrame:
    """One row per member and reported epoch, in report order: ``population.csv`` when the campaign has
    finished, else (while it runs, and to write that file) the members' ``progress.csv`` files."""
    folder = Path(folder)
    if (folder / "population.csv").is_file():
        frame = pd.read_csv(folder / "population.csv")
        return frame.assign(exploited_from=frame["exploited_from"].fillna("").astype(str)) if len(frame) else frame
    rows: list[dict[str, Any]] = []
    for progress in sorted(tune_dir(folder).glob("*/progress.csv")):  # complete where result.json may not be
        rows += _rows(progress.parent.name, pd.read_csv(progress))
    return pd.DataFrame(rows)


def member_table(population: pd.DataFrame, epochs: int) -> pd.DataFrame:
    """Per member: last epoch, last and best val_acc, how often it was exploited, status (COMPLETE at the end)."""
    if population.empty:
        return pd.DataFrame(columns=["member", "status", "epoch", "val_acc", "best_val_acc", "exploits"])
    out = []
    for member, part in population.groupby("member", sort=True):
        last = part.iloc[-1]
        exploits = int((part["exploited_from"].fillna("").astype(str) != "").sum())
        out.append({"member": member, "status": "COMPLETE" if int(last["epoch"]) >= epochs else "RUNNING",
                    "epoch": int(last["epoch"]), "val_acc": last["val_acc"], "best_val_acc": part["val_acc"].max(),
                    "exploits": exploits})
    return pd.DataFrame(out).sort_values(["status", "val_acc"], ascending=[True, False]).reset_index(drop=True)


def schedule_from_history(history: list[dict[str, Any]], ops: tuple[str, ...], copies: int,
                          name: str = "pbt-schedule") -> tuple[Schedule, list[dict[str, Any]]]:
    """The schedule a member trained with (consecutive epochs with equal bins merged into one segment)
    and its lineage: which member trained which epochs (``[start_epoch, end_epoch)``, 0-based)."""
    segments: list[list[Any]] = []
    lineage: list[dict[str, Any]] = []
    for rec in history:
        start = int(rec["epoch"]) - 1
        if segments and segments[-1][2] == rec["params"]:
            segments[-1][1] = start + 1
        else:
            segments.append([start, start + 1, rec["params"]])
        if lineage and lineage[-1]["member"] == rec["member"]:
            lineage[-1]["end_epoch"] = start + 1
        else:
            lineage.append({"member": rec["member"], "start_epoch": start, "end_epoch": start + 1})
    schedule = Schedule(tuple(Segment(a, b, pba_policy(p, ops, copies, name=f"pba-epochs-{a}-{b}"))
                              for a, b, p in segments), name=name)
    return schedule, lineage


def plot_schedule(history: list[dict[str, Any]], ops: tuple[str, ...], copies: int, path: Path,
                  title: str = "") -> Path:
    """Two panels over epochs: each op's summed probability and probability-weighted magnitude bin."""
    plt = pyplot()

    epochs = [int(r["epoch"]) - 1 for r in history] + [int(history[-1]["epoch"])]  # epoch e spans [e, e + 1)
    curves = [op_curves(r["params"], ops, copies) for r in history]
    curves.append(curves[-1])
    fig, (ax_p, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    cmap = plt.get_cmap("tab20")
    for i, op in enumerate(ops):
        ax_p.step(epochs, [c[op][0] for c in curves], where="post", color=cmap(i % 20), label=op)
        ax_m.step(epochs, [c[op][1] for c in curves], where="post", color=cmap(i % 20), label=op)
    ax_p.set(xlabel="epoch (0-based)", ylabel=f"probability (sum of {copies} copies)", title="probability")
    ax_m.set(xlabel="epoch (0-based)", ylabel="magnitude bin (0-9, probability-weighted)", title="magnitude")
    ax_m.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title or "PBT schedule of the best member", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _history(result: Any) -> list[dict[str, Any]]:
    if result.checkpoint is None:
        return []
    with result.checkpoint.as_directory() as folder:
        return json.loads((Path(folder) / HISTORY_FILE).read_text())


def ranked_members(config: CampaignConfig, grid: Any) -> list[Any]:
    """The finished members' Tune results, best final ``val_acc`` first (failed members left out)."""
    members = member_table(population_table(config.folder), config.proxy.epochs)
    results = {Path(r.path).name: r for r in grid}
    ranked = members[(members["status"] == "COMPLETE")
                     & members["member"].map(lambda m: m in results and results[m].error is None)]
    return [results[m] for m in ranked.dropna(subset=["val_acc"])["member"]]


def member_schedule(config: CampaignConfig, result: Any, name: str = "pbt-schedule"
                    ) -> tuple[Schedule, list[dict[str, Any]], list[dict[str, Any]]]:
    """A finished member's schedule, lineage and history (from its last checkpoint)."""
    ops, copies = _space(config)
    history = _history(result)
    schedule, lineage = schedule_from_history(history, ops, copies, name=name)
    return schedule, lineage, history


def write_pbt_results(config: CampaignConfig, grid: Any, wall_s: float, race: RaceResult | None = None
                      ) -> CampaignResult:
    """Write ``population.csv``, the ranked schedules, ``schedule.png`` and ``summary.json`` (see the module
    docstring); with a confirmation race, ``best_policy.json`` is its winner and the summary holds its table."""
    folder, epochs = config.folder, config.proxy.epochs
    ops, copies = _space(config)
    (folder / "population.csv").unlink(missing_ok=True)  # a resumed campaign rebuilds it
    population = population_table(folder)
    files: dict[str, Path] = {"population": folder / "population.csv"}
    population.to_csv(files["population"], index=False)
    members = member_table(population, epochs)
    results = {Path(r.path).name: r for r in grid}
    failed = [m for m, r in results.items() if r.error is not None]
    ranked = members[(members["status"] == "COMPLETE") & ~members["member"].isin(failed)].dropna(subset=["val_acc"])
    versions = library_versions()
    (folder / "top_k").mkdir(exist_ok=True)
    for old in (folder / "top_k").glob("rank*.json"):
        old.unlink()
    best: dict[str, Any] = {}
    for rank, (_, row) in enumerate(ranked.head(config.top_k).iterrows(), start=1):
        schedule, lineage, history = member_schedule(config, results[row["member"]], name=f"{config.name}-rank{rank}")
        schedule = schedule.with_provenance(
            campaign=config.name, mode="pbt", member=row["member"], rank=rank, score=float(row["val_acc"]),
            metric="val_acc", dataset=config.dataset, train_size=config.train_size, seed=config.seed,
            proxy=config.proxy.model_dump(), pbt=config.pbt.model_dump(), lineage=lineage, versions=versions)
        save_policy(schedule, folder / "top_k" / f"rank{rank}.json")
        if rank == 1:
            files["best_schedule"] = save_policy(schedule, folder / "best_schedule.json")
            files["schedule_png"] = plot_schedule(history, ops, copies, folder / "schedule.png",
                                                  f"{config.name}: best member {row['member']} "
                                                  f"(val_acc {row['val_acc']:.4f})")
            best = {"member": row["member"], "score": float(row["val_acc"]), "lineage": lineage,
                    "segments": len(schedule.segments), "params": history[-1]["params"] if history else None}
    global_log = tune_dir(folder) / "pbt_global.txt"
    perturbations = len(global_log.read_text().splitlines()) if global_log.is_file() else 0
    counts = {"COMPLETE": int(len(ranked)), "FAILED": len(failed),
              "RUNNING": int(len(members)) - int(len(ranked)) - len(failed)}
    summary = {
        "campaign": config.name, "mode": "pbt", "config": config.public_dict(), "best_score": best.get("score"),
        "best_member": best.get("member"), "lineage": best.get("lineage"), "segments": best.get("segments"),
        "perturbations": perturbations,
        "exploited_epochs": int((population["exploited_from"].astype(str) != "").sum()) if len(population) else 0,
        "counts": counts, "population_size": config.pbt.population_size, "epochs": epochs,
        "member_epochs": int(len(population)), "wall_s": round(wall_s, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(), "versions": versions,
        "files": {k: str(v.relative_to(folder)) for k, v in files.items()},
    }
    if race is not None:
        files.update(race.files)
        summary["race"] = race.summary()
        winner = race.winner_policy()
        if winner is not None:
            files["best_policy"] = save_policy(winner, folder / "best_policy.json")
        summary["files"] = {k: str(v.relative_to(folder)) for k, v in files.items()}
    files["summary"] = folder / "summary.json"
    files["summary"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return CampaignResult(folder, best.get("score"), best.get("params"), counts, wall_s, files, race=race)

