"""Campaign configuration: one validated pydantic model, loaded from YAML and overridden by CLI flags.

The defaults are the quick-start (bundled 4,000-image CIFAR-10 sample, a small proxy CNN, a handful of
trials) and finish in a few minutes on 2 CPU cores. Every validation error becomes a :class:`ConfigError`
with one line naming the field, e.g. ``num_trials: must be >= 1, got 0``.

Storage: ``None`` means SQLite in the campaign folder. A ``postgresql+psycopg2://user@host/db`` URL may
leave the password out; it is then read from ``$POLICY_SEARCH_DB_PASSWORD``. Passwords are never written
to the results (:meth:`CampaignConfig.public_dict` masks them).
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from search_spaces import PolicyError
from search_spaces.policy import one_line
from search_spaces.spaces import SPACES_BY_NAME, baseline_params, check_ops, grid_space
from trainers.settings import TrainingKnobs, describe_error  # the knobs of the proxy budget and the target

__all__ = ["CampaignConfig", "TrainingKnobs", "ProxyBudget", "TargetRecipe", "FinetuneOptions", "RaceOptions",
           "PBTOptions", "Resources", "ConfigError", "load_config", "validate_config", "PASSWORD_ENV",
           "PRESET_BASELINES"]

PASSWORD_ENV = "POLICY_SEARCH_DB_PASSWORD"


class ConfigError(ValueError):
    """An invalid campaign configuration; the message is one printable line naming the field."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Resources(_Model):
    """Ray resources for one trial."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)

    @field_validator("gpu")
    @classmethod
    def _gpu_fraction(cls, v: float) -> float:
        if v > 1 and not float(v).is_integer():
            raise ValueError(f"must be a fraction <= 1 or a whole number, got {v}")
        return v


class ProxyBudget(TrainingKnobs):
    """The short proxy (``objective: proxy``, density fold models, PBT members). Defaults are the trainers'
    (:class:`trainers.settings.TrainingKnobs`, without a seed: it comes from the campaign), except ``epochs``:
    5, short enough for a 10-trial campaign in about a minute and a half on 2 CPU cores."""

    epochs: int = Field(5, ge=1)


class TargetRecipe(TrainingKnobs):
    """The training the user will finally run with the winning policy (``target:``).

    Every objective derives its budget from it: ``full`` trains it end to end, ``finetune`` continues a shared
    checkpoint of it through its last epochs, the confirmation race retrains it over paired seeds. Its
    defaults are the quick-start's (2,000 sample images, about 10 s per training on 2 CPU cores); the reduced
    CIFAR-10 recipe of the README and ``configs/reduced-cifar10.yaml`` is ``width: 32, epochs: 30``.
    """

    epochs: int = Field(15, ge=2)


class FinetuneOptions(_Model):
    """The late-phase objective (``objective: finetune``, after Augmentation-wise Weight Sharing).

    One shared model trains with the base augmentation for ``fraction`` of the target's epochs; every trial
    continues it to the end of the schedule (learning-rate decay included) with its candidate policy.
    """

    fraction: float = Field(0.7, gt=0, lt=1)  # share of the target's epochs trained once, before the trials


class RaceOptions(_Model):
    """The confirmation race: after the search, the ``top_k`` searched policies and the ``baselines`` retrain at
    full target fidelity over ``seeds`` paired seeds; the best mean wins (``best_policy.json``)."""

    enabled: bool = True
    top_k: int = Field(2, ge=1, le=20)  # the quick-start's; configs/reduced-cifar10.yaml races 3
    seeds: int = Field(2, ge=1, le=20)  # paired seeds; configs/reduced-cifar10.yaml uses 3
    baselines: list[str] = Field(default_factory=lambda: ["crop_flip", "randaugment"])  # or PRESET_BASELINES


#: The fixed recipes a user gets for free; ``crop_flip`` is the base augmentation alone.
PRESET_BASELINES = ("crop_flip", "randaugment", "trivialaugment_wide", "autoaugment_cifar10")


class PBTOptions(_Model):
    """Population-based search (``mode: pbt``): PBA's settings, sized for a CPU by default.

    PBA (Ho et al. 2019) used 16 members, a perturbation every 3 epochs, resampling with probability 0.2
    and shifts of up to 3 bins, starting from no augmentation (``init: zero``).
    """

    population_size: int = Field(8, ge=2)
    perturbation_interval: int = Field(2, ge=1)  # epochs between exploit/explore steps (and checkpoints)
    resample_probability: float = Field(0.2, ge=0, le=1)
    max_shift: int = Field(3, ge=0, le=10)  # explore moves a bin by up to this many steps
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)  # bottom fraction clones the top fraction
    init: Literal["zero", "random"] = "zero"  # initial bins: all 0 (PBA) or uniform
    synch: bool = False  # True: the whole population waits at each perturbation (PBA: False, asynchronous)
    ops: list[str] | None = None  # None: PBA's 15 ops
    copies: int = Field(2, ge=1, le=4)  # instances of each op


class CampaignConfig(_Model):
    """Everything one campaign needs; see the module docstring for storage and secrets."""

    mode: Literal["search", "pbt"] = "search"  # search: Optuna proposes fixed policies; pbt: a PBA schedule
    pbt: PBTOptions = Field(default_factory=PBTOptions)

    name: str = "quickstart"
    dataset: str = "sample"
    decode_size: int | None = Field(None, ge=8, le=4096)  # scale images to this size at decode (large photos)
    train_size: int = Field(2000, ge=10)
    val_size: int | None = Field(None, ge=10)  # None: every image not in train, at most MAX_DEFAULT_VAL
    val_folds: int = Field(1, ge=1, le=20)  # >1: K-fold validation over train + val (small sources)
    space: Literal["randaugment", "randaugment_plus", "autoaugment", "custom"] = "randaugment_plus"
    space_options: dict[str, Any] = Field(default_factory=dict)
    objective: Literal["finetune", "full", "proxy", "density"] = "finetune"
    target: TargetRecipe = Field(default_factory=TargetRecipe)
    finetune: FinetuneOptions = Field(default_factory=FinetuneOptions)
    race: RaceOptions = Field(default_factory=RaceOptions)
    density_k: int = Field(2, ge=2)
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    num_trials: int = Field(10, ge=1)
    max_concurrent: int = Field(2, ge=1)
    resources: Resources = Field(default_factory=Resources)
    proxy: ProxyBudget = Field(default_factory=ProxyBudget)
    seed: int = Field(0, ge=0)
    output: Path = Path("results")
    storage: str | None = None
    ray_address: str | None = None
    num_cpus: int | None = Field(None, ge=1)  # local Ray only; None: all cores
    baselines: list[str] | None = None  # None: the space's natural baseline (RandAugment(2, 9) for randaugment)
    top_k: int = Field(3, ge=1)
    reuse_actors: bool = True  # run trials in reused Ray workers (False: a fresh worker process per trial)
    trial_timeout_s: float | None = Field(None, gt=0)  # a trial (PBT member) running longer fails
    max_failures: int = Field(1, ge=0)  # reruns of a trial whose worker died (a PBT member: from its last checkpoint)
    storage_retry_s: float = Field(60.0, ge=0)  # how long a study call retries an unreachable storage, then stops
    tracking: list[Literal["mlflow", "wandb"]] = Field(default_factory=list)  # besides TensorBoard (always)
    dashboard: bool = False  # start the Ray dashboard with a local Ray (http://127.0.0.1:8265)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", v):
            raise ValueError(f"must be letters, digits, '_', '.', '-' (a folder name), got {v!r}")
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(sqlite|postgresql(\+\w+)?|mysql(\+\w+)?)://", v):
            raise ValueError(f"must be a sqlite://, postgresql:// or mysql:// URL, got {_mask(v)!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> CampaignConfig:
        fn = SPACES_BY_NAME[self.space]
        allowed = set(inspect.signature(fn).parameters) - {"trial"}
        for key in self.space_options:
            if key not in allowed:
                raise ValueError(f"space_options.{key}: unknown option for the {self.space} space "
                                 f"(known: {', '.join(sorted(allowed))})")
        for key, value in self.space_options.items():
            _check_space_option(self.space, key, value)
        if self.space == "custom" and not self.space_options.get("ops"):
            raise ValueError("space_options.ops: the custom space needs {op: [low, high]} entries")
        try:
            if "ops" in self.space_options:
                check_ops(list(self.space_options["ops"]), "space_options.ops")
            if self.sampler == "grid":
                grid_space(self.space, **self.space_options)
            for i, name in enumerate(self.resolved_baselines()):
                try:
                    baseline_params(self.space, name, **self.space_options)
                except PolicyError as exc:
                    raise PolicyError(f"baselines[{i}]: {str(exc).split(': ', 1)[-1]}") from None
        except PolicyError as exc:
            raise ValueError(str(exc)) from None
        if self.mode == "pbt" and "objective" not in self.model_fields_set:
            self.__dict__["objective"] = "proxy"  # a population trains proxies; the search default does not apply
        if self.mode == "pbt":
            self._check_pbt()
        for i, name in enumerate(self.race.baselines):
            _check_baseline(name, f"race.baselines[{i}]")
        if self.objective == "finetune" and self.mode == "search":
            if not self.target.base_augment:
                raise ValueError("target.base_augment: the finetune objective needs the base augmentation in every "
                                 "candidate (without it, switching augmentation off late scores best); use "
                                 "objective 'full' instead")
            shared = self.finetune_epochs()
            if not 1 <= shared < self.target.epochs:
                raise ValueError(f"finetune.fraction: {self.finetune.fraction} of target.epochs ({self.target.epochs}) "
                                 f"leaves {shared} shared epochs; need 1..{self.target.epochs - 1}")
        if self.val_folds > 1 and (self.mode == "pbt" or self.objective == "density"):
            what = "pbt mode" if self.mode == "pbt" else "the density objective (it has density_k folds)"
            raise ValueError(f"val_folds: {what} does not take K-fold validation; use val_folds 1")
        limit = self.pbt.population_size if self.mode == "pbt" else self.num_trials
        if self.max_concurrent > limit:
            self.__dict__["max_concurrent"] = limit
        return self

    def _check_pbt(self) -> None:
        from search_spaces.pba import check_pba_ops

        if self.objective != "proxy":
            raise ValueError(f"objective: pbt mode trains proxies (objective 'proxy'), got {self.objective!r}")
        if self.pbt.perturbation_interval >= self.proxy.epochs:
            raise ValueError(f"pbt.perturbation_interval: must be < proxy.epochs ({self.proxy.epochs}) or the "
                             f"population never perturbs, got {self.pbt.perturbation_interval}")
        if self.pbt.ops is not None:
            try:
                check_pba_ops(self.pbt.ops, self.pbt.copies)
            except PolicyError as exc:
                raise ValueError(str(exc)) from None

    # -- derived values ------------------------------------------------------------------------------------

    def finetune_epochs(self) -> int:
        """Epochs of the shared model before the late-phase trials (``finetune.fraction`` of the target)."""
        return int(round(self.finetune.fraction * self.target.epochs))

    def resolved_val_size(self, num_images: int) -> int:
        """``val_size``, or (None) every image not in the training split, at most ``MAX_DEFAULT_VAL``."""
        if self.val_size is not None:
            return self.val_size
        return max(0, min(MAX_DEFAULT_VAL, num_images - self.train_size))

    def resolved_baselines(self) -> list[str]:
        """The presets enqueued as the first trials."""
        if self.baselines is not None:
            return list(self.baselines)
        natural = self.space in ("randaugment", "randaugment_plus") and not self.space_options
        return ["randaugment"] if natural else []

    @property
    def folder(self) -> Path:
        """Absolute campaign folder ``<output>/<name>``."""
        return (self.output / self.name).resolve()

    def storage_url(self) -> str:
        """The Optuna storage URL with the password from ``$POLICY_SEARCH_DB_PASSWORD`` filled in."""
        if self.storage is None:
            return f"sqlite:///{self.folder / 'study.db'}"
        from sqlalchemy.engine import make_url

        url = make_url(self.storage)
        if url.password is None and os.environ.get(PASSWORD_ENV):
            url = url.set(password=os.environ[PASSWORD_ENV])
        return url.render_as_string(hide_password=False)

    def public_dict(self) -> dict[str, Any]:
        """JSON-ready config with secrets masked (what goes into the results)."""
        d = self.model_dump(mode="json")
        d["storage"] = _strip_password(self.storage) if self.storage else None
        return d


MAX_DEFAULT_VAL = 10_000  # validation images by default: standard error 0.46 points at 70% accuracy


def _check_baseline(name: str, where: str) -> None:
    """A race baseline is a preset name or a policy file (validated now, so a typo fails before any training)."""
    from search_spaces import load_policy_or_schedule

    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: must be a preset name or a policy file, got {name!r}")
    if name == "crop_flip":
        return
    try:
        load_policy_or_schedule(name)
    except PolicyError as exc:
        raise ValueError(f"{where}: {exc}") from None


_BOOL_OPTIONS = ("weights", "ramp", "mix")
_COUNT_OPTIONS = {"max_n": (1, 16), "num_bins": (2, 101), "num_subpolicies": (1, 64), "ops_per_subpolicy": (1, 8)}


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_space_option(space: str, key: str, value: Any) -> None:
    """Types and ranges of one ``space_options`` entry (ValueError naming it)."""
    where = f"space_options.{key}"
    if key in _COUNT_OPTIONS:
        lo, hi = _COUNT_OPTIONS[key]
        if not (isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi):
            raise ValueError(f"{where}: must be a whole number in [{lo}, {hi}], got {value!r}")
    elif key in _BOOL_OPTIONS:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: must be true or false, got {value!r}")
    elif key == "ops" and space == "custom":
        if not isinstance(value, dict):
            raise ValueError(f"{where}: the custom space needs a mapping {{op: [low, high]}}, got {value!r}")
        for op, rng in value.items():
            if not (isinstance(rng, list | tuple) and len(rng) == 2 and all(_is_number(r) for r in rng)
                    and 0 <= rng[0] <= rng[1] <= 1):
                raise ValueError(f"{where}.{op}: needs a level range [low, high] within [0, 1], got {rng!r}")
    elif key == "ops" and not (isinstance(value, list | tuple) and all(isinstance(o, str) for o in value)):
        raise ValueError(f"{where}: must be a list of op names, got {value!r}")


def _mask(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a parsable URL: drop anything that looks like user:password@
        return re.sub(r"//[^@/]*@", "//***@", url)


def _strip_password(url: str) -> str:
    """The URL without its password (resume reads it from the environment again)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url)._replace(password=None).render_as_string(hide_password=False)  # set() keeps None
    except Exception:
        return _mask(url)


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"{key}: {p} is not a section")
    d[parts[-1]] = value


def load_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None,
                **kw: Any) -> CampaignConfig:
    """Load a YAML config (``yaml.safe_load``), apply ``overrides`` (dotted keys, e.g. ``proxy.epochs``)
    and keyword overrides, and validate. ``None`` values in overrides are skipped (unset CLI flags)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config: no such file {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config: {p} is not valid YAML ({str(exc).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config: {p} must hold a mapping, got {type(loaded).__name__}")
        data = loaded or {}
    for key, value in {**(overrides or {}), **kw}.items():
        if value is not None:
            _set_dotted(data, key, value)
    return validate_config(data)


def validate_config(data: Mapping[str, Any] | CampaignConfig) -> CampaignConfig:
    """A validated :class:`CampaignConfig`, or :class:`ConfigError` with one line."""
    if isinstance(data, CampaignConfig):
        data = data.model_dump()
    try:
        return CampaignConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(describe_error(exc, CampaignConfig)) from None
