"""Search spaces: define-by-run params round-trip to valid policies; baselines; grid; config validation."""

from __future__ import annotations

import pickle
from functools import partial

import optuna
import pytest

from policy_search.config import ConfigError, load_config
from search_spaces import PolicyError, dumps, load_policy, preset
from search_spaces.magnitudes import RAND_AUGMENT_OPS
from search_spaces.spaces import (
    SPACES_BY_NAME,
    autoaugment,
    baseline_params,
    custom,
    grid_space,
    policy_from_params,
    randaugment,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
CUSTOM = {"ops": {"rotate": [0.0, 0.5], "hflip": [0.0, 0.0], "cutout": [0.2, 0.2]}}


def _sample(space: str, n: int = 20, **opts) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    fn = partial(SPACES_BY_NAME[space], **opts)
    out = []
    for _ in range(n):
        trial = study.ask()
        assert fn(trial) is None
        out.append(trial.params)
        study.tell(trial, 0.0)
    return out


@pytest.mark.parametrize(("space", "opts"), [("randaugment", {}), ("autoaugment", {}), ("custom", CUSTOM),
                                             ("autoaugment", {"num_subpolicies": 2, "ops_per_subpolicy": 3})])
def test_every_sampled_params_builds_a_valid_policy(space, opts):
    for params in _sample(space, **opts):
        policy = policy_from_params(space, params, **opts)
        assert load_policy(policy) is policy
        assert dumps(policy)  # serialisable


def test_randaugment_params_match_the_magnitudes_builder():
    params = {"num_ops": 2, "magnitude": 9}
    assert policy_from_params("randaugment", params).to_dict()["policy"] == preset("randaugment").to_dict()["policy"]
    assert baseline_params("randaugment", "randaugment") == params


def test_autoaugment_is_conditional_and_step_01():
    for params in _sample("autoaugment", 30):
        for key, value in params.items():
            if key.endswith("_p"):
                assert round(value * 10) == pytest.approx(value * 10)
            if key.endswith("_op") and value in ("autocontrast", "equalize", "invert"):
                assert key[:-3] + "_m" not in params  # no magnitude for magnitude-free ops
    policy = policy_from_params("autoaugment", _sample("autoaugment", 1)[0])
    assert policy.type == "subpolicy_choice" and len(policy.subpolicies) == 5
    assert all(len(sp) == 2 for sp in policy.subpolicies)
    for params in _sample("autoaugment", 30):  # Optuna's step-0.1 floats (0.30000000000000004) land as 0.3
        probs = [op.prob for sp in policy_from_params("autoaugment", params).subpolicies for op in sp]
        assert all(p == round(p, 1) for p in probs), probs


def test_custom_space_uses_the_level_ranges():
    for params in _sample("custom", **CUSTOM):
        assert 0.0 <= params["rotate_level"] <= 0.5
        assert "cutout_level" not in params and "hflip_level" not in params  # fixed / no magnitude
    policy = policy_from_params("custom", {"rotate_p": 0.5, "rotate_level": 0.5, "hflip_p": 1.0, "cutout_p": 0.2},
                                **CUSTOM)
    assert [o.op for o in policy.ops] == ["rotate", "hflip", "cutout"]
    assert policy.ops[0].magnitude.value == pytest.approx(15.0)  # half of torchvision's 30 degrees


@pytest.mark.parametrize("space", ["autoaugment", "custom"])
def test_none_baseline_is_a_no_op_policy(space):
    opts = CUSTOM if space == "custom" else {}
    policy = policy_from_params(space, baseline_params(space, "none", **opts), **opts)
    assert all(o.prob == 0.0 for o in policy.all_ops())


@pytest.mark.parametrize(("space", "name"), [("randaugment", "autoaugment_cifar10"), ("autoaugment", "randaugment"),
                                             ("randaugment", "nope")])
def test_unrepresentable_baselines_raise(space, name):
    with pytest.raises(PolicyError):
        baseline_params(space, name)


def test_params_errors_are_one_line():
    with pytest.raises(PolicyError, match=r"^params\.magnitude: missing$"):
        policy_from_params("randaugment", {"num_ops": 2})
    with pytest.raises(PolicyError, match="unknown space"):
        policy_from_params("bogus", {})


def test_grid_and_pickling():
    grid = grid_space("randaugment", max_n=2, num_bins=11)
    assert grid == {"num_ops": [1, 2], "magnitude": list(range(11))}
    with pytest.raises(PolicyError):
        grid_space("autoaugment")
    for fn in (randaugment, autoaugment, custom, partial(randaugment, ops=RAND_AUGMENT_OPS[:3])):
        assert pickle.loads(pickle.dumps(fn))  # spaces travel inside OptunaSearch checkpoints


@pytest.mark.parametrize(("overrides", "message"), [
    ({"num_trials": 0}, "num_trials: must be >= 1, got 0"),
    ({"objective": "magic"}, "objective: must be one of 'finetune', 'full', 'proxy' or 'density', got 'magic'"),
    ({"proxy.epochs": -1}, "proxy.epochs: must be >= 1, got -1"),
    ({"sampler": "grid", "space": "autoaugment"}, "sampler: grid search is only available for the randaugment"),
    ({"baselines": ["autoaugment_cifar10"]}, "baselines[0]: preset 'autoaugment_cifar10' cannot be expressed"),
    ({"space": "custom"}, "space_options.ops: the custom space needs"),
    ({"space_options": {"colour": 1}}, "space_options.colour: unknown option"),
    ({"resources.cpu": 0}, "resources.cpu: must be > 0, got 0"),
    ({"storage": "redis://x"}, "storage: must be a sqlite://"),
    ({"name": "../evil"}, "name: must be letters"),
    ({"typo_field": 1}, "typo_field: unknown field"),
    ({"density_k": 1}, "density_k: must be >= 2, got 1"),
])
def test_invalid_config_is_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    text = str(info.value)
    assert "\n" not in text and text.startswith(message), text


def test_config_yaml_overrides_and_secrets(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("name: y\nnum_trials: 5\nproxy:\n  epochs: 2\nstorage: postgresql+psycopg2://bob@db:5432/ps\n")
    monkeypatch.setenv("POLICY_SEARCH_DB_PASSWORD", "s3cret")
    cfg = load_config(path, overrides={"num_trials": 7, "proxy.width": 8})
    assert (cfg.num_trials, cfg.proxy.epochs, cfg.proxy.width) == (7, 2, 8)
    assert "s3cret" in cfg.storage_url()
    assert "s3cret" not in str(cfg.public_dict())
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")


def test_defaults_are_the_quick_start():
    cfg = load_config()
    assert cfg.dataset == "sample" and cfg.space == "randaugment_plus" and cfg.resolved_baselines() == ["randaugment"]
    assert cfg.objective == "finetune" and cfg.race.enabled and cfg.race.baselines == ["crop_flip", "randaugment"]
    assert cfg.storage_url().startswith("sqlite:///") and cfg.storage_url().endswith("results/quickstart/study.db")
