"""The campaign loop: one Ray Tune experiment driven by :class:`CampaignSearch` (an Optuna study), results in
``<output>/<name>/``.

``mode: pbt`` campaigns share the folder, config, data and Ray set-up here and run their population in
:mod:`policy_search.pbt` (Ray's PopulationBasedTraining, no Optuna study).

Folder layout: ``config.yaml`` (the validated config, secrets stripped), ``campaign_id`` (the campaign's id),
``study.db`` (the Optuna study, unless ``storage`` names another database: there the study is
``<name>-<id8>``, see :func:`policy_search.session.study_name`), ``splits.json``, ``tune/`` (Tune's experiment,
restorable) and the result files written by :mod:`policy_search.results`.

A trial that raises (invalid policy, ``TrainingDiverged``, out of memory) errors in Tune, is told to Optuna
as FAIL and shows up in ``trials.csv`` with its error; the campaign still runs ``num_trials`` trials.

A storage outage longer than ``storage_retry_s`` stops the experiment (:class:`StorageStop`) with one line
(:class:`~policy_search.reliability.StorageUnavailable`); the results the study could not take wait in
``pending_tells.json`` until resume tells them (:func:`replay_pending`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any

import optuna  # noqa: E402,I001  (after .session: it sets the Ray environment first)
import ray  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.result import TRAINING_ITERATION  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402
from ray.tune.stopper import Stopper  # noqa: E402

from search_spaces import Policy, Schedule  # noqa: E402
from search_spaces.spaces import SPACES_BY_NAME, baseline_params, grid_space, policy_from_params  # noqa: E402
from trainers.proxy import ProxyData  # noqa: E402

from .config import CampaignConfig, validate_config  # noqa: E402
from .objectives import Objective, make_objective  # noqa: E402
from .pbt import fit_pbt  # noqa: E402
from .race import RaceResult, race_entries, run_race  # noqa: E402
from .reliability import (  # noqa: E402
    PENDING_TELLS,
    CampaignInterrupted,
    InterruptWatch,
    StateSigner,
    StorageUnavailable,
    clear_trial_records,
    guard_trainable,
    log_resume,
    mark_interrupted,
    outage_message,
    read_pending,
    resume_plan,
    retry_storage,
    set_tune_state_aside,
    sign_tuner_file,
    take_interrupted,
    verify_tune_state,
    write_pending,
)
from .results import ranked_trials, trial_policy, trials_table, write_results  # noqa: E402
from .session import (
    RAY_ENV,
    RERUN_ATTR,
    STALE_ATTR,
    STUDY_ATTR,
    TUNE_NAME,
    CampaignError,
    CampaignResult,
    Progress,
    create_campaign_study,
    load_campaign_config,
    load_study,
    prepare_data,
    ray_session,
    save_config,
    stale_numbers,
    study_name,
    study_storage,
    trial_dirname,
    tune_dir,
)
from .tracking import tracking_callbacks  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["CampaignResult", "CampaignError", "Progress", "TrialJob", "CampaignSearch", "run_campaign",
           "resume_campaign", "run_trial", "load_study", "load_campaign_config", "fail_stale_trials",
           "prepare_data", "ray_session", "tune_dir", "make_tuner", "make_trainable", "STUDY_ATTR", "STALE_ATTR",
           "RAY_ENV", "TUNE_NAME", "CampaignInterrupted", "StorageStop", "StorageUnavailable", "replay_pending"]

#: The driver's current campaign (folder, ``storage_retry_s``) while an experiment runs: a searcher that Tune
#: unpickled on resume follows the folder (it may have moved) and the retry window of the config in effect.
_DRIVER: ContextVar[tuple[str, float] | None] = ContextVar("policy_search_campaign_driver", default=None)


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


class _Outage:
    """The storage failure that ended a searcher's experiment, shared with its :class:`StorageStop` (Tune pickles
    both in one ``tuner.pkl``, so they stay one object on resume); pickled without the failure."""

    def __init__(self) -> None:
        self.failure: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"failure": None}


class StorageStop(Stopper):
    """Ends the whole experiment (Tune's ``stop_all``) once its :class:`CampaignSearch` gave up on the storage;
    never stops a single trial."""

    def __init__(self, searcher: CampaignSearch) -> None:
        self._outage = searcher._outage

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self._outage.failure is not None


class CampaignSearch(Searcher):
    """A Ray Tune searcher over one Optuna study, through public Ray and Optuna APIs only.

    ``space`` is a define-by-run function ``fn(trial) -> None`` (or a dict of constants to add); each Tune trial
    gets one study trial from ``study.ask()`` (enqueued ``points_to_evaluate`` come first), which records the Tune
    trial id (user attr ``tune_trial_id``) and the reported metric per ``training_iteration``. Stopping early is
    the scheduler's job (ASHA), not Optuna's. Each trial's end is told to Optuna truthfully: FAIL for an errored
    trial (even after some reports) or a non-finite metric, PRUNED for one stopped before ``max_t`` (its reported
    ``epoch``; Optuna takes the last reported value), else COMPLETE with the last reported metric.

    The study lives in ``storage`` and outlasts the driver. After ``Tuner.restore`` (see :meth:`restore`) the
    study may be ahead of Tune's last snapshot:

    * a trial that finished after the snapshot, unknown to the restored experiment, stays in the study and counts
      towards ``num_trials`` (``suggest`` returns FINISHED once the study makes up the request);
    * a trial the snapshot knows as unfinished is run again by Tune: if the study finished it (COMPLETE or
      PRUNED), that first result stands; if it is FAILed (:func:`fail_stale_trials`, or an error re-run with
      ``resume_errored``) the re-run is added as a new study trial (user attr ``rerun_of``: the FAILed number).

    Every study call is retried while the storage is unreachable, for ``storage_retry_s`` seconds
    (:func:`~policy_search.reliability.retry_storage`). Past that the searcher sets :attr:`storage_failure`, asks
    for nothing more, and keeps in ``<folder>/pending_tells.json`` every result the study did not take: the ends of
    trials, and the last result of a running trial that reached ``max_t`` (its final one: Tune may stop the
    experiment before that trial's end arrives); :class:`StorageStop` then ends the experiment.
    """

    def __init__(self, space: Callable[[optuna.Trial], dict[str, Any] | None], *, metric: str, mode: str,
                 study_name: str, storage: optuna.storages.BaseStorage,
                 sampler: optuna.samplers.BaseSampler | None = None,
                 points_to_evaluate: list[dict[str, Any]] | None = None, max_t: int | None = None,
                 num_trials: int | None = None, storage_retry_s: float = 60.0,
                 folder: str | os.PathLike | None = None) -> None:
        super().__init__(metric=metric, mode=mode)
        self._space = space
        self._study_name = study_name
        self._study_storage = storage
        self._sampler = sampler or optuna.samplers.TPESampler()
        self._max_t = max_t
        self._num_trials = num_trials
        self._retry_s = storage_retry_s
        self._folder = str(folder) if folder is not None else None
        self._numbers: dict[str, int] = {}  # Tune trial id -> study trial number
        self._told: set[str] = set()  # Tune trials whose end the study knows
        self._reports: dict[str, dict[int, float]] = {}  # re-runs after restore: their reports, kept for the end
        self._recovered = 0  # study trials that finished after Tune's last snapshot, unknown to Tune
        self._study: optuna.Study | None = None  # not pickled: reopened from storage
        self._live: dict[str, optuna.Trial] = {}  # trials asked by this driver (a restored one has none)
        self._runtime()
        for point in points_to_evaluate or ():
            self._call(lambda point=point: self.study.enqueue_trial(point, skip_if_exists=True), "enqueue")

    def _runtime(self) -> None:
        """The state of one driver's run (not pickled)."""
        self._outage = getattr(self, "_outage", None) or _Outage()
        self._steps: dict[str, dict[int, float]] = {}  # live trials: their reported values
        self._last: dict[str, dict[str, Any]] = {}  # unfinished trials: their last result (metric, epoch)
        self._pending: list[dict[str, Any]] = []  # trial ends the study did not take (after a storage failure)

    @property
    def storage_failure(self) -> str | None:
        """Why the storage was given up (one line), or ``None``."""
        return self._outage.failure

    @property
    def study(self) -> optuna.Study:
        """The Optuna study (created if it does not exist)."""
        if self._study is None:
            self._study = optuna.create_study(
                study_name=self._study_name, storage=self._study_storage, sampler=self._sampler,
                pruner=optuna.pruners.NopPruner(), load_if_exists=True,
                direction="maximize" if self.mode == "max" else "minimize")
        return self._study

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_study": None, "_live": {}, "_steps": {}, "_last": {}, "_pending": []}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_retry_s": 60.0, "_folder": None, **state})  # (a searcher pickled before retries)
        self._runtime()

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return False  # the space, metric and mode are set at construction

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.storage_failure is not None:
            return Searcher.FINISHED  # nothing more is asked of a storage given up
        try:
            return self._suggest(trial_id)
        except StorageUnavailable as exc:
            self._give_up(exc)
            return Searcher.FINISHED

    def _suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if trial_id in self._numbers:  # asked before: the same parameters
            live = self._live.get(trial_id)
            return live.params if live is not None else self._call(
                lambda: self._frozen(self._numbers[trial_id]).params, "read")
        if self._num_trials is not None and len(self._numbers) + self._recovered >= self._num_trials:
            return Searcher.FINISHED  # with the trials recovered from the study, the request is made up
        asks = []

        def ask() -> optuna.Trial:
            asks.append(1)
            return self.study.ask()

        trial = self._call(ask, "ask")
        if len(asks) > 1:  # an ask that failed after its commit left a RUNNING trial nobody will tell
            self._call(lambda: self._drop_orphans(trial.number), "ask")
        try:
            constants = self._call(lambda: self._space(trial), "suggest")  # suggest_* again returns what is set
        except StorageUnavailable:
            raise
        except Exception:
            self._call(lambda: self.study.tell(trial, state=TrialState.FAIL), "tell")
            raise
        self._call(lambda: trial.set_user_attr(STUDY_ATTR, trial_id), "set_user_attr")
        self._numbers[trial_id] = trial.number
        self._live[trial_id] = trial
        return {**trial.params, **(constants or {})}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value, step = result.get(self.metric), result.get(TRAINING_ITERATION)
        if trial_id in self._told or trial_id not in self._numbers or value is None or step is None:
            return
        self._last[trial_id] = {self.metric: float(value), "epoch": result.get("epoch")}
        live = self._live.get(trial_id)
        (self._steps if live is not None else self._reports).setdefault(trial_id, {})[int(step)] = float(value)
        if self.storage_failure is not None:
            self._keep()  # this may be the trial's final result
        if live is None or self.storage_failure is not None:
            return  # (a re-run after restore has no optuna.Trial: its reports go to the study at its end)
        try:
            self._call(lambda: live.report(float(value), int(step)), "report")
        except StorageUnavailable as exc:
            self._give_up(exc)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._told or trial_id not in self._numbers:
            return
        self._told.add(trial_id)
        self._last.pop(trial_id, None)
        state, value = self._outcome(result, error)
        live = self._live.pop(trial_id, None)
        reports = self._steps.pop(trial_id, {}) if live is not None else self._reports.pop(trial_id, {})
        failure = None
        if self.storage_failure is None:
            try:
                if live is not None:
                    number = self._numbers[trial_id]
                    self._call(lambda: self.study.tell(number, value, state=state, skip_if_finished=True), "tell")
                else:
                    self._call(lambda: self._record_rerun(trial_id, state, value, reports), "tell")
                return
            except StorageUnavailable as exc:
                failure = exc
        self._pending.append(self._pending_tell(trial_id, state, value, reports, rerun=live is None))
        if failure is not None:
            self._give_up(failure)
        else:
            self._keep()

    def save(self, checkpoint_path: str) -> None:
        """The bookkeeping that changes during the experiment, as JSON (data, never code); the space, sampler
        and storage come from the constructor, and the study itself lives in its storage."""
        state = {"numbers": self._numbers, "told": sorted(self._told),
                 "reports": {tid: {str(step): v for step, v in steps.items()} for tid, steps in self._reports.items()}}
        with open(checkpoint_path, "w", encoding="utf-8") as f:
            json.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        """Restore the state of Tune's last snapshot, then reconcile it with the study: count the trials that
        finished in the study after the snapshot, unknown to it (not those FAILed as stale by resume)."""
        with open(checkpoint_path, encoding="utf-8") as f:
            state = json.load(f)
        self._numbers = {str(tid): int(n) for tid, n in state["numbers"].items()}
        self._told = set(state["told"])
        self._reports = {tid: {int(step): float(v) for step, v in steps.items()}
                         for tid, steps in state["reports"].items()}
        self._study, self._live = None, {}

        def recovered() -> int:
            stale = stale_numbers(self.study)
            return sum(1 for t in self.study.get_trials(deepcopy=False)
                       if t.state.is_finished() and t.number not in stale
                       and t.user_attrs.get(STUDY_ATTR) not in self._numbers)

        try:
            self._recovered = self._call(recovered, "restore")
        except StorageUnavailable as exc:
            self._give_up(exc)

    def _outcome(self, result: dict | None, error: bool) -> tuple[TrialState, float | None]:
        value = (result or {}).get(self.metric)
        if error or (value is not None and not math.isfinite(float(value))):
            return TrialState.FAIL, None
        if value is None or (self._max_t and (result or {}).get("epoch", self._max_t) < self._max_t):
            return TrialState.PRUNED, None
        return TrialState.COMPLETE, float(value)

    # -- storage -----------------------------------------------------------------------------------------

    def _call(self, call: Callable[[], Any], what: str) -> Any:
        """One study call under the retry window (:func:`~policy_search.reliability.retry_storage`)."""
        driver = _DRIVER.get()
        window = driver[1] if driver is not None else self._retry_s
        return retry_storage(call, window_s=window, storage=str(getattr(self._study_storage, "url", "the study")),
                             what=what)

    def _give_up(self, exc: StorageUnavailable) -> None:
        """The storage stayed unreachable: remember why (:class:`StorageStop` ends the experiment) and keep the
        results the study did not take."""
        if self._outage.failure is None:
            self._outage.failure = str(exc)
            logger.error("%s; the experiment stops, results kept in %s", exc, PENDING_TELLS)
        self._keep()

    def _keep(self) -> None:
        """Write ``pending_tells.json``: the trial ends the study did not take, and each unfinished trial whose
        last result was its final one (``epoch`` at ``max_t``), as COMPLETE (FAIL if not finite)."""
        if self.storage_failure is None:
            return
        tells = list(self._pending)
        for trial_id, last in self._last.items():
            if trial_id in self._told or self._max_t is None or (last.get("epoch") or 0) < self._max_t:
                continue
            state, value = self._outcome(last, False)
            reports = self._steps.get(trial_id) or self._reports.get(trial_id, {})
            tells.append(self._pending_tell(trial_id, state, value, reports, rerun=trial_id not in self._live))
        driver = _DRIVER.get()
        folder = driver[0] if driver is not None else self._folder
        if folder is None:
            return
        try:
            write_pending(folder, self.storage_failure, tells)
        except OSError as exc:  # FileWriteError: one line naming the file
            logger.error("%s: %d finished result(s) are only in this driver's memory", exc, len(tells))

    def _pending_tell(self, trial_id: str, state: TrialState, value: float | None, reports: dict[int, float],
                      rerun: bool) -> dict[str, Any]:
        """One record of ``pending_tells.json`` (``rerun``: a re-run after restore, see :func:`_record_end`)."""
        return {"number": self._numbers[trial_id], "tune_trial_id": trial_id, "state": state.name, "value": value,
                "reports": {str(step): v for step, v in sorted(reports.items())}, "rerun": rerun}

    def _frozen(self, number: int) -> optuna.trial.FrozenTrial:
        return next(t for t in self.study.get_trials(deepcopy=False) if t.number == number)

    def _drop_orphans(self, number: int) -> None:
        """FAIL (as stale) the RUNNING trials no Tune trial owns, but ``number``: an ask that failed after its
        commit and was asked again left one (this driver alone asks in its campaign's study)."""
        orphans = [t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if t.number != number and STUDY_ATTR not in t.user_attrs]
        if orphans:
            self.study.set_user_attr(STALE_ATTR, sorted(stale_numbers(self.study) | set(orphans)))
            for n in orphans:
                self.study.tell(n, state=TrialState.FAIL, skip_if_finished=True)

    def _record_rerun(self, trial_id: str, state: TrialState, value: float | None, reports: dict[int, float]) -> None:
        """A trial re-run after ``Tuner.restore`` ended (see the class docstring)."""
        _record_end(self.study, self._study_storage, self._frozen(self._numbers[trial_id]), trial_id, state, value,
                    reports)


def _record_end(study: optuna.Study, storage: optuna.storages.BaseStorage, frozen: optuna.trial.FrozenTrial,
                trial_id: str, state: TrialState, value: float | None, reports: dict[int, float]) -> None:
    """Tell the study how Tune trial ``trial_id`` (study trial ``frozen``) ended, where that trial has no
    ``optuna.Trial`` in this driver (a re-run after restore, a result kept through a storage outage). Safe to
    repeat: a RUNNING trial gets its missing reports, then its state; a finished one keeps its first result
    (COMPLETE, PRUNED), or (FAILed as stale) the re-run is added once as a new trial (user attr ``rerun_of``)."""
    if frozen.state == TrialState.RUNNING:
        missing = {step: v for step, v in reports.items() if step not in frozen.intermediate_values}
        if missing:  # (BaseStorage calls: an optuna.Trial is not made for a trial asked elsewhere)
            study_id = storage.get_study_id_from_name(study.study_name)
            storage_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
            for step, v in sorted(missing.items()):
                storage.set_trial_intermediate_value(storage_id, step, v)
        study.tell(frozen.number, value if state == TrialState.COMPLETE else None, state=state,
                   skip_if_finished=True)
        return
    if frozen.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return  # finished after Tune's last snapshot: the first result stands
    if any(t.user_attrs.get(RERUN_ATTR) == frozen.number and t.user_attrs.get(STUDY_ATTR) == trial_id
           for t in study.get_trials(deepcopy=False)):
        return  # added before
    if state == TrialState.PRUNED and reports:
        value = reports[max(reports)]  # what Optuna records for a trial told PRUNED
    study.add_trial(optuna.trial.create_trial(
        params=frozen.params, distributions=frozen.distributions, state=state,
        value=None if state == TrialState.FAIL else value, intermediate_values=reports or None,
        user_attrs={**frozen.user_attrs, STUDY_ATTR: trial_id, RERUN_ATTR: frozen.number}))


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


def make_tuner(config: CampaignConfig, trainable: Any, objective: Objective | None = None,
               continue_study: bool = False) -> tune.Tuner:
    """The search experiment: :class:`CampaignSearch` (TPE, random or grid) over the config's space on the
    campaign's study, the objective's scheduler, ``num_trials`` trials (``continue_study``: the trials the study
    still lacks; its finished ones count, the stale ones do not), each under the trial guard
    (:func:`~policy_search.reliability.guard_trainable`: ``trial_timeout_s``, ``max_failures`` retries of dead
    workers only), with the Ctrl-C watch and the state signer (:mod:`policy_search.reliability`), stopped by
    :class:`StorageStop` when the study's storage stays unreachable for ``storage_retry_s``."""
    objective = objective or make_objective(config)
    opts = dict(config.space_options)
    num_trials = max(1, _missing_trials(config)) if continue_study else config.num_trials
    searcher = CampaignSearch(
        partial(SPACES_BY_NAME[config.space], **opts), metric="val_acc", mode="max",
        sampler=_sampler(config), storage=study_storage(config), study_name=study_name(config),
        max_t=objective.max_t, num_trials=num_trials, storage_retry_s=config.storage_retry_s, folder=config.folder,
        points_to_evaluate=[baseline_params(config.space, b, **opts) for b in config.resolved_baselines()] or None,
    )
    tuner = tune.Tuner(
        guard_trainable(config, trainable),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=objective.scheduler(), metric="val_acc",
                                    mode="max", num_samples=num_trials,
                                    max_concurrent_trials=min(config.max_concurrent, num_trials),
                                    trial_dirname_creator=trial_dirname, reuse_actors=config.reuse_actors),
        run_config=tune.RunConfig(name=TUNE_NAME, storage_path=str(config.folder),
                                  failure_config=tune.FailureConfig(max_failures=config.max_failures), verbose=0,
                                  stop=StorageStop(searcher),
                                  callbacks=[*tracking_callbacks(config, "search"), InterruptWatch(config.folder),
                                             StateSigner(config.folder)]),
    )
    sign_tuner_file(config.folder)  # written by tune.Tuner just now
    return tuner


def _missing_trials(config: CampaignConfig) -> int:
    """Trials the campaign's study still lacks for ``num_trials`` (its finished, non-stale ones count)."""
    try:
        study = load_study(config)
    except KeyError:
        return config.num_trials
    stale = stale_numbers(study)
    done = sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished() and t.number not in stale)
    return max(0, config.num_trials - done)


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
            trials = load_study(config, storage).get_trials(deepcopy=False)  # this campaign's study only
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
            on_progress: Callable[[Progress], None] | None, restore: bool, resume_errored: bool = False,
            continue_study: bool = False) -> CampaignResult:
    with ray_session(config):
        objective = make_objective(config)
        trainable = make_trainable(config, proxy_data, objective)
        if restore:
            tuner = tune.Tuner.restore(str(tune_dir(config.folder)), trainable=guard_trainable(config, trainable),
                                       resume_errored=resume_errored)
        elif continue_study and not _missing_trials(config):
            tuner = None  # the study already holds num_trials finished trials
        else:  # creates the study before the watcher reads it
            tuner = make_tuner(config, trainable, objective, continue_study=continue_study)
        driver = _DRIVER.set((str(config.folder), config.storage_retry_s))
        try:
            with _watch(config, on_progress, t0):
                grid = tuner.fit() if tuner is not None else []
        finally:
            _DRIVER.reset(driver)
        interrupted = take_interrupted(config.folder)
        pending = read_pending(config.folder)
        if pending is not None:  # the storage stayed unreachable: the study cannot be read; nothing is written
            raise StorageUnavailable(outage_message(config.folder, pending))
        if interrupted is not None:  # Ctrl-C: no race; the results so far, then one line on how to resume
            fail_stale_trials(config)
            df = mark_interrupted(trials_table(config, grid, load_study(config)), interrupted)
            write_results(config, df, data, wall_s=time.monotonic() - t0)
            raise CampaignInterrupted(f"interrupted: {len(interrupted)} unfinished trial(s) marked INTERRUPTED, "
                                      f"results so far in {config.folder}; continue with: policy-search resume "
                                      f"{config.folder}")
        df, race = _confirm(config, grid, proxy_data, on_progress, t0)
    return write_results(config, df, data, wall_s=time.monotonic() - t0, race=race)


def run_campaign(config: CampaignConfig | dict[str, Any],
                 on_progress: Callable[[Progress], None] | None = None, attach: bool = False) -> CampaignResult:
    """Run a new campaign to completion (search, then the confirmation race) and write its results.

    A search campaign gets a campaign id (file ``campaign_id`` in its folder) and its own study (see
    :func:`policy_search.session.create_campaign_study`); a study of another campaign of the same name in the
    ``storage`` database is refused unless ``attach`` (then the two run side by side, each on its own study)."""
    config = validate_config(config)
    if tune.Tuner.can_restore(str(tune_dir(config.folder))):
        raise CampaignError(f"campaign {config.folder} already exists; resume it or pick another name")
    if config.mode != "pbt":  # PBT runs without Optuna
        create_campaign_study(config, attach=attach)
    config.folder.mkdir(parents=True, exist_ok=True)
    save_config(config)
    t0 = time.monotonic()
    data, splits, proxy_data = prepare_data(config)
    if config.mode == "pbt":
        return fit_pbt(config, proxy_data, t0, on_progress)
    return _search(config, proxy_data, data, t0, on_progress, restore=False)


def fail_stale_trials(config: CampaignConfig) -> int:
    """Tell FAIL for the RUNNING trials of the campaign's study (a killed driver leaves them) and list their
    numbers in the study user attr ``stale_trials``; returns how many. No run of the campaign may be active."""
    try:
        study = load_study(config)
    except KeyError:
        return 0
    stale = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    if stale:
        study.set_user_attr(STALE_ATTR, sorted(stale_numbers(study) | set(stale)))  # before FAIL: no unmarked FAIL
    for number in stale:
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    return len(stale)


def replay_pending(config: CampaignConfig) -> int:
    """Tell the campaign's study the results a storage outage kept in ``pending_tells.json`` (reports first, then
    the state; safe to repeat, see :func:`_record_end`), under the ``storage_retry_s`` retry window; returns how
    many. The file stays: the caller deletes it once the resume is recorded."""
    pending = read_pending(config.folder)
    if not pending or not pending["tells"]:
        return 0
    storage = study_storage(config)

    def replay() -> None:
        study = load_study(config, storage)
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        for tell in pending["tells"]:
            frozen = by_number.get(tell["number"])
            if frozen is None:
                raise CampaignError(f"{config.folder / PENDING_TELLS}: study trial {tell['number']} is not in study "
                                    f"{study.study_name!r}")
            if not tell.get("rerun") and frozen.state != TrialState.RUNNING:
                continue  # told already (a resume that stopped before it deleted the file)
            reports = {int(step): float(v) for step, v in (tell.get("reports") or {}).items()}
            value = None if tell.get("value") is None else float(tell["value"])
            _record_end(study, storage, frozen, str(tell.get("tune_trial_id", "")), TrialState[tell["state"]], value,
                        reports)

    try:
        retry_storage(replay, window_s=config.storage_retry_s, storage=config.storage_url(), what="resume")
    except StorageUnavailable as exc:
        raise StorageUnavailable(f"{exc}; {len(pending['tells'])} finished result(s) still kept in {PENDING_TELLS}; "
                                 f"resume again once the storage is back") from None
    return len(pending["tells"])


def resume_campaign(folder: str | os.PathLike, resume_errored: bool = False, ray_address: str | None = None,
                    on_progress: Callable[[Progress], None] | None = None, trust: bool = False,
                    from_study: bool = False) -> CampaignResult:
    """Finish an interrupted campaign: FAIL stale RUNNING study trials, ``Tuner.restore`` and fit, then run
    (or finish: runs already in ``race_runs.csv`` are kept) the confirmation race.

    ``config.yaml`` is compared with the config the campaign started with (:func:`~policy_search.reliability.
    resume_plan`): changes to what the finished trials mean are refused; the others apply, and are logged in
    ``resume_log.jsonl``. Tune's saved state is restored only if its signatures match
    (:func:`~policy_search.reliability.verify_tune_state`; ``trust`` skips the check). A change Tune cannot apply
    to its saved experiment (``num_trials``, ``max_concurrent``, ``resources``, ``max_failures``, ...) or
    ``from_study`` continues the campaign from its study in a new Tune experiment instead: the study's finished
    trials count, its unfinished ones are FAILed (stale) and replaced.

    After a storage outage stopped the campaign, the results in ``pending_tells.json`` are told to the study first
    (:func:`replay_pending`), and the campaign continues from its study (Tune's stopped experiment ended its
    search and marked its running trials finished, so it cannot be restored)."""
    config = load_campaign_config(folder)
    if ray_address:
        config = validate_config({**config.model_dump(), "ray_address": ray_address})
    exp = tune_dir(config.folder)
    restorable = tune.Tuner.can_restore(str(exp))
    set_aside = config.mode != "pbt" and any(exp.glob("superseded-*"))  # a continuation that did not start yet
    if not restorable and not set_aside:
        raise CampaignError(f"{folder}: nothing to resume (no Tune experiment in {exp})")
    outage = read_pending(config.folder) if config.mode != "pbt" else None
    plan = resume_plan(config, from_study=(from_study or not restorable or outage is not None) and config.mode != "pbt")
    if outage is not None and not from_study:
        plan.reason = "a storage outage stopped Tune's experiment"
    if config.mode == "pbt":  # no study: PBT runs without Optuna (its Tune state is not signed)
        log_resume(config, plan, "not checked (pbt)")
        t0 = time.monotonic()
        _, _, proxy_data = prepare_data(config)
        return fit_pbt(config, proxy_data, t0, on_progress, restore=True, resume_errored=resume_errored)
    if plan.how == "continue" and resume_errored:
        raise CampaignError(f"--retry-errored re-runs the errored trials of Tune's saved experiment, but this resume "
                            f"continues from the study ({plan.reason})")
    if plan.how == "restore" and not trust:
        verify_tune_state(config.folder)
    clear_trial_records(config.folder)
    replay_pending(config)  # before the stale marking: these trials finished
    fail_stale_trials(config)
    if plan.how == "continue":
        set_tune_state_aside(config.folder)
        if "num_trials" in plan.changes:  # the ranking may change: the race starts over
            for name in ("race_runs.csv", "race.csv"):
                if (config.folder / name).is_file():
                    (config.folder / name).rename(config.folder / f"{name[:-4]}.before-resume-{int(time.time())}.csv")
    log_resume(config, plan, "not used" if plan.how == "continue" else ("not checked (--trust)" if trust
                                                                         else "signatures match"))
    (config.folder / PENDING_TELLS).unlink(missing_ok=True)  # told, and the resume is on record
    t0 = time.monotonic()
    data, _, proxy_data = prepare_data(config)
    return _search(config, proxy_data, data, t0, on_progress, restore=plan.how == "restore",
                   resume_errored=resume_errored, continue_study=plan.how == "continue")
