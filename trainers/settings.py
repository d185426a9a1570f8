"""The one configuration model of the trainers: validated, frozen pydantic settings with one-line errors.

* :class:`Settings`: the base. Unknown keys are refused, values are checked by their ``Field`` constraints
  and validators, and a bad value raises ``error_type`` (:class:`SettingsError`; the pipelines'
  ``PipelineError``) with one line naming the key, e.g. ``alpha: must be in [0, 1], got 3``.
  ``to_dict``/``from_dict`` round-trip plain values (JSON, YAML); the models pickle (Ray ships them).
* :class:`RunSettings`: what one run adds (seed, threads); its constructor raises the one-line error too.
* :class:`TrainingSettings`: what every training shares (batch size, weight decay, label smoothing, the
  crop+flip base augmentation) and the one conversion to the engine's :class:`~trainers.engine.TrainConfig`.
* :class:`TrainingKnobs`: one training of a named model (the proxy's knobs without its seed);
  :class:`trainers.proxy.ProxyConfig` (with :class:`RunSettings`) and the campaign's proxy budget and
  target recipe build on it, the pipeline configs (:mod:`trainers.pipelines`) on :class:`TrainingSettings`
  and :class:`RunSettings`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, ClassVar, Self, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from search_spaces.policy import one_line

from .engine import TrainConfig
from .models import MODEL_NAMES

__all__ = ["SettingsError", "Settings", "RunSettings", "TrainingSettings", "TrainingKnobs", "ModelName",
           "ENGINE_FIELDS", "describe_error"]


class SettingsError(ValueError):
    """An invalid trainer setting; the message is one printable line naming the key."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def _known_model(name: str) -> str:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    return name


#: A model name of :data:`trainers.models.MODEL_NAMES`.
ModelName = Annotated[str, AfterValidator(_known_model)]

_BOUNDS = {"greater_than_equal": "ge", "greater_than": "gt", "less_than_equal": "le", "less_than": "lt"}
_OPS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (``X``, ``X | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)), None)


def _locate(model: type[BaseModel], loc: Sequence[Any]) -> tuple[type[BaseModel], Any]:
    """The model that holds the last key of ``loc`` (walking nested models) and that key's field (or None)."""
    for key in loc[:-1]:
        field = model.model_fields.get(str(key))
        inner = _submodel(field.annotation) if field is not None else None
        if inner is None:
            return model, None
        model = inner
    return model, model.model_fields.get(str(loc[-1])) if loc else None


def _interval(model: type[BaseModel], loc: Sequence[Any], ctx: Mapping[str, Any]) -> str:
    """``in [0, 1)`` for a field bounded on both sides, else ``>= 1`` (the bound that failed)."""
    field = _locate(model, loc)[1]
    bounds = {key: getattr(m, key) for m in (field.metadata if field else ()) for key in _OPS if hasattr(m, key)}
    low = next((("[" if k == "ge" else "(", v) for k, v in bounds.items() if k in ("ge", "gt")), None)
    high = next(((v, "]" if k == "le" else ")") for k, v in bounds.items() if k in ("le", "lt")), None)
    if low and high:
        return f"in {low[0]}{low[1]:g}, {high[0]:g}{high[1]}"
    key = next(k for k in _OPS if k in ctx)
    return f"{_OPS[key]} {ctx[key]:g}" if isinstance(ctx[key], int | float) else f"{_OPS[key]} {ctx[key]}"


def describe_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line for the first error of ``exc`` raised by ``model`` (nested models included): ``<key>: <what is
    wrong>, got <value>``. Every config of the project (trainer settings, pipelines, the campaign) uses it."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind in _BOUNDS:
        msg = f"must be {_interval(model, err['loc'], ctx)}, got {got!r}"
    elif kind == "extra_forbidden":
        holder = _locate(model, err["loc"])[0]
        msg = f"unknown field (known {holder.__name__} keys: {', '.join(sorted(holder.model_fields))})"
    elif kind == "literal_error":
        msg = f"must be one of {ctx.get('expected')}, got {got!r}"
    elif kind in ("value_error", "assertion_error"):
        msg = str(ctx.get("error", err["msg"]))
        if not loc:  # a check across keys names its own key
            return one_line(msg)
    else:
        msg = f"{err['msg'].lower()}, got {got!r}" if "input" in err else err["msg"].lower()
    return one_line(f"{loc or model.__name__}: {msg}")


class Settings(BaseModel):
    """Base of every trainer config: frozen, unknown keys refused; :meth:`from_dict` raises one-line
    ``error_type`` errors. It nests in other models (the campaign's sections) with pydantic's own errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    error_type: ClassVar[type[ValueError]] = SettingsError

    @classmethod
    @contextmanager
    def _one_line_errors(cls) -> Iterator[None]:
        try:
            yield
        except ValidationError as exc:
            raise cls.error_type(describe_error(exc, cls)) from None

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain values (JSON-ready)."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        """Inverse of :meth:`to_dict`; an unknown key or a bad value is a one-line ``error_type``."""
        with cls._one_line_errors():
            return cls.model_validate(dict(d))


class RunSettings(Settings):
    """The settings of one run, made on their own (never nested): its seed and threads. The constructor, too,
    raises the one-line ``error_type`` error."""

    seed: int = Field(0, ge=0)
    num_threads: int | None = Field(None, ge=1)  # torch threads while training; None: leave as is

    def __init__(self, /, **data: Any) -> None:
        with self._one_line_errors():
            super().__init__(**data)


#: The engine settings a config hands to :class:`~trainers.engine.TrainConfig` under their own names, where it
#: has them; a stage gives the rest (its epochs or learning rate, the normalisation, gradient clipping).
ENGINE_FIELDS = ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "seed", "num_threads",
                 "eval_every")


class TrainingSettings(Settings):
    """What every training shares; ``train_config`` is the one way from a config to the engine's settings."""

    batch_size: int = Field(128, ge=1)
    weight_decay: float = Field(5e-4, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    base_augment: bool = True  # crop+flip before the searched or given policy

    def train_config(self, **stage: Any) -> TrainConfig:
        """The engine's ``TrainConfig``: this config's :data:`ENGINE_FIELDS`, then ``stage``'s values."""
        fields = type(self).model_fields
        return TrainConfig(**{**{k: getattr(self, k) for k in ENGINE_FIELDS if k in fields}, **stage})


class TrainingKnobs(TrainingSettings):
    """One training of a named model: architecture, size, schedule and regularisation, without the seed
    (the caller's). The defaults are the proxy's: a 0.1M-parameter ProxyCNN for 8 epochs."""

    model: ModelName = "proxy"
    width: int = Field(16, ge=1)
    depth: int = Field(1, ge=1)
    epochs: int = Field(8, ge=1)
    lr: float = Field(0.2, gt=0)
