"""What every campaign mode shares: the folder, the study storage, the data splits, the Ray session, the
trainer settings derived from the config, and the small result types.

:mod:`policy_search.campaign` (Optuna search), :mod:`policy_search.pbt` (population), :mod:`policy_search.race`
(confirmation) and :mod:`policy_search.calibrate` all import from here and never from each other's internals,
so the modules form a line: session <- objectives <- race <- results <- pbt/campaign <- calibrate.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

#: Ray/Tune settings every campaign process uses (tests import this too): no usage stats, no auth prompt on
#: a local cluster, the classic progress output, trials in their own folders, experiment snapshots at most 5 s
#: old (what resume sees).
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "TUNE_DISABLE_DATED_SUBDIR": "1",
    "TUNE_GLOBAL_CHECKPOINT_S": "5",
}
for _key, _value in RAY_ENV.items():
    os.environ.setdefault(_key, _value)

import optuna  # noqa: E402
import ray  # noqa: E402
import yaml  # noqa: E402
from ray.exceptions import AuthenticationError  # noqa: E402

from search_spaces.files import atomic_write_text  # noqa: E402
from trainers.data import prepare_data as load_and_split  # noqa: E402
from trainers.proxy import ProxyConfig, ProxyData  # noqa: E402

from .config import PASSWORD_ENV, CampaignConfig, validate_config  # noqa: E402

__all__ = ["RAY_ENV", "CampaignError", "Progress", "CampaignResult", "TUNE_NAME", "STUDY_ATTR", "STALE_ATTR",
           "RERUN_ATTR", "CAMPAIGN_ID_FILE", "STARTED_CONFIG", "tune_dir", "trial_dirname", "SecretStorage",
           "study_storage",
           "campaign_id", "study_name", "create_campaign_study", "load_study", "stale_numbers", "ray_session",
           "prepare_data", "save_config", "load_campaign_config", "proxy_config", "target_config",
           "library_versions", "machine_info"]

STUDY_ATTR = "tune_trial_id"  # Optuna user attr joining a study trial to its Tune trial
RERUN_ATTR = "rerun_of"  # Optuna user attr of a trial added for a re-run after resume: the number it re-ran
#: Optuna *study* user attr: numbers of the trials a killed driver left RUNNING, FAILed by resume (a finished
#: trial's user attrs cannot change, and a RUNNING one's only through its ``optuna.Trial``, gone with the driver).
STALE_ATTR = "stale_trials"
CAMPAIGN_ID_FILE = "campaign_id"  # the campaign folder's id (uuid4 hex), written when the campaign starts
#: Optuna study user attrs naming the campaign that owns the study.
OWNER_NAME_ATTR, OWNER_ID_ATTR, OWNER_FOLDER_ATTR = "campaign", "campaign_id", "campaign_folder"
TUNE_NAME = "tune"
STARTED_CONFIG = "config.started.yaml"  # the config a campaign started with (resume compares config.yaml with it)


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
    stage: str = "search"  # search | race


@dataclass
class CampaignResult:
    """What a finished campaign produced (the files are in ``folder``)."""

    folder: Path
    best_score: float | None
    best_params: dict[str, Any] | None
    counts: dict[str, int]
    wall_s: float
    files: dict[str, Path] = field(default_factory=dict)
    race: Any = None  # policy_search.race.RaceResult when the campaign ran a confirmation race


def tune_dir(folder: Path) -> Path:
    """Tune's experiment folder inside a campaign folder."""
    return Path(folder) / TUNE_NAME


def trial_dirname(trial: Any) -> str:
    """Trial folders are named by the Tune trial id (the key ``trials.csv`` joins on)."""
    return trial.trial_id


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


def study_storage(config: CampaignConfig) -> optuna.storages.RDBStorage:
    """The campaign's Optuna storage (SQLite in the folder unless ``storage`` names a database)."""
    url = config.storage_url()
    kwargs = None
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 30}}  # seconds to wait on a locked database file
    elif url.startswith("postgresql"):  # a host that drops packets fails a connection in 10 s, not minutes
        kwargs = {"connect_args": {"connect_timeout": 10}}  # (inside the storage_retry_s window, retried)
    return SecretStorage(url, engine_kwargs=kwargs)


def campaign_id(folder: str | os.PathLike) -> str | None:
    """The id of the campaign in ``folder`` (``None``: a folder started before campaigns had ids)."""
    path = Path(folder) / CAMPAIGN_ID_FILE
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def _study_name(config: CampaignConfig, cid: str | None) -> str:
    if config.storage is None or cid is None:  # the folder's own study.db holds this one campaign only
        return config.name
    return f"{config.name}-{cid[:8]}"


def study_name(config: CampaignConfig) -> str:
    """The campaign's Optuna study name: ``<name>-<first 8 hex digits of the campaign id>`` in a ``storage``
    database (which other campaigns, also ones of the same name, may share), the plain ``<name>`` in the folder's
    own ``study.db`` (and for a folder without an id)."""
    return _study_name(config, campaign_id(config.folder))


def _namesakes(config: CampaignConfig, storage: optuna.storages.BaseStorage, cid: str) -> Iterator[tuple[str, str]]:
    """(study name, owner folder) of the studies in ``storage`` of other campaigns named ``config.name``."""
    pattern = re.compile(rf"{re.escape(config.name)}(-[0-9a-f]{{8}})?")
    for name in optuna.get_all_study_names(storage):
        if not pattern.fullmatch(name):
            continue
        attrs = optuna.load_study(study_name=name, storage=storage).user_attrs
        if attrs.get(OWNER_ID_ATTR) is None and name == config.name:  # a campaign from before campaign ids
            yield name, "unknown"
        elif attrs.get(OWNER_NAME_ATTR) == config.name and attrs.get(OWNER_ID_ATTR) != cid:
            yield name, str(attrs.get(OWNER_FOLDER_ATTR, "unknown"))


def create_campaign_study(config: CampaignConfig, attach: bool = False) -> optuna.Study:
    """Give the campaign folder its id (kept if it has one) and create its study, owned by it (user attrs
    ``campaign``, ``campaign_id``, ``campaign_folder``); an existing study of the same name and id (a start that
    failed before its experiment) is reused.

    The study name is unique (:func:`study_name`), so campaigns never share a study. Still, a campaign of the same
    name in a ``storage`` database is likely a mistake: that is refused, naming the other campaign's study and
    folder, unless ``attach`` (then both campaigns run side by side, each on its own study)."""
    cid = campaign_id(config.folder) or uuid.uuid4().hex
    name = _study_name(config, cid)
    storage = study_storage(config) if config.storage is not None else None  # (study.db needs the folder first)
    if storage is not None and not attach:
        others = [(n, folder) for n, folder in _namesakes(config, storage, cid) if n != name]
        if others:
            other, folder = others[0]
            raise CampaignError(f"campaign {config.name!r}: study {other!r} of another campaign of that name (folder "
                                f"{folder}) is in {config.public_dict()['storage']}; pick another name, or attach "
                                f"to run beside it (--attach)")
    config.folder.mkdir(parents=True, exist_ok=True)
    (config.folder / CAMPAIGN_ID_FILE).write_text(cid + "\n")
    study = optuna.create_study(study_name=name, storage=storage or study_storage(config), direction="maximize",
                                load_if_exists=True)
    owner = study.user_attrs.get(OWNER_ID_ATTR)
    if owner is None:
        study.set_user_attr(OWNER_NAME_ATTR, config.name)
        study.set_user_attr(OWNER_ID_ATTR, cid)
        study.set_user_attr(OWNER_FOLDER_ATTR, str(config.folder))
    elif owner != cid:
        raise CampaignError(f"campaign {config.name!r}: study {name!r} belongs to another campaign (folder "
                            f"{study.user_attrs.get(OWNER_FOLDER_ATTR, 'unknown')}, id {owner})")
    return study


def load_study(config: CampaignConfig, storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """The campaign's Optuna study (read it while or after the campaign runs; ``storage``: reuse an open
    :func:`study_storage`); KeyError when it does not exist (yet), CampaignError when it is another campaign's."""
    name, cid = study_name(config), campaign_id(config.folder)
    study = optuna.load_study(study_name=name, storage=storage or study_storage(config))
    owner = study.user_attrs.get(OWNER_ID_ATTR)
    if cid is not None and owner is not None and owner != cid:
        raise CampaignError(f"{config.folder}: study {name!r} belongs to another campaign (folder "
                            f"{study.user_attrs.get(OWNER_FOLDER_ATTR, 'unknown')}, id {owner})")
    return study


def stale_numbers(study: optuna.Study) -> set[int]:
    """Numbers of the study trials a killed driver left RUNNING and resume FAILed (see ``STALE_ATTR``)."""
    return set(study.user_attrs.get(STALE_ATTR, ()))


@contextmanager
def ray_session(config: CampaignConfig) -> Iterator[None]:
    """Join ``config.ray_address`` or start a local Ray; shut down only what this call started."""
    if ray.is_initialized():
        yield
        return
    if config.ray_address:
        try:
            ray.init(address=config.ray_address, log_to_driver=False)
        except (ConnectionError, AuthenticationError) as exc:
            detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), "no detail")
            raise CampaignError(
                f"ray_address: cannot join the Ray cluster at {config.ray_address} ({type(exc).__name__}: {detail}); "
                "is it running, and does this driver have its token when the cluster uses token auth "
                "(RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or ~/.ray/auth_token, as on the nodes)?") from None
    else:
        ray.init(address="local", num_cpus=config.num_cpus or os.cpu_count(), include_dashboard=config.dashboard,
                 log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


def prepare_data(config: CampaignConfig) -> tuple[Any, Any, ProxyData]:
    """Load the dataset and make the seeded train/validation splits (saved as ``splits.json``)."""
    data, splits = load_and_split(config.dataset, decode_size=config.decode_size, train_size=config.train_size,
                                  val_size=config.resolved_val_size, unlabeled_size=None, seed=config.seed)
    splits.save(config.folder / "splits.json")
    return data, splits, ProxyData.from_dataset(data, splits)


def save_config(config: CampaignConfig) -> None:
    """``config.yaml`` in the campaign folder, secrets stripped, written atomically; the first time also
    ``config.started.yaml``, never rewritten (what resume compares ``config.yaml`` with)."""
    text = yaml.safe_dump(config.public_dict(), sort_keys=False)
    atomic_write_text(config.folder / "config.yaml", text)
    if not (config.folder / STARTED_CONFIG).exists():
        atomic_write_text(config.folder / STARTED_CONFIG, text)


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


def _threads(config: CampaignConfig) -> int:
    return max(1, int(config.resources.cpu))


def proxy_config(config: CampaignConfig) -> ProxyConfig:
    """The short proxy's trainer settings (``objective: proxy``, density fold models, PBT members)."""
    return ProxyConfig.from_knobs(config.proxy, seed=config.seed, num_threads=_threads(config))


def target_config(config: CampaignConfig, seed: int | None = None) -> ProxyConfig:
    """The target recipe's trainer settings (``finetune``, ``full``, the race), evaluated after the last epoch
    only; ``seed`` defaults to the campaign seed (common random numbers across trials)."""
    return ProxyConfig.from_knobs(config.target, seed=config.seed if seed is None else seed,
                                  num_threads=_threads(config), eval_every=config.target.epochs)


def library_versions() -> dict[str, str]:
    """Versions recorded in every policy's provenance."""
    return {name: version(name) for name in ("torch", "kornia", "ray", "optuna", "policy-search")}


def machine_info() -> dict[str, Any]:
    """Where a campaign ran (written into ``summary.json``)."""
    import torch

    return {"hostname": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
