"""Property-based fuzzing of policy documents and campaign configs: malformed input is rejected with one line.

Each test draws 1,000+ documents by mutating valid ones (delete a field, change a value's type or range, add
an unknown key, nest garbage, put any JSON number anywhere, grow an array, nest deeply) or from scratch; every
one either loads (and then saves and reloads to the same bytes) or raises the project's own one-line error.
No other exception may escape, and nothing is executed. The documented limits of untrusted policy documents
(``search_spaces.policy_validation``) are checked at and just past each bound.
"""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy_search.config import ConfigError, validate_config
from search_spaces import (
    PRESETS,
    OpConfig,
    Policy,
    PolicyError,
    Schedule,
    Segment,
    dumps,
    load_policy,
    loads,
    loads_any,
    preset,
)
from search_spaces import policy_validation as limits

# numbers of any size: unbounded integers, every float (infinity becomes JSON's Infinity, which is refused)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
VALID_DOCS = [json.loads(dumps(preset(name))) for name in PRESETS]
SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))


def _paths(doc, prefix=()):
    """Every (path) to a value inside a JSON document."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated(draw, valid_docs):
    doc = json.loads(json.dumps(draw(st.sampled_from(valid_docs))))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add_key"]))
        if action == "replace":
            parent[path[-1]] = draw(JSON_VALUES)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=6))] = draw(JSON_VALUES)
        if not isinstance(doc, dict):
            break
    return doc


def _assert_one_line(exc: Exception) -> None:
    message = str(exc)
    assert message and "\n" not in message and "Traceback" not in message


def _load_or_one_line(text: str) -> None:
    """``text`` loads, and saves and reloads to the same bytes; or it is a one-line PolicyError."""
    try:
        policy = loads_any(text)
    except PolicyError as exc:
        _assert_one_line(exc)
    else:
        assert dumps(loads_any(dumps(policy))) == dumps(policy)


@SETTINGS
@given(doc=mutated(VALID_DOCS) | JSON_VALUES)
def test_fuzzed_policy_documents_load_or_fail_with_one_line(doc):
    try:
        text = json.dumps(doc)
    except (TypeError, ValueError):
        return
    try:
        policy = loads(text)
    except PolicyError as exc:
        _assert_one_line(exc)
    else:
        assert dumps(loads(dumps(policy))) == dumps(policy)


HOLE = "@@hole@@"  # a placeholder string, replaced in the JSON text by raw tokens Python's json would not write

# JSON number tokens of any size: thousands of digits (Python refuses to convert 4,301+), overflowing exponents
# (read as infinity), the int64 edges, subnormals
NUMBER_TOKENS = st.one_of(
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.integers(1, 6000).map(lambda n: "-1" + "0" * n),
    st.tuples(st.integers(1, 500), st.integers(-1000, 1000)).map(lambda t: f"{'7' * t[0]}.5e{t[1]}"),
    st.sampled_from(["1e999", "-1e999", "1E400", "9223372036854775807", "9223372036854775808",
                     "-9223372036854775808", "1.7976931348623157e308", "4.9e-324", "0", "-0", "0.0"]),
)
# deep nesting, written as text (Python's own encoder would recurse): arrays, objects, or both
_NESTINGS = {"[": "]", '{"k": ': "}", '[{"k": ': "}]"}
NESTED_TOKENS = st.tuples(st.integers(1, 5000), st.sampled_from(list(_NESTINGS))).map(
    lambda t: t[1] * t[0] + "1" + _NESTINGS[t[1]] * t[0])


@st.composite
def with_hole(draw, valid_docs):
    """A valid document (policy or schedule) with one value, or a new provenance entry, replaced by HOLE."""
    doc = json.loads(json.dumps(draw(st.sampled_from(valid_docs))))
    paths = [p for p in _paths(doc) if p] + [("provenance", "hole")]
    path = draw(st.sampled_from(paths))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = HOLE
    return json.dumps(doc)


VALID_SCHEDULE = json.loads(dumps(Schedule((Segment(0, 2, preset("crop_flip")), Segment(2, 5, preset("randaugment"))))))
VALID_ANY = [*VALID_DOCS, VALID_SCHEDULE]


@SETTINGS
@given(text=with_hole(VALID_ANY), token=NUMBER_TOKENS | NESTED_TOKENS)
def test_numbers_of_any_size_and_deep_nesting_anywhere_load_or_fail_with_one_line(text, token):
    _load_or_one_line(text.replace(json.dumps(HOLE), token))


@st.composite
def grown(draw, valid_docs):
    """A valid document with one of its arrays (ops, sub-policies, one sub-policy's ops, weights, batch ops,
    fill, segments, a provenance list) grown or shrunk to 0..3,000 items by repeating its own items."""
    doc = json.loads(json.dumps(draw(st.sampled_from(valid_docs))))
    doc.setdefault("provenance", {})["list"] = [1, "a", None]
    arrays = [p for p in _paths(doc) if p and isinstance(_at(doc, p), list)]
    target = _at(doc, draw(st.sampled_from(arrays)))
    n = draw(st.integers(0, 3000))
    items = list(target) or [draw(JSON_SCALARS)]
    target[:] = [json.loads(json.dumps(items[i % len(items)])) for i in range(n)]
    return doc


def _at(doc, path):
    for key in path:
        doc = doc[key]
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=grown(VALID_ANY))
def test_huge_arrays_load_or_fail_with_one_line(doc):
    _load_or_one_line(json.dumps(doc))


# ---------------------------------------------------------------------------------------------
# The documented limits, at the bound (loads) and one past it (one line naming the field)


def _aa_doc(**policy) -> dict:
    doc = json.loads(dumps(preset("autoaugment_cifar10")))
    doc["policy"].update(policy)
    return doc


def _seq_doc(n: int) -> dict:
    doc = json.loads(dumps(preset("crop_flip")))
    doc["policy"]["ops"] = [{"op": "hflip", "prob": 0.5}] * n
    return doc


def _provenance_doc(value) -> str:
    return json.dumps({**json.loads(dumps(preset("none"))), "provenance": {"data": value}})


def _nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


SUB = [{"op": "invert", "prob": 0.5}]
LIMITS = [  # (document at the limit, document past it, text the error names)
    (_aa_doc(subpolicies=[SUB] * 64), _aa_doc(subpolicies=[SUB] * 65), "policy.subpolicies: 65 sub-policies"),
    (_aa_doc(subpolicies=[SUB * 16]), _aa_doc(subpolicies=[SUB * 17]), "policy.subpolicies[0]: 17 ops"),
    (_seq_doc(128), _seq_doc(129), "policy.ops: 129 ops"),
    (_aa_doc(subpolicies=[SUB, SUB], weights=[1e6, 1]), _aa_doc(subpolicies=[SUB, SUB], weights=[1.5e6, 1]),
     "policy.weights[0]: must be a number in [0, 1,000,000]"),
    ({**_seq_doc(1), "batch_ops": [{"op": "mixup", "prob": 0.0}] * 8},
     {**_seq_doc(1), "batch_ops": [{"op": "mixup", "prob": 0.0}] * 9}, "batch_ops: 9 batch ops"),
    (_provenance_doc(_nested(limits.MAX_DATA_DEPTH - 1)), _provenance_doc(_nested(limits.MAX_DATA_DEPTH)),
     "nested deeper than 32 levels"),
    (_provenance_doc([0] * (limits.MAX_DATA_VALUES - 1)), _provenance_doc([0] * limits.MAX_DATA_VALUES),
     "provenance: more than 100,000 values"),
    (_provenance_doc(9223372036854775807), _provenance_doc(9223372036854775808), "number 9223372036854775808"),
    (_provenance_doc(-9.2e18), _provenance_doc(1e300), "number 1e+300"),
]


@pytest.mark.parametrize(("ok", "bad", "message"), LIMITS)
def test_documented_limits(ok, bad, message):
    ok, bad = (v if isinstance(v, str) else json.dumps(v) for v in (ok, bad))
    assert dumps(loads(dumps(loads(ok)))) == dumps(loads(ok))
    with pytest.raises(PolicyError) as info:
        loads(bad)
    assert message in str(info.value)
    _assert_one_line(info.value)


def test_5000_digit_number_and_1e999_are_one_line_errors():
    """Issue 16: a 5,000-digit number raised a raw ValueError; provenance 1e999 loaded, then could not be saved."""
    doc = dumps(preset("crop_flip"))
    for token in ("1" * 5000, "-" + "1" * 5000, "1e999", "-1e999", "1" * 5000 + ".0"):
        text = doc.replace('"provenance": {', f'"provenance": {{"n": {token}, ', 1)
        assert token in text
        with pytest.raises(PolicyError, match=r"^number .* is out of range \(numbers must be finite") as info:
            loads(text)
        assert len(str(info.value)) < 200  # the digits are not copied into the message
    # a policy built in Python is held to the same rule: refused when built, not when saved
    with pytest.raises(PolicyError, match=r"^provenance\.score: inf is out of range"):
        preset("crop_flip").with_provenance(score=float("inf"))
    with pytest.raises(PolicyError, match=r"^provenance\.n: an integer of about 5,000 digits is out of range"):
        preset("crop_flip").with_provenance(n=10**4999)


def test_oversized_documents_and_schedules_are_refused_quickly(tmp_path):
    start = time.perf_counter()
    big = " " * limits.MAX_DOCUMENT_BYTES + dumps(preset("none"))
    with pytest.raises(PolicyError, match=r"^document of 16,777,\d{3} bytes; at most 16,777,216 are allowed"):
        loads(big)
    path = tmp_path / "big.json"
    path.write_text(big)
    with pytest.raises(PolicyError, match=r"^big\.json: document of 16,777,217 bytes"):  # reads one byte past
        load_policy(path)
    segments = [{"start_epoch": i, "end_epoch": i + 1, "policy": json.loads(dumps(preset("none")))}
                for i in range(limits.MAX_SEGMENTS + 1)]
    with pytest.raises(PolicyError, match=r"^segments: 4,097 segments; at most 4,096 are allowed"):
        loads_any(json.dumps({**VALID_SCHEDULE, "segments": segments}))
    assert time.perf_counter() - start < 30


def test_the_constructor_enforces_the_same_limits():
    op = OpConfig("invert", 0.5)
    with pytest.raises(PolicyError, match=r"^policy\.subpolicies: 65 sub-policies; at most 64"):
        Policy("subpolicy_choice", subpolicies=((op,),) * 65)
    with pytest.raises(PolicyError, match=r"^policy\.subpolicies\[0\]: 17 ops; at most 16"):
        Policy("subpolicy_choice", subpolicies=((op,) * 17,))
    with pytest.raises(PolicyError, match=r"^policy\.ops\[0\]\.prob: expected a number, got a string"):
        Policy("sequential", ops=(OpConfig("invert", "high"),))
    with pytest.raises(PolicyError, match=r"^provenance\.a\.b(\[0\])+: nested deeper than 32 levels$"):
        Policy("sequential", ops=(op,), provenance={"a": {"b": _nested(40)}})


@SETTINGS
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_fuzzed_bytes_never_crash_the_loader(text):
    try:
        loads(text)
    except PolicyError as exc:
        _assert_one_line(exc)


VALID_CONFIGS = [
    {"name": "fuzz", "num_trials": 3, "proxy": {"epochs": 1, "width": 8}},
    {"name": "fuzz2", "space": "autoaugment", "objective": "density", "space_options": {"num_subpolicies": 2}},
    {"name": "fuzz3", "space": "custom", "space_options": {"ops": {"rotate": [0.0, 0.5], "invert": [0, 0]}}},
]


@SETTINGS
@given(config=mutated(VALID_CONFIGS) | JSON_VALUES)
def test_fuzzed_campaign_configs_validate_or_fail_with_one_line(config):
    try:
        validate_config(config if isinstance(config, dict) else {"name": config})
    except ConfigError as exc:
        _assert_one_line(exc)
