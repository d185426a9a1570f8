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
import socket
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

from trainers.data import load_dataset, make_splits  # noqa: E402
from trainers.proxy import ProxyConfig, ProxyData  # noqa: E402

from .config import PASSWORD_ENV, CampaignConfig, validate_config  # noqa: E402

__all__ = ["RAY_ENV", "CampaignError", "Progress", "CampaignResult", "TUNE_NAME", "STUDY_ATTR", "STALE_ATTR",
           "tune_dir", "trial_dirname", "SecretStorage", "study_storage", "load_study", "ray_session",
           "prepare_data", "save_config", "load_campaign_config", "proxy_config", "target_config",
           "library_versions", "machine_info"]

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
    kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else None
    return SecretStorage(url, engine_kwargs=kwargs)


def load_study(config: CampaignConfig) -> optuna.Study:
    """The campaign's Optuna study (read it while or after the campaign runs)."""
    return optuna.load_study(study_name=config.name, storage=study_storage(config))


@contextmanager
def ray_session(config: CampaignConfig) -> Iterator[None]:
    """Join ``config.ray_address`` or start a local Ray; shut down only what this call started."""
    if ray.is_initialized():
        yield
        return
    if config.ray_address:
        ray.init(address=config.ray_address, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=config.num_cpus or os.cpu_count(), include_dashboard=config.dashboard,
                 log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


def prepare_data(config: CampaignConfig) -> tuple[Any, Any, ProxyData]:
    """Load the dataset and make the seeded train/validation splits (saved as ``splits.json``)."""
    data = load_dataset(config.dataset, decode_size=config.decode_size)
    val_size = config.resolved_val_size(len(data.labels))
    splits = make_splits(data.labels, train_size=config.train_size, val_size=val_size, seed=config.seed)
    splits.save(config.folder / "splits.json")
    return data, splits, ProxyData.from_dataset(data, splits)


def save_config(config: CampaignConfig) -> None:
    """``config.yaml`` in the campaign folder, secrets stripped."""
    (config.folder / "config.yaml").write_text(yaml.safe_dump(config.public_dict(), sort_keys=False))


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
    return ProxyConfig.from_dict({**config.proxy.model_dump(), "seed": config.seed, "num_threads": _threads(config)})


def target_config(config: CampaignConfig, seed: int | None = None) -> ProxyConfig:
    """The target recipe's trainer settings (``finetune``, ``full``, the race), evaluated after the last epoch
    only; ``seed`` defaults to the campaign seed (common random numbers across trials)."""
    return ProxyConfig.from_dict({**config.target.model_dump(), "seed": config.seed if seed is None else seed,
                                  "num_threads": _threads(config), "eval_every": config.target.epochs})


def library_versions() -> dict[str, str]:
    """Versions recorded in every policy's provenance."""
    return {name: version(name) for name in ("torch", "kornia", "ray", "optuna", "policy-search")}


def machine_info() -> dict[str, Any]:
    """Where a campaign ran (written into ``summary.json``)."""
    import torch

    return {"hostname": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
