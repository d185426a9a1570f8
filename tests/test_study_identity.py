"""Campaign identity and the searcher's bookkeeping, without Ray (fast): every campaign owns its study, a
namesake on a shared database is refused unless attached, and ``CampaignSearch`` tells Optuna the truth about
each trial and reconciles a study that is ahead of Tune's last snapshot.

The same behaviour inside real campaigns: ``tests/test_campaign.py`` (SQLite, kill -9) and
``tests/test_postgres.py`` (two campaigns of one name on one PostgreSQL database, an interrupted resume).
"""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from policy_search.campaign import CampaignSearch, fail_stale_trials, run_campaign
from policy_search.cli import app
from policy_search.config import load_config
from policy_search.session import (
    CAMPAIGN_ID_FILE,
    STUDY_ATTR,
    CampaignError,
    campaign_id,
    create_campaign_study,
    load_study,
    stale_numbers,
    study_name,
    study_storage,
)
from search_spaces.spaces import SPACES_BY_NAME, baseline_params

MAX_T = 2  # epochs of a full-budget trial


def _config(output: Path, name: str = "ident", storage: str | None = None):
    return load_config(overrides={"name": name, "output": str(output), "storage": storage, "space": "randaugment",
                                  "objective": "proxy", "proxy.epochs": MAX_T, "race.enabled": False})


def _searcher(cfg, num_trials: int = 10) -> CampaignSearch:
    return CampaignSearch(partial(SPACES_BY_NAME["randaugment"]), metric="val_acc", mode="max",
                          study_name=study_name(cfg), storage=study_storage(cfg),
                          sampler=optuna.samplers.RandomSampler(seed=0), max_t=MAX_T, num_trials=num_trials,
                          points_to_evaluate=[baseline_params("randaugment", "randaugment")])


def _report(search: CampaignSearch, trial_id: str, *values: float) -> dict:
    result = {}
    for epoch, value in enumerate(values, start=1):
        result = {"val_acc": value, "epoch": epoch, "training_iteration": epoch}
        search.on_trial_result(trial_id, result)
    return result


def _by_tune_id(study: optuna.Study) -> dict[str, list[optuna.trial.FrozenTrial]]:
    out: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in study.get_trials():
        out.setdefault(t.user_attrs.get(STUDY_ATTR), []).append(t)
    return out


# ---------------------------------------------------------------------------------------------
# CampaignSearch


def test_each_study_trial_records_its_tune_trial_and_reports_the_baseline_first(tmp_path):
    cfg = _config(tmp_path)
    cfg.folder.mkdir(parents=True)
    search = _searcher(cfg)
    first = search.suggest("tune_a")
    assert first == {"num_ops": 2, "magnitude": 9}  # the enqueued RandAugment(2, 9) baseline
    second = search.suggest("tune_b")
    assert set(second) == {"num_ops", "magnitude"}
    _report(search, "tune_a", 0.25, 0.5)
    trials = _by_tune_id(load_study(cfg))
    assert set(trials) == {"tune_a", "tune_b"}
    assert trials["tune_a"][0].params == first and trials["tune_b"][0].params == second
    assert trials["tune_a"][0].intermediate_values == {1: 0.25, 2: 0.5}
    assert trials["tune_a"][0].state == TrialState.RUNNING


def test_errored_trials_fail_and_early_stopped_ones_are_pruned(tmp_path):
    cfg = _config(tmp_path)
    cfg.folder.mkdir(parents=True)
    search = _searcher(cfg)
    for tid in ("errored", "stopped", "full", "nan"):
        search.suggest(tid)
    search.on_trial_complete("errored", _report(search, "errored", 0.4), error=True)  # reported, then raised
    search.on_trial_complete("stopped", _report(search, "stopped", 0.3))  # ASHA stopped it after epoch 1
    search.on_trial_complete("full", _report(search, "full", 0.3, 0.6))
    search.on_trial_complete("nan", {"val_acc": float("nan"), "epoch": MAX_T, "training_iteration": MAX_T})
    trials = {k: v[0] for k, v in _by_tune_id(load_study(cfg)).items()}
    assert trials["errored"].state == TrialState.FAIL and trials["errored"].value is None
    assert trials["stopped"].state == TrialState.PRUNED
    assert trials["full"].state == TrialState.COMPLETE and trials["full"].value == pytest.approx(0.6)
    assert trials["nan"].state == TrialState.FAIL


def test_suggest_stops_at_num_trials(tmp_path):
    cfg = _config(tmp_path)
    cfg.folder.mkdir(parents=True)
    search = _searcher(cfg, num_trials=2)
    assert isinstance(search.suggest("a"), dict) and isinstance(search.suggest("b"), dict)
    assert search.suggest("c") == CampaignSearch.FINISHED
    assert sorted(_by_tune_id(load_study(cfg))) == ["a", "b"]  # the study holds the two asked trials only


def test_restore_reconciles_a_study_ahead_of_the_snapshot(tmp_path):
    """Tune snapshots after suggesting a and b; then c is suggested, a and c finish, b is left RUNNING by a kill.
    Resume FAILs b as stale; the restored searcher counts c (unknown to Tune) towards num_trials, keeps a's first
    result when Tune re-runs it, and adds b's re-run as a new study trial."""
    cfg = _config(tmp_path)
    cfg.folder.mkdir(parents=True)
    search = _searcher(cfg, num_trials=4)
    at_start = pickle.dumps(search)  # what Tuner.restore unpickles before restoring the snapshot
    search.suggest("a")
    search.suggest("b")
    snapshot = tmp_path / "searcher-state.pkl"
    search.save(str(snapshot))
    search.suggest("c")
    search.on_trial_complete("a", _report(search, "a", 0.2, 0.5))
    search.on_trial_complete("c", _report(search, "c", 0.3, 0.7))
    _report(search, "b", 0.1)  # then the driver dies

    assert fail_stale_trials(cfg) == 1
    study = load_study(cfg)
    b_number = _by_tune_id(study)["b"][0].number
    assert stale_numbers(study) == {b_number} and study.trials[b_number].state == TrialState.FAIL

    restored = pickle.loads(at_start)
    restored.restore(str(snapshot))
    assert isinstance(restored.suggest("d"), dict)  # a, b (known to Tune) + c (study only) + d = 4
    assert restored.suggest("e") == CampaignSearch.FINISHED
    restored.on_trial_complete("a", _report(restored, "a", 0.1, 0.15))  # Tune re-runs a: the first result stands
    restored.on_trial_complete("b", _report(restored, "b", 0.4, 0.8))  # and b: a new study trial

    trials = _by_tune_id(load_study(cfg))
    assert [t.value for t in trials["a"]] == [pytest.approx(0.5)]
    old_b, new_b = trials["b"]
    assert old_b.state == TrialState.FAIL and new_b.state == TrialState.COMPLETE
    assert new_b.value == pytest.approx(0.8) and new_b.params == old_b.params
    assert new_b.user_attrs["rerun_of"] == b_number and new_b.intermediate_values == {1: 0.4, 2: 0.8}
    assert [t.state for t in trials["c"]] == [TrialState.COMPLETE] and trials["d"][0].state == TrialState.RUNNING


# ---------------------------------------------------------------------------------------------
# Study identity


def test_the_folders_own_study_keeps_the_campaign_name_and_is_owned_by_it(tmp_path):
    cfg = _config(tmp_path)
    study = create_campaign_study(cfg)
    cid = campaign_id(cfg.folder)
    assert cid is not None and len(cid) == 32 and (cfg.folder / CAMPAIGN_ID_FILE).is_file()
    assert study.study_name == study_name(cfg) == "ident"  # study.db in the folder holds only this campaign
    assert study.user_attrs == {"campaign": "ident", "campaign_id": cid, "campaign_folder": str(cfg.folder)}
    assert create_campaign_study(cfg).user_attrs["campaign_id"] == cid  # a second start of the folder keeps its id
    assert load_study(cfg).study_name == "ident"


def test_a_namesake_on_a_shared_database_is_refused_unless_attached(tmp_path):
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = _config(tmp_path / "a", storage=shared), _config(tmp_path / "b", storage=shared)
    mine = create_campaign_study(first)
    assert mine.study_name == f"ident-{campaign_id(first.folder)[:8]}"

    with pytest.raises(CampaignError) as refused:
        run_campaign(second)  # refused before anything is written or Ray starts
    message = str(refused.value)
    assert "\n" not in message and repr(mine.study_name) in message and str(first.folder) in message
    assert not second.folder.exists()

    theirs = create_campaign_study(second, attach=True)
    assert theirs.study_name != mine.study_name and theirs.study_name == study_name(second)
    assert load_study(first).study_name == mine.study_name and load_study(second).study_name == theirs.study_name
    mine.enqueue_trial({"num_ops": 1, "magnitude": 1})
    assert len(load_study(second).trials) == 0  # no foreign trials


def test_cli_run_refuses_a_namesake_in_one_line_and_has_attach(tmp_path):
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    create_campaign_study(_config(tmp_path / "a", storage=shared))
    result = CliRunner().invoke(app, ["run", "--name", "ident", "--output", str(tmp_path / "b"), "--storage", shared,
                                      "--trials", "2", "-q"], terminal_width=400)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "another campaign of that name" in errors[0] and "--attach" in errors[0]
    assert "--attach" in CliRunner().invoke(app, ["run", "--help"], terminal_width=200).output


def test_load_study_refuses_another_campaigns_study(tmp_path):
    cfg = _config(tmp_path)
    create_campaign_study(cfg)
    (cfg.folder / CAMPAIGN_ID_FILE).write_text("f" * 32 + "\n")  # the folder now claims another identity
    with pytest.raises(CampaignError, match="belongs to another campaign"):
        load_study(cfg)
