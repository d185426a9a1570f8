"""The campaign loop: one Ray Tune experiment driven by OptunaSearch, results in ``<output>/<name>/``.

``mode: pbt`` campaigns share the folder, config, data and Ray set-up here and run their population in
:mod:`policy_search.pbt` (Ray's PopulationBasedTraining, no Optuna study).

Folder layout: ``config.yaml`` (the validated config, secrets stripped), ``study.db`` (the Optuna study,
unless ``storage`` names another database), ``splits.json``, ``tune/`` (Tune's experiment, restorable) and
the result files written by :mod:`policy_search.results`.

A trial that raises (invalid policy, ``TrainingDiverged``, out of memory) errors in Tune, is told to Optuna
as FAIL and shows up in ``trials.csv`` with its error; the campaign still runs ``num_trials`` trials.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import optuna  # noqa: E402,I001  (after .session: it sets the Ray environment first)
import ray  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from search_spaces import Policy, Schedule  # noqa: E402
from search_spaces.spaces import SPACES_BY_NAME, baseline_params, grid_space, policy_from_params  # noqa: E402
from trainers.proxy import ProxyData  # noqa: E402

from .config import CampaignConfig, validate_config  # noqa: E402
from .objectives import Objective, make_objective  # noqa: E402
from .pbt import fit_pbt  # noqa: E402
from .race import RaceResult, race_entries, run_race  # noqa: E402
from .results import ranked_trials, trial_policy, trials_table, write_results  # noqa: E402
from .session import (
    RAY_ENV,
    STALE_ATTR,
    STUDY_ATTR,
    TUNE_NAME,
    CampaignError,
    CampaignResult,
    Progress,
    load_campaign_config,
    load_study,
    prepare_data,
    ray_session,
    save_config,
    study_storage,
    trial_dirname,
    tune_dir,
)
from .tracking import tracking_callbacks  # noqa: E402

__all__ = ["CampaignResult", "CampaignError", "Progress", "TrialJob", "CampaignSearch", "run_campaign",
           "resume_campaign", "run_trial", "load_study", "load_campaign_config", "fail_stale_trials",
           "prepare_data", "ray_session", "tune_dir", "make_tuner", "make_trainable", "STUDY_ATTR", "STALE_ATTR",
           "RAY_ENV", "TUNE_NAME"]


# ---------------------------------------------------------------------------------------------
# Trainable (runs in Ray workers)


@dataclass(frozen=True)
class TrialJob:
    """The constant part of every trial: how to turn params into a policy and how to score it."""

    space: str
    space_options: dict[str, Any]
    objective: Objective


def run_trial(config: dict[str, Any], *, job: TrialJob, payload: Any) -> None:
    """Ray Tune function trainable: rebuild the policy from the trial's params, then let the objective score it
    (``payload`` is the objective's shared state). Exceptions propagate: Tune marks the trial ERROR and the
    searcher tells Optuna FAIL."""
    policy = policy_from_params(job.space, config, **job.space_options)
    node_id = ray.get_runtime_context().get_node_id()
    job.objective.run(policy, payload, lambda metrics: tune.report({**metrics, "node_id": node_id}))


class CampaignSearch(OptunaSearch):
    """OptunaSearch that (1) records the Tune trial id on each study trial, (2) tells Optuna the truth about
    errored trials (FAIL, even after some reports) and ASHA-stopped ones (PRUNED, not COMPLETE) and (3) after
    ``Tuner.restore`` reconciles Tune's snapshot with the study, which may be ahead of it (see :meth:`restore`)."""

    def __init__(self, *args: Any, max_t: int | None = None, num_trials: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_t = max_t
        self._num_trials = num_trials
        self._recovered = 0  # study trials that finished after Tune's last snapshot, unknown to Tune
        self._finished_in_study: set[str] = set()  # Tune trials to re-run whose study trial already finished

    def restore(self, checkpoint_path: str) -> None:
        """Restore the searcher state of Tune's last snapshot, then reconcile it with the study.

        A trial that finished after the snapshot is either unknown to the restored Tune experiment (it stays in
        the study, ``trials.csv`` lists it from there and it counts towards ``num_trials``) or known to it as
        unfinished (Tune runs it again; the study keeps its first result, see :meth:`_record_rerun`).
        """
        super().restore(checkpoint_path)
        trials = self._ot_study.get_trials(deepcopy=False)
        state = {t._trial_id: t.state for t in trials}
        self._recovered = sum(1 for t in trials if t.state.is_finished() and not t.user_attrs.get(STALE_ATTR)
                              and t.user_attrs.get(STUDY_ATTR) not in self._ot_trials)
        self._finished_in_study = {tid for tid, ot in self._ot_trials.items() if tid not in self._completed_trials
                                   and state.get(ot._trial_id, TrialState.RUNNING).is_finished()}

    def suggest(self, trial_id: str) -> dict | str | None:
        total = getattr(self, "_num_trials", None)
        if (total is not None and trial_id not in self._ot_trials
                and len(self._ot_trials) + getattr(self, "_recovered", 0) >= total):
            return Searcher.FINISHED  # trials recovered from the study already make up the request
        cfg = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(STUDY_ATTR, trial_id)
        return cfg

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in getattr(self, "_finished_in_study", ()):
            return  # a re-run of a trial the study already finished: it takes no more reports
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._ot_trials and trial_id not in self._completed_trials:
            ot_trial = self._ot_trials[trial_id]
            if self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
                self._record_rerun(trial_id, ot_trial, result, error)  # failed by resume, then re-run
                return
            state = None
            if error:
                state = TrialState.FAIL
            elif self._max_t and result and result.get("epoch", self._max_t) < self._max_t:
                state = TrialState.PRUNED
            if state is not None:
                try:
                    self._ot_study.tell(self._ot_trials[trial_id], state=state, skip_if_finished=True)
                except Exception:  # noqa: BLE001 - same tolerance as OptunaSearch
                    pass
                self._completed_trials.add(trial_id)
                return
        super().on_trial_complete(trial_id, result=result, error=error)

    def _record_rerun(self, trial_id: str, ot_trial: optuna.Trial, result: dict | None, error: bool) -> None:
        """A trial re-run after ``Tuner.restore`` finished. If the study already has its result (it finished
        after Tune's last snapshot), that first result stands; if :func:`fail_stale_trials` FAILed it, the
        re-run's result is added as a new study trial."""
        frozen = self._ot_study._storage.get_trial(ot_trial._trial_id)
        if frozen.state in (TrialState.COMPLETE, TrialState.PRUNED):
            self._completed_trials.add(trial_id)
            return
        value = None if (error or not result) else result.get(self.metric)
        pruned = bool(self._max_t and result and result.get("epoch", self._max_t) < self._max_t)
        state = TrialState.FAIL if value is None else (TrialState.PRUNED if pruned else TrialState.COMPLETE)
        self._ot_study.add_trial(optuna.trial.create_trial(
            params=frozen.params, distributions=frozen.distributions, state=state,
            value=value if state == TrialState.COMPLETE else None,
            intermediate_values={int(result["training_iteration"]): value} if value is not None and result else None,
            user_attrs={**frozen.user_attrs, STUDY_ATTR: trial_id, "rerun_of": frozen.number}))
        self._completed_trials.add(trial_id)


# ---------------------------------------------------------------------------------------------
# Driver


def _sampler(config: CampaignConfig) -> optuna.samplers.BaseSampler:
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    if config.sampler == "grid":
        return optuna.samplers.GridSampler(grid_space(config.space, **config.space_options), seed=config.seed)
    return optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=min(10, max(2, config.num_trials // 3)))


def make_trainable(config: CampaignConfig, proxy_data: ProxyData, objective: Objective | None = None) -> Any:
    """The search trainable with the objective's shared state prepared once, in the driver, and its resources."""
    objective = objective or make_objective(config)
    job = TrialJob(config.space, dict(config.space_options), objective)
    resources = {"cpu": config.resources.cpu, "gpu": config.resources.gpu}
    return tune.with_resources(tune.with_parameters(run_trial, job=job, payload=objective.prepare(proxy_data)),
                               resources)


def make_tuner(config: CampaignConfig, trainable: Any, objective: Objective | None = None) -> tune.Tuner:
    """The search experiment: OptunaSearch (TPE, random or grid) over the config's space, the objective's
    scheduler, ``num_trials`` trials."""
    objective = objective or make_objective(config)
    opts = dict(config.space_options)
    searcher = CampaignSearch(
        space=partial(SPACES_BY_NAME[config.space], **opts), metric="val_acc", mode="max",
        sampler=_sampler(config), storage=study_storage(config), study_name=config.name, max_t=objective.max_t,
        num_trials=config.num_trials,
        points_to_evaluate=[baseline_params(config.space, b, **opts) for b in config.resolved_baselines()] or None,
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=objective.scheduler(), metric="val_acc",
                                    mode="max", num_samples=config.num_trials,
                                    max_concurrent_trials=config.max_concurrent,
                                    trial_dirname_creator=trial_dirname, reuse_actors=config.reuse_actors),
        run_config=tune.RunConfig(name=TUNE_NAME, storage_path=str(config.folder),
                                  failure_config=tune.FailureConfig(max_failures=0), verbose=0,
                                  callbacks=tracking_callbacks(config, "search")),
    )


@contextmanager
def _watch(config: CampaignConfig, on_progress: Callable[[Progress], None] | None, t0: float) -> Iterator[None]:
    """Poll the study once a second and hand snapshots to ``on_progress`` (driver thread, no Tune pickling)."""
    if on_progress is None:
        yield
        return
    stop = threading.Event()
    storage = study_storage(config)

    def snapshot() -> None:
        try:
            trials = optuna.load_study(study_name=config.name, storage=storage).get_trials(deepcopy=False)
        except Exception:  # noqa: BLE001 - the study may not exist yet
            return
        done = [t for t in trials if t.state.is_finished()]
        values = [t.value for t in done if t.state == TrialState.COMPLETE and t.value is not None]
        on_progress(Progress(min(len(done), config.num_trials), config.num_trials,
                             len(trials) - len(done), max(values) if values else None, time.monotonic() - t0))

    def poll() -> None:
        while not stop.wait(1.0):
            snapshot()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        snapshot()


def _confirm(config: CampaignConfig, grid: Any, proxy_data: ProxyData,
             on_progress: Callable[[Progress], None] | None, t0: float) -> tuple[Any, RaceResult | None]:
    """The search's trials table, then (``race.enabled``) the confirmation race of its top policies against
    the baselines at full target fidelity."""
    try:
        study = load_study(config)
    except KeyError:
        study = None
    df = trials_table(config, grid, study)
    if not config.race.enabled:
        return df, None
    searched: list[tuple[str, Policy | Schedule]] = []
    for rank, (_, row) in enumerate(ranked_trials(df).head(config.race.top_k).iterrows(), start=1):
        searched.append((f"rank{rank}", trial_policy(config, row, rank)))
    race = run_race(config, race_entries(config, searched), proxy_data, on_progress=on_progress, t0=t0)
    return df, race


def _search(config: CampaignConfig, proxy_data: ProxyData, data: Any, t0: float,
            on_progress: Callable[[Progress], None] | None, restore: bool, resume_errored: bool = False
            ) -> CampaignResult:
    with ray_session(config):
        objective = make_objective(config)
        trainable = make_trainable(config, proxy_data, objective)
        if restore:
            tuner = tune.Tuner.restore(str(tune_dir(config.folder)), trainable=trainable,
                                       resume_errored=resume_errored)
        else:
            tuner = make_tuner(config, trainable, objective)  # creates the study before the watcher reads it
        with _watch(config, on_progress, t0):
            grid = tuner.fit()
        df, race = _confirm(config, grid, proxy_data, on_progress, t0)
    return write_results(config, df, data, wall_s=time.monotonic() - t0, race=race)


def run_campaign(config: CampaignConfig | dict[str, Any],
                 on_progress: Callable[[Progress], None] | None = None) -> CampaignResult:
    """Run a new campaign to completion (search, then the confirmation race) and write its results."""
    config = validate_config(config)
    if tune.Tuner.can_restore(str(tune_dir(config.folder))):
        raise CampaignError(f"campaign {config.folder} already exists; resume it or pick another name")
    config.folder.mkdir(parents=True, exist_ok=True)
    save_config(config)
    t0 = time.monotonic()
    data, splits, proxy_data = prepare_data(config)
    if config.mode == "pbt":
        return fit_pbt(config, proxy_data, t0, on_progress)
    return _search(config, proxy_data, data, t0, on_progress, restore=False)


def fail_stale_trials(config: CampaignConfig) -> int:
    """Mark RUNNING study trials FAIL (a killed driver leaves them); returns how many. No run may be active."""
    try:
        study = load_study(config)
    except KeyError:
        return 0
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, STALE_ATTR, True)
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    return len(stale)


def resume_campaign(folder: str | os.PathLike, resume_errored: bool = False, ray_address: str | None = None,
                    on_progress: Callable[[Progress], None] | None = None) -> CampaignResult:
    """Finish an interrupted campaign: FAIL stale RUNNING study trials, ``Tuner.restore`` and fit, then run
    (or finish: runs already in ``race_runs.csv`` are kept) the confirmation race."""
    config = load_campaign_config(folder)
    if ray_address:
        config = validate_config({**config.model_dump(), "ray_address": ray_address})
    exp = tune_dir(config.folder)
    if not tune.Tuner.can_restore(str(exp)):
        raise CampaignError(f"{folder}: nothing to resume (no Tune experiment in {exp})")
    if config.mode == "pbt":  # no study: PBT runs without Optuna
        t0 = time.monotonic()
        _, _, proxy_data = prepare_data(config)
        return fit_pbt(config, proxy_data, t0, on_progress, restore=True, resume_errored=resume_errored)
    fail_stale_trials(config)
    t0 = time.monotonic()
    data, _, proxy_data = prepare_data(config)
    return _search(config, proxy_data, data, t0, on_progress, restore=True, resume_errored=resume_errored)
