"""PBA's search space (Ho et al. 2019) and the policy one point of it stands for.

A point is ``2 x len(ops) x copies`` whole numbers: for copy ``k`` of op ``o`` a probability bin
``p_<o>_<k>`` in 0..10 (probability ``bin / 10``) and a magnitude bin ``m_<o>_<k>`` in 0..9 (level
``bin / 10``, PBA's ``PARAMETER_MAX = 10``, in the op's default magnitude space: torchvision's AutoAugment
maxima). PBA searches 15 ops (:data:`PBA_OPS`, its order) with two copies each: 60 numbers.
:func:`explore` is PBA's perturbation: each number is resampled uniformly with a small probability, else
shifted by ``-max_shift .. +max_shift`` and clipped.

PBA's augmentation of one image: draw ``count`` in {0, 1, 2} with probabilities 0.2, 0.3, 0.5, walk the
op copies in random order and apply each with its probability until ``count`` have been applied. The
number applied is ``min(count, F)`` with ``F`` the number of copies whose coin comes up, and an applied op
is (roughly) chosen in proportion to its probability.

Mapping to ``augpolicy/1.0`` (:func:`pba_policy`): a ``rand_augment`` policy with ``num_ops = 2``;
every copy with probability ``p > 0`` is an op with selection ``weight = p`` (``prob`` 1, fixed magnitude,
the op's random sign), plus ``identity`` weighted so that a stage applies an op with probability
``E[min(count, F)] / 2``. The mean number of ops per image is PBA's exactly and applied ops are chosen in
proportion to their PBA probabilities; the spread of the count differs (Binomial(2, q) instead of
``min(count, F)``) and the two stages draw with replacement. The raw bins travel in the provenance.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from .magnitudes import op_at_level
from .ops import OPS
from .policy import OpConfig, Policy, PolicyError

__all__ = ["PBA_OPS", "PROB_BINS", "MAG_BINS", "COUNT_PROBS", "param_names", "zero_params", "random_params",
           "explore", "expected_ops", "pba_policy", "op_curves", "check_pba_ops"]

#: PBA's 15 ops (``augmentation_transforms_hp.py`` order) as registry names.
PBA_OPS = ("rotate", "translate_x", "translate_y", "brightness", "color", "invert", "sharpness", "posterize",
           "shear_x", "solarize", "shear_y", "equalize", "autocontrast", "cutout", "contrast")
PROB_BINS = 10  # probability bins 0..10 -> 0.0 .. 1.0
MAG_BINS = 10  # magnitude bins 0..9 -> level 0.0 .. 0.9
COUNT_PROBS = (0.2, 0.3, 0.5)  # P(count = 0, 1, 2) per image


def check_pba_ops(ops: Sequence[str], copies: int) -> tuple[str, ...]:
    """``ops`` as a tuple of registry names (no duplicates, ``copies >= 1``), or a one-line PolicyError."""
    ops = tuple(ops)
    if not ops:
        raise PolicyError("pbt.ops: needs at least one op")
    for op in ops:
        if op not in OPS or op == "identity":
            raise PolicyError(f"pbt.ops: unknown op '{op}' (known: {', '.join(o for o in OPS if o != 'identity')})")
    if len(set(ops)) != len(ops):
        raise PolicyError("pbt.ops: an op is listed twice (use copies for several instances)")
    if isinstance(copies, bool) or not isinstance(copies, int) or not 1 <= copies <= 4:
        raise PolicyError(f"pbt.copies: must be a whole number in [1, 4], got {copies!r}")
    return ops


def param_names(ops: Sequence[str] = PBA_OPS, copies: int = 2) -> list[str]:
    """``p_<op>_<k>`` and ``m_<op>_<k>`` for every op copy, in op order."""
    return [f"{kind}_{op}_{k}" for op in ops for k in range(copies) for kind in ("p", "m")]


def _top(name: str) -> int:
    return PROB_BINS if name.startswith("p_") else MAG_BINS - 1


def zero_params(ops: Sequence[str] = PBA_OPS, copies: int = 2) -> dict[str, int]:
    """Every bin 0: no augmentation (PBA's starting point)."""
    return dict.fromkeys(param_names(ops, copies), 0)


def random_params(rng: random.Random, ops: Sequence[str] = PBA_OPS, copies: int = 2) -> dict[str, int]:
    """Every bin uniform over its range."""
    return {name: rng.randint(0, _top(name)) for name in param_names(ops, copies)}


def explore(params: Mapping[str, int], rng: random.Random, resample_probability: float = 0.2,
            max_shift: int = 3) -> dict[str, int]:
    """PBA's explore step: each bin is resampled with ``resample_probability``, else moved by a uniform
    ``0 .. max_shift`` in a random direction and clipped to its range."""
    out = {}
    for name, value in params.items():
        top = _top(name)
        if rng.random() < resample_probability:
            out[name] = rng.randint(0, top)
        else:
            step = rng.randint(0, max_shift)
            out[name] = min(top, max(0, int(value) + (step if rng.random() < 0.5 else -step)))
    return out


def expected_ops(probs: Sequence[float], count_probs: Sequence[float] = COUNT_PROBS) -> float:
    """PBA's mean number of ops per image, ``E[min(count, F)]`` with ``F ~ PoissonBinomial(probs)``."""
    dist = [1.0] + [0.0] * (len(count_probs) - 1)  # P(F = j) for j < len(count_probs) - 1, last: P(F >= j)
    for p in probs:
        nxt = [0.0] * len(dist)
        for j, mass in enumerate(dist):
            if j == len(dist) - 1:
                nxt[j] += mass
            else:
                nxt[j] += mass * (1 - p)
                nxt[j + 1] += mass * p
        dist = nxt
    return sum(c_p * sum(min(c, f) * mass for f, mass in enumerate(dist)) for c, c_p in enumerate(count_probs))


def pba_policy(params: Mapping[str, int], ops: Sequence[str] = PBA_OPS, copies: int = 2,
                       name: str = "pba") -> Policy:
    """The ``rand_augment`` policy standing for one PBA point (see the module docstring for the mapping)."""
    instances: list[OpConfig] = []
    probs: list[float] = []
    for op in ops:
        for k in range(copies):
            try:
                p_bin, m_bin = int(params[f"p_{op}_{k}"]), int(params[f"m_{op}_{k}"])
            except KeyError as e:
                raise PolicyError(f"params.{e.args[0]}: missing") from None
            if not (0 <= p_bin <= PROB_BINS and 0 <= m_bin < MAG_BINS):
                raise PolicyError(f"params.p_{op}_{k}/m_{op}_{k}: bins out of range, got {p_bin}, {m_bin}")
            if p_bin:
                prob = p_bin / PROB_BINS
                probs.append(prob)
                instances.append(op_at_level(op, m_bin / 10, 1.0, weight=prob))
    total = sum(probs)
    if total == 0:
        identity = OpConfig("identity", 1.0, None, 1.0)
    else:
        q = expected_ops(probs) / 2  # per-stage probability of applying an op
        identity = OpConfig("identity", 1.0, None, float(f"{total * (1 - q) / q:.12g}"))
    return Policy("rand_augment", ops=(identity, *instances), num_ops=2, name=name, interpolation="nearest",
                  provenance={"space": "pba", "pba_params": dict(params), "pba_ops": list(ops), "copies": copies,
                              "expected_ops_per_image": round(expected_ops(probs), 6)})


def op_curves(params: Mapping[str, int], ops: Sequence[str] = PBA_OPS, copies: int = 2
              ) -> dict[str, tuple[float, float]]:
    """Per op: (summed probability of its copies, probability-weighted mean magnitude bin; plain mean if all 0)."""
    out = {}
    for op in ops:
        ps = [int(params[f"p_{op}_{k}"]) / PROB_BINS for k in range(copies)]
        ms = [int(params[f"m_{op}_{k}"]) for k in range(copies)]
        weight = sum(ps)
        mag = sum(p * m for p, m in zip(ps, ms, strict=True)) / weight if weight else sum(ms) / len(ms)
        out[op] = (weight, mag)
    return out
