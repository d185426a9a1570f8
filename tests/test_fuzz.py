"""Property-based fuzzing of policy documents and campaign configs: malformed input is rejected with one line.

Each test draws 1,000+ documents by mutating valid ones (delete a field, change a value's type or range, add
an unknown key, nest garbage) or from scratch; every one either loads or raises the project's own one-line
error. No other exception may escape, and nothing is executed.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy_search.config import ConfigError, validate_config
from search_spaces import PRESETS, PolicyError, dumps, loads, preset

JSON_SCALARS = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8)
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
