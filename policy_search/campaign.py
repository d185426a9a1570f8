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

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

for _key, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "TUNE_DISABLE_DATED_SUBDIR": "1",
    "TUNE_GLOBAL_CHECKPOINT_S": "5",  # experiment snapshots (what resume sees) at most 5 s old
}.items():
    os.environ.setdefault(_key, _value)

import optuna  # noqa: E402
import ray  # noqa: E402
import yaml  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from search_spaces.spaces import SPACES_BY_NAME, baseline_params, grid_space, policy_from_params  # noqa: E402
from trainers.data import load_dataset, make_splits  # noqa: E402
from trainers.proxy import DensityMatcher, ProxyConfig, ProxyData, train_proxy  # noqa: E402

from .config import PASSWORD_ENV, CampaignConfig, validate_config  # noqa: E402

__all__ = ["CampaignResult", "CampaignError", "Progress", "TrialJob", "CampaignSearch", "run_campaign",
           "resume_campaign", "run_trial", "load_study", "load_campaign_config", "fail_stale_trials",
           "prepare_data", "ray_session", "tune_dir", "STUDY_ATTR", "STALE_ATTR"]

STUDY_ATTR = "tune_trial_id"  # Optuna user attr joining a study trial to its Tune trial
STALE_ATTR = "stale"  # Optuna user attr of a trial left RUNNING by a killed driver (FAILed on resume)
TUNE_NAME = "tune"


class CampaignError(RuntimeError):
    """A campaign cannot start or resume (missing folder, already exists, ...); one line."""


@dataclass
class Progress:
    """A snapshot for progress views: finished trials, requested trials, best value so far."""

    done: int
    total: int
    running: int
    best: float | None
    elapsed_s: float


@dataclass
class CampaignResult:
    """What a finished campaign produced (the files are in ``folder``)."""

    folder: Path
    best_score: float | None
    best_params: dict[str, Any] | None
    counts: dict[str, int]
    wall_s: float
    files: dict[str, Path] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Trainable (runs in Ray workers)


@dataclass(frozen=True)
class TrialJob:
    """The constant part of every trial: how to turn params into a policy and what to run."""

    space: str
    space_options: dict[str, Any]
    objective: str
    proxy: dict[str, Any]
    seed: int


def run_trial(config: dict[str, Any], *, job: TrialJob, payload: ProxyData | DensityMatcher) -> None:
    """Ray Tune function trainable: rebuild the policy, then train the proxy or score it by density matching.

    Reports ``val_acc`` every epoch (proxy) or once (density). Exceptions propagate: Tune marks the trial
    ERROR and the searcher tells Optuna FAIL.
    """
    policy = policy_from_params(job.space, config, **job.space_options)
    node_id = ray.get_runtime_context().get_node_id()
    if job.objective == "density":
        tune.report({"val_acc": payload.score(policy, seed=job.seed), "epoch": 1, "node_id": node_id})
        return
    proxy = ProxyConfig.from_dict(job.proxy)

    def on_epoch(m) -> None:
        tune.report({"val_acc": m.val_acc, "val_loss": m.val_loss, "train_loss": m.train_loss,
                     "train_acc": m.train_acc, "epoch": m.epoch, "images_per_s": m.images_per_s, "node_id": node_id})

    train_proxy(policy, payload, proxy, on_epoch=on_epoch)


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
            elif self._max_t and result and result.get("training_iteration", self._max_t) < self._max_t:
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
        pruned = bool(self._max_t and result and result.get("training_iteration", self._max_t) < self._max_t)
        state = TrialState.FAIL if value is None else (TrialState.PRUNED if pruned else TrialState.COMPLETE)
        self._ot_study.add_trial(optuna.trial.create_trial(
            params=frozen.params, distributions=frozen.distributions, state=state,
            value=value if state == TrialState.COMPLETE else None,
            intermediate_values={int(result["training_iteration"]): value} if value is not None and result else None,
            user_attrs={**frozen.user_attrs, STUDY_ATTR: trial_id, "rerun_of": frozen.number}))
        self._completed_trials.add(trial_id)


# ---------------------------------------------------------------------------------------------
# Driver


def tune_dir(folder: Path) -> Path:
    """Tune's experiment folder inside a campaign folder."""
    return Path(folder) / TUNE_NAME


class SecretStorage(optuna.storages.RDBStorage):
    """RDBStorage that pickles its URL without the password (Tune pickles the searcher into ``tune/``);
    unpickling (resume) fills it in again from ``$POLICY_SEARCH_DB_PASSWORD``."""

    def __getstate__(self) -> dict[Any, Any]:
        from sqlalchemy.engine import make_url

        state = super().__getstate__()
        state["url"] = make_url(self.url)._replace(password=None).render_as_string(hide_password=False)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        from sqlalchemy.engine import make_url

        url = make_url(state["url"])
        if url.password is None and os.environ.get(PASSWORD_ENV):
            state = {**state, "url": url.set(password=os.environ[PASSWORD_ENV]).render_as_string(hide_password=False)}
        super().__setstate__(state)


def _storage(config: CampaignConfig) -> optuna.storages.RDBStorage:
    url = config.storage_url()
    kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else None
    return SecretStorage(url, engine_kwargs=kwargs)


def load_study(config: CampaignConfig) -> optuna.Study:
    """The campaign's Optuna study (read it while or after the campaign runs)."""
    return optuna.load_study(study_name=config.name, storage=_storage(config))


def _sampler(config: CampaignConfig) -> optuna.samplers.BaseSampler:
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    if config.sampler == "grid":
        return optuna.samplers.GridSampler(grid_space(config.space, **config.space_options), seed=config.seed)
    return optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=min(10, max(2, config.num_trials // 3)))


def _proxy_config(config: CampaignConfig) -> ProxyConfig:
    return ProxyConfig.from_dict({**config.proxy.model_dump(), "seed": config.seed,
                                  "num_threads": max(1, int(config.resources.cpu))})


def prepare_data(config: CampaignConfig) -> tuple[Any, Any, ProxyData]:
    """Load the dataset and make the seeded splits (saved as ``splits.json``)."""
    data = load_dataset(config.dataset)
    splits = make_splits(data.labels, train_size=config.train_size, val_size=config.val_size, seed=config.seed)
    splits.save(config.folder / "splits.json")
    return data, splits, ProxyData.from_dataset(data, splits)


def _trainable(config: CampaignConfig, proxy_data: ProxyData):
    payload: ProxyData | DensityMatcher = proxy_data
    if config.objective == "density":  # fold models once, in the driver
        payload = DensityMatcher.fit(proxy_data, _proxy_config(config), k=config.density_k)
    job = TrialJob(config.space, dict(config.space_options), config.objective,
                   _proxy_config(config).to_dict(), config.seed)
    resources = {"cpu": config.resources.cpu, "gpu": config.resources.gpu}
    return tune.with_resources(tune.with_parameters(run_trial, job=job, payload=payload), resources)


def trial_dirname(trial: Any) -> str:
    """Trial folders are named by the Tune trial id (the key ``trials.csv`` joins on)."""
    return trial.trial_id


def _tuner(config: CampaignConfig, trainable: Any) -> tune.Tuner:
    opts = dict(config.space_options)
    max_t = config.proxy.epochs if config.objective == "proxy" else None
    searcher = CampaignSearch(
        space=partial(SPACES_BY_NAME[config.space], **opts), metric="val_acc", mode="max",
        sampler=_sampler(config), storage=_storage(config), study_name=config.name, max_t=max_t,
        num_trials=config.num_trials,
        points_to_evaluate=[baseline_params(config.space, b, **opts) for b in config.resolved_baselines()] or None,
    )
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=1, reduction_factor=2)
                 if max_t else None)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, metric="val_acc", mode="max",
                                    num_samples=config.num_trials, max_concurrent_trials=config.max_concurrent,
                                    trial_dirname_creator=trial_dirname, reuse_actors=config.reuse_actors),
        run_config=tune.RunConfig(name=TUNE_NAME, storage_path=str(config.folder),
                                  failure_config=tune.FailureConfig(max_failures=0), verbose=0),
    )


@contextmanager
def ray_session(config: CampaignConfig) -> Iterator[None]:
    """Join ``config.ray_address`` or start a local Ray; shut down only what this call started."""
    if ray.is_initialized():
        yield
        return
    if config.ray_address:
        ray.init(address=config.ray_address, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=config.num_cpus or os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def _watch(config: CampaignConfig, on_progress: Callable[[Progress], None] | None, t0: float) -> Iterator[None]:
    """Poll the study once a second and hand snapshots to ``on_progress`` (driver thread, no Tune pickling)."""
    if on_progress is None:
        yield
        return
    stop = threading.Event()
    storage = _storage(config)

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


def _save_config(config: CampaignConfig) -> None:
    (config.folder / "config.yaml").write_text(yaml.safe_dump(config.public_dict(), sort_keys=False))


def run_campaign(config: CampaignConfig | dict[str, Any],
                 on_progress: Callable[[Progress], None] | None = None) -> CampaignResult:
    """Run a new campaign to completion and write its results; see the module docstring."""
    from .results import write_results

    config = validate_config(config)
    if tune.Tuner.can_restore(str(tune_dir(config.folder))):
        raise CampaignError(f"campaign {config.folder} already exists; resume it or pick another name")
    config.folder.mkdir(parents=True, exist_ok=True)
    _save_config(config)
    t0 = time.monotonic()
    data, splits, proxy_data = prepare_data(config)
    if config.mode == "pbt":
        from .pbt import fit_pbt

        return fit_pbt(config, proxy_data, data, t0, on_progress)
    with ray_session(config):
        tuner = _tuner(config, _trainable(config, proxy_data))  # creates the study before the watcher reads it
        with _watch(config, on_progress, t0):
            grid = tuner.fit()
    return write_results(config, grid, data, wall_s=time.monotonic() - t0)


def load_campaign_config(folder: str | os.PathLike) -> CampaignConfig:
    """The config a campaign folder was started with."""
    path = Path(folder) / "config.yaml"
    if not path.is_file():
        raise CampaignError(f"{folder}: not a campaign folder (no config.yaml)")
    d = yaml.safe_load(path.read_text())
    d["output"] = str(Path(folder).resolve().parent)  # the folder may have moved
    if d.get("name") != Path(folder).resolve().name:
        raise CampaignError(f"{folder}: folder name differs from the campaign name {d.get('name')!r}")
    return validate_config(d)


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
    """Finish an interrupted campaign: FAIL stale RUNNING study trials, then ``Tuner.restore`` and fit."""
    from .results import write_results

    config = load_campaign_config(folder)
    if ray_address:
        config = validate_config({**config.model_dump(), "ray_address": ray_address})
    exp = tune_dir(config.folder)
    if not tune.Tuner.can_restore(str(exp)):
        raise CampaignError(f"{folder}: nothing to resume (no Tune experiment in {exp})")
    if config.mode == "pbt":  # no study: PBT runs without Optuna
        from .pbt import fit_pbt

        t0 = time.monotonic()
        data, _, proxy_data = prepare_data(config)
        return fit_pbt(config, proxy_data, data, t0, on_progress, restore=True, resume_errored=resume_errored)
    fail_stale_trials(config)
    t0 = time.monotonic()
    data, _, proxy_data = prepare_data(config)
    with ray_session(config):
        tuner = tune.Tuner.restore(str(exp), trainable=_trainable(config, proxy_data), resume_errored=resume_errored)
        with _watch(config, on_progress, t0):
            grid = tuner.fit()
    return write_results(config, grid, data, wall_s=time.monotonic() - t0)

