"""Search quality end to end on the bundled sample: the confirmation race (as Ray Tune trials, resumable), a
campaign with the default late-phase objective whose best_policy.json is the race winner, and calibrate."""

from __future__ import annotations

import json
import math
import threading

import pandas as pd
import pytest
from typer.testing import CliRunner

from policy_search.calibrate import find_calibration, near_the_top, run_calibration
from policy_search.campaign import resume_campaign, run_campaign
from policy_search.cli import app
from policy_search.config import load_config
from policy_search.race import RUNS_FILE, TABLE_FILE, race_entries, run_race
from policy_search.session import prepare_data
from search_spaces import load_policy_or_schedule, preset

TINY = {"train_size": 300, "val_size": 200, "target.width": 8, "target.epochs": 3, "target.batch_size": 64,
        "num_cpus": 2, "max_concurrent": 2}


@pytest.mark.slow
def test_race_runs_every_pair_once_and_resumes_without_retraining(tmp_path, ray_local):
    cfg = load_config(overrides={**TINY, "name": "race", "output": str(tmp_path), "race.seeds": 2})
    cfg.folder.mkdir(parents=True)
    _, _, data = prepare_data(cfg)
    entries = race_entries(cfg, [("rank1", preset("trivialaugment_wide"))])
    result = run_race(cfg, entries, data)
    runs = pd.read_csv(cfg.folder / RUNS_FILE)
    assert len(runs) == 3 * 2 and not runs.duplicated(["entry", "seed"]).any()  # (rank1, crop+flip, RA) x 2 seeds
    assert sorted(set(runs["seed"])) == [cfg.seed + 1, cfg.seed + 2]
    table = pd.read_csv(cfg.folder / TABLE_FILE)
    assert table["mean"].iloc[0] == table["mean"].max() and result.winner.label == table["label"].iloc[0]
    assert (table["runs"] == 2).all()

    # a killed race: two runs were lost; resuming trains exactly those two and keeps the others as they were
    kept = runs.iloc[:4]
    kept.to_csv(cfg.folder / RUNS_FILE, index=False)
    again = run_race(cfg, entries, data)
    after = pd.read_csv(cfg.folder / RUNS_FILE)
    assert len(after) == 6 and after.iloc[:4].equals(kept)
    assert set(map(tuple, after[["entry", "seed"]].values)) == set(map(tuple, runs[["entry", "seed"]].values))
    # the same (entry, seed) trains the same model: the retrained runs reproduce their first results
    merged = runs.merge(after, on=["entry", "seed"], suffixes=("", "_again"))
    assert (merged["val_acc"] == merged["val_acc_again"]).all()
    assert again.winner.label == result.winner.label
    # nothing left to run: no Tune experiment is started at all
    import shutil

    shutil.rmtree(cfg.folder / "race_tune")
    run_race(cfg, entries, data)
    assert not (cfg.folder / "race_tune").exists()


@pytest.mark.slow
def test_default_campaign_crowns_the_race_winner(tmp_path, ray_local):
    cfg = load_config(overrides={**TINY, "name": "default", "output": str(tmp_path), "num_trials": 3,
                                 "race.seeds": 1})
    assert cfg.objective == "finetune" and cfg.space == "randaugment_plus" and cfg.race.enabled

    class View:  # like the CLI's progress bar: holds a lock, so it cannot be pickled into Tune's state
        def __init__(self) -> None:
            self.lock, self.seen = threading.RLock(), []

        def __call__(self, p) -> None:
            with self.lock:
                self.seen.append(p)

    view = View()
    result = run_campaign(cfg, on_progress=view)
    stages = [p.stage for p in view.seen]
    assert "search" in stages and "race" in stages
    summary = json.loads((result.folder / "summary.json").read_text())
    race = summary["race"]
    winner = race["table"][0]
    assert race["winner"] == winner["label"] and winner["mean"] == max(r["mean"] for r in race["table"])
    assert {"crop+flip", "RandAugment(2, 9)"} <= {r["label"] for r in race["table"]}
    last_race = [p for p in view.seen if p.stage == "race"][-1]
    assert last_race.done == last_race.total == len(race["table"])  # every (entry, seed) run, 1 seed
    best = load_policy_or_schedule(result.folder / "best_policy.json")
    assert best.provenance["race"]["winner"] == race["winner"]
    if race["winner_kind"] == "baseline":
        assert "no searched policy beat the fixed recipes" in race["verdict"]
    else:  # a searched winner is the top_k file of its rank
        rank = load_policy_or_schedule(result.folder / "top_k" / f"{race['winner']}.json")
        assert rank.to_dict()["name"] == best.to_dict()["name"]
    trials = pd.read_csv(result.folder / "trials.csv")
    assert (trials["status"] == "COMPLETE").all() and (trials["epochs"] == cfg.target.epochs).all()
    assert trials["val_se"].between(0.01, 0.05).all()  # 200 validation images
    assert summary["objective"] == {"objective": "finetune", "shared_epochs": 2, "epochs": 3}
    assert summary["target"]["width"] == 8
    shown = CliRunner().invoke(app, ["status", str(result.folder)], terminal_width=200)
    assert shown.exit_code == 0 and "confirmation race" in shown.output and race["verdict"][:40] in shown.output

    # resume after the results were lost: the search is done and so is the race; nothing retrains
    runs_before = pd.read_csv(result.folder / RUNS_FILE)
    (result.folder / "summary.json").unlink()
    again = resume_campaign(result.folder)
    assert again.race is not None and pd.read_csv(result.folder / RUNS_FILE).equals(runs_before)


@pytest.mark.slow
def test_calibrate_measures_rank_agreement_and_resumes(tmp_path, ray_local):
    cfg = load_config(overrides={**TINY, "name": "cal", "output": str(tmp_path), "target.epochs": 2,
                                 "finetune.fraction": 0.5, "proxy.epochs": 1, "proxy.width": 4,
                                 "train_size": 200, "val_size": 100})
    result = run_calibration(cfg, ["proxy", "finetune"], seeds=2, num_random=6)
    table = result.table.set_index("objective")
    assert list(table.index) == ["noise ceiling (full, seed vs seed)", "proxy", "finetune"]
    assert (table["policies"] == 25).all()  # 4 presets + 15 grid points + 6 random draws
    assert table["spearman"].between(-1, 1).all() and (table["ci_low"] <= table["ci_high"]).all()
    assert table["top10_spearman"].between(-1, 1).all() and (table["regret_points"] >= 0).all()
    scores = pd.read_csv(result.folder / "scores.csv")
    assert len(scores) == 50 and not scores.duplicated(["objective", "label"]).any()
    for name in ("calibration.csv", "calibration.md", "calibration.png", "calibration.json", RUNS_FILE):
        assert (result.folder / name).is_file(), name
    again = run_calibration(cfg, ["proxy", "finetune"], seeds=2, num_random=6)  # everything is there: no training
    assert pd.read_csv(result.folder / "scores.csv").equals(scores)
    assert again.table["spearman"].tolist() == result.table["spearman"].tolist()
    known = find_calibration(cfg)
    assert known is not None and known["objective"] == "finetune"
    assert known["spearman"] == pytest.approx(table.loc["finetune", "spearman"])


@pytest.mark.slow
def test_cli_run_with_its_progress_bars_prints_the_race(tmp_path, ray_local):
    """The README's command 1 path: ``policy-search run`` with the progress view (not ``-q``)."""
    result = CliRunner().invoke(app, ["run", "--name", "bars", "--output", str(tmp_path), "--trials", "2",
                                      "--train-size", "300", "--val-size", "200", "--target-epochs", "3",
                                      "--target-width", "8", "--race-seeds", "1"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "race runs" in result.output and "confirmation race (seeds 1)" in result.output
    assert "best_policy.json is the race winner" in result.output


def test_near_the_top_measures_agreement_among_the_best_and_the_regret_of_the_choice():
    reference = pd.Series({f"p{i}": 0.60 + 0.01 * i for i in range(12)})  # p11 best, p0 worst
    assert near_the_top(reference, reference) == (pytest.approx(1.0), 0.0)
    swapped = reference.copy()  # ranks the second best first, and the rest in the right order
    swapped["p10"], swapped["p11"] = swapped["p11"], swapped["p10"]
    rho, regret = near_the_top(swapped, reference)
    assert rho == pytest.approx(1 - 6 * 2 / (10 * 99)) and regret == pytest.approx(1.0)
    reversed_top = reference.copy()  # the 10 best in reverse, the two worst still below them all
    reversed_top[reference.index[2:]] = reference[reference.index[2:]].to_numpy()[::-1]
    rho, regret = near_the_top(reversed_top, reference)
    assert rho == pytest.approx(-1.0) and regret == pytest.approx(9.0)  # it chose p2: 9 points below p11
    rho, regret = near_the_top(reference[:5], reference[:5])
    assert math.isnan(rho) and regret == 0.0  # fewer than 10 policies: no top-10 agreement


def test_calibrate_objective_specs_name_the_finetune_fraction_and_refuse_bad_ones():
    from policy_search.calibrate import objective_spec

    cfg = load_config(overrides={**TINY, "target.epochs": 10})
    cfg_half, name = objective_spec(cfg, "finetune@0.5")
    assert name == "finetune" and cfg_half.finetune.fraction == 0.5 and cfg_half.finetune_epochs() == 5
    assert objective_spec(cfg, "proxy") == (cfg, "proxy")
    for bad, key in [("finetune@x", "number"), ("proxy@0.5", "only finetune"), ("warp", "unknown objective"),
                     ("finetune@1.5", "finetune@1.5")]:
        with pytest.raises(ValueError, match=key) as err:
            objective_spec(cfg, bad)
        assert "\n" not in str(err.value) and str(err.value).startswith("objectives:")
