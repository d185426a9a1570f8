"""The policy format's data model: frozen dataclasses holding plain data.

:class:`Policy` (ops, sub-policies, batch ops, rendering defaults, provenance) and :class:`Schedule` (policies
over training) are validated when built, by the one validator (:mod:`search_spaces.policy_validation`), and
turn into their canonical JSON document with ``to_dict``. Numbers are stored as floats, whatever real number
type they were given as. Nothing here runs or converts a policy: :class:`~search_spaces.augment.Augmenter`
executes it, :mod:`search_spaces.export` converts it, :mod:`search_spaces.policy_io` reads and writes it.
"""

from __future__ import annotations

import bisect
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

from .errors import PolicyError
from .ops import OPS
from .policy_validation import validate_policy, validate_schedule

SCHEMA = "augpolicy/1.0"
SCHEDULE_SCHEMA = "augschedule/1.0"
INPUT_CONTRACT = {"value_range": [0.0, 1.0], "dtypes": ["uint8", "float32"], "channels": [1, 3]}
PolicyType = Literal["subpolicy_choice", "rand_augment", "trivial_augment", "sequential"]

__all__ = ["SCHEMA", "SCHEDULE_SCHEMA", "INPUT_CONTRACT", "PolicyType", "Magnitude", "OpConfig", "BatchOp",
           "Policy", "Segment", "Schedule"]


def _real(x: Any) -> Any:
    """``x`` as a float when it is a real number (not a bool) that fits one; anything else unchanged, for the
    validator to name."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        try:
            return float(x)
        except OverflowError:
            pass
    return x


def _store_floats(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None:
            object.__setattr__(obj, name, _real(value))


@dataclass(frozen=True)
class Magnitude:
    """Distribution of an op's physical value: fixed, uniform(low, high) or normal(value, std)."""

    value: float | None = None
    low: float | None = None
    high: float | None = None
    std: float | None = None
    random_sign: bool = False

    def __post_init__(self) -> None:
        _store_floats(self, "value", "low", "high", "std")

    @property
    def dist(self) -> str:
        if self.low is not None:
            return "uniform"
        return "normal" if self.std is not None else "fixed"

    @property
    def center(self) -> float:
        """The fixed value, the mean, or the middle of the uniform range."""
        return self.value if self.low is None else (self.low + self.high) / 2.0


@dataclass(frozen=True)
class OpConfig:
    """One op instance inside a policy."""

    op: str
    prob: float = 1.0
    magnitude: Magnitude | None = None
    weight: float = 1.0  # selection weight (rand_augment / trivial_augment only)

    def __post_init__(self) -> None:
        _store_floats(self, "prob", "weight")


@dataclass(frozen=True)
class BatchOp:
    """A batch-level mixing op (``mixup``/``cutmix``), chosen for a batch with probability ``prob``."""

    op: str
    prob: float = 1.0
    alpha: float = 1.0

    def __post_init__(self) -> None:
        _store_floats(self, "prob", "alpha")


def _tuple(x: Any) -> Any:
    return tuple(x) if isinstance(x, list) else x


def _export(name: str) -> Callable[..., Any]:
    """A function of :mod:`search_spaces.export`, looked up when called.

    The export module builds on this one (it runs policies through the augmenter, which reads policies), so
    the model does not import it; these forwards exist for convenience (``policy.to_timm()``).
    """
    return getattr(importlib.import_module(f"{__package__}.export"), name)


@dataclass(frozen=True)
class Policy:
    """A validated policy document. Build with :func:`~search_spaces.policy.loads` /
    :func:`~search_spaces.policy.load_policy` or directly (validated either way)."""

    type: PolicyType
    ops: tuple[OpConfig, ...] = ()
    subpolicies: tuple[tuple[OpConfig, ...], ...] = ()
    weights: tuple[float, ...] | None = None  # sub-policy weights (subpolicy_choice)
    num_ops: int = 1  # rand_augment
    batch_ops: tuple[BatchOp, ...] = ()
    name: str = ""
    interpolation: str = "bilinear"
    fill: tuple[float, ...] = (0.0,)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    extras: Mapping[str, Any] = field(default_factory=dict)  # preserved "x-" keys

    def __post_init__(self) -> None:
        subs = self.subpolicies
        object.__setattr__(self, "ops", _tuple(self.ops))
        if isinstance(subs, (list, tuple)):
            object.__setattr__(self, "subpolicies", tuple(_tuple(sp) for sp in subs))
        object.__setattr__(self, "batch_ops", _tuple(self.batch_ops))
        for name in ("weights", "fill"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(_real(v) for v in value))
        validate_policy(self)

    def with_provenance(self, **info: Any) -> Policy:
        """A copy with ``info`` merged into the provenance."""
        return replace(self, provenance={**self.provenance, **info})

    def all_ops(self) -> tuple[OpConfig, ...]:
        """Every op instance, in document order."""
        return tuple(o for sp in self.subpolicies for o in sp) if self.subpolicies else self.ops

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON document."""
        body: dict[str, Any] = {"type": self.type}
        if self.type == "subpolicy_choice":
            body["weights"] = list(self.weights) if self.weights is not None else None
            body["subpolicies"] = [[_op_to_dict(o, self.type) for o in sp] for sp in self.subpolicies]
        else:
            if self.type == "rand_augment":
                body["num_ops"] = self.num_ops
            body["ops"] = [_op_to_dict(o, self.type) for o in self.ops]
        doc: dict[str, Any] = {"schema": SCHEMA, "name": self.name, "policy": body}
        doc["batch_ops"] = [{"op": b.op, "prob": b.prob, "alpha": b.alpha} for b in self.batch_ops]
        doc["defaults"] = {"interpolation": self.interpolation, "fill": list(self.fill)}
        doc["input_contract"] = dict(INPUT_CONTRACT)
        doc["provenance"] = dict(self.provenance)
        doc.update(self.extras)
        return doc

    def to_torchvision(self, seed: int | None = None):
        """A ``torchvision.transforms.v2`` transform replaying this policy per image: forwards to
        :func:`search_spaces.export.to_torchvision`."""
        return _export("to_torchvision")(self, seed)

    def to_timm(self) -> str:
        """A timm ``auto_augment`` config string, where one exists: forwards to :func:`search_spaces.export.to_timm`."""
        return _export("to_timm")(self)

    def fidelity(self) -> dict[str, dict[str, Any]]:
        """How faithfully each export target reproduces this policy: forwards to
        :func:`search_spaces.export.fidelity_report`."""
        return _export("fidelity_report")(self)


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() and abs(x) < 2**53 else float(x)


def _op_to_dict(o: OpConfig, ptype: str) -> dict[str, Any]:
    spec = OPS[o.op]
    d: dict[str, Any] = {"op": o.op, "prob": o.prob}
    if ptype in ("rand_augment", "trivial_augment"):
        d["weight"] = o.weight
    if o.magnitude is not None:
        cast = _num if spec.integer else float
        m: dict[str, Any] = {}
        for key in ("value", "low", "high", "std"):
            v = getattr(o.magnitude, key)
            if v is not None:
                m[key] = float(v) if key == "std" else cast(v)
        m["random_sign"] = o.magnitude.random_sign
        d["magnitude"] = m
    return d


class Segment(NamedTuple):
    """Epochs ``start_epoch .. end_epoch - 1`` (0-based; ``end_epoch`` exclusive) train with ``policy``."""

    start_epoch: int
    end_epoch: int
    policy: Policy


@dataclass(frozen=True)
class Schedule:
    """Policies over training: segments covering epochs ``[0, epochs)`` in order, without gaps or overlaps.

    Build with :func:`~search_spaces.policy.loads_any` / :func:`~search_spaces.policy.load_schedule` or directly
    (validated either way); :meth:`policy_at` gives the policy of a 0-based epoch.
    """

    segments: tuple[Segment, ...]
    name: str = ""
    provenance: Mapping[str, Any] = field(default_factory=dict)
    extras: Mapping[str, Any] = field(default_factory=dict)  # preserved "x-" keys

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(Segment(*s) for s in self.segments))
        validate_schedule(self, Policy)

    @property
    def epochs(self) -> int:
        """How many epochs the schedule covers (the last ``end_epoch``)."""
        return self.segments[-1].end_epoch

    @classmethod
    def constant(cls, policy: Policy, epochs: int, name: str | None = None) -> Schedule:
        """One segment: ``policy`` for all ``epochs``."""
        return cls((Segment(0, epochs, policy),), name=policy.name if name is None else name,
                   provenance=dict(policy.provenance))

    def segment_index(self, epoch: int, total_epochs: int | None = None) -> int:
        """Index of the segment that 0-based ``epoch`` trains with.

        With ``total_epochs`` (the length of the run replaying the schedule) the schedule is stretched to the
        run, as PBA replays its schedules: epoch ``e`` reads the schedule at ``floor(e * epochs / total_epochs)``.
        Without it, epochs map one to one and one past the end is a :class:`PolicyError`.
        """
        if total_epochs is not None:
            if isinstance(total_epochs, bool) or not isinstance(total_epochs, int) or total_epochs < 1:
                raise PolicyError(f"total_epochs: must be a whole number >= 1, got {total_epochs!r}")
            if not 0 <= epoch < total_epochs:
                raise PolicyError(f"epoch: {epoch} is outside the run's epochs [0, {total_epochs})")
            epoch = epoch * self.epochs // total_epochs
        if not 0 <= epoch < self.epochs:
            raise PolicyError(f"epoch: {epoch} is outside the schedule's epochs [0, {self.epochs}) "
                              "(pass total_epochs to stretch the schedule to a longer run)")
        return bisect.bisect_right([s.end_epoch for s in self.segments], epoch)

    def policy_at(self, epoch: int, total_epochs: int | None = None) -> Policy:
        """The policy of 0-based ``epoch`` (see :meth:`segment_index` for ``total_epochs``)."""
        return self.segments[self.segment_index(epoch, total_epochs)].policy

    def with_provenance(self, **info: Any) -> Schedule:
        """A copy with ``info`` merged into the provenance."""
        return replace(self, provenance={**self.provenance, **info})

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON document."""
        doc: dict[str, Any] = {"schema": SCHEDULE_SCHEMA, "name": self.name, "segments": [
            {"start_epoch": s.start_epoch, "end_epoch": s.end_epoch, "policy": s.policy.to_dict()}
            for s in self.segments]}
        doc["provenance"] = dict(self.provenance)
        doc.update(self.extras)
        return doc
