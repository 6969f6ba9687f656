"""`seqlm study --tune`: the probes' rate per family, over one grid, on seeds the report never shows."""

from __future__ import annotations

import json

import pytest
import yaml
from seqlm_testing import REPO

from seqlm.core.errors import SeqlmError
from seqlm.study import plan as planning
from seqlm.study import tuning
from seqlm.study.results import Result

OPTIONS = planning.preset("full", stamp="t0")


@pytest.fixture(scope="module")
def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_the_tuning_plan_runs_every_probe_family_over_the_grid_on_seeds_kept_apart(params):
    runs = tuning.tuning_plan(OPTIONS, params)
    assert len(runs) == len(planning.PROBE_FAMILIES) * len(tuning.LR_GRID) * len(tuning.TUNING_SEEDS)
    assert len({e.name for e in runs}) == len(runs) and all(e.name.endswith("-t0") for e in runs)
    assert {e.delay for e in runs} == {tuning.TUNING_DELAY}
    for family in planning.PROBE_FAMILIES:
        rates = {e.overrides["train.lr"] for e in runs if e.family == family}
        assert rates == set(tuning.LR_GRID)  # one grid for every family
    reported = {e.seed for e in planning.plan(OPTIONS, params)}
    assert {e.seed for e in runs} == set(tuning.TUNING_SEEDS) and not reported & set(tuning.TUNING_SEEDS)
    # otherwise the study's own probe runs: the same stop, cap, model and (for chrono) horizon
    probe = {e.family: e for e in planning.probe_cells(params, OPTIONS) if e.delay == tuning.TUNING_DELAY}
    for e in runs:
        same = {k: v for k, v in e.overrides.items() if k not in ("train.lr", "base.seed")}
        assert same == {k: v for k, v in probe[e.family].overrides.items() if k != "train.lr"}


def test_tuned_rates_reach_the_probe_cells_and_only_them(params):
    tuned = planning.replace(OPTIONS, probe_lrs=(("gru", 0.01), ("lstm", 0.001)))
    cells = planning.plan(tuned, params)
    rates = {(e.group, e.family): e.overrides.get("train.lr") for e in cells}
    assert rates[("probe", "gru")] == 0.01 and rates[("probe", "lstm")] == 0.001
    assert rates[("probe", "rnn")] == planning.PROBE_LR  # not named: the untuned rate
    assert rates[("text", "gru")] is None  # the text runs keep params.yaml's rate


def result(family: str, lr: float, solved_at: int | None, valid_recall: float) -> Result:
    e = planning.Experiment("x", "probe", family, {"train.lr": lr, "data.delay": 25}, cell="c")
    r = Result(e, status="success", eval={"recall_accuracy": 0.5})
    stopped = "solved" if solved_at else "max_steps"
    r.train = {"stopped_by": stopped, "steps": solved_at or 10_000, "val_recall_accuracy": valid_recall}
    return r


def test_the_choice_is_most_solved_then_fewest_updates_then_valid_recall():
    results = [
        # gru: 1e-2 solves both seeds fastest
        result("gru", 1e-3, None, 0.2),
        result("gru", 1e-3, None, 0.3),
        result("gru", 1e-2, 500, 0.96),
        result("gru", 1e-2, 700, 0.97),
        result("gru", 3e-3, 2000, 0.96),
        result("gru", 3e-3, 1800, 0.96),
        # lstm: 3e-3 solves both, 1e-2 one (faster): solved count first
        result("lstm", 3e-3, 3000, 0.96),
        result("lstm", 3e-3, 3500, 0.96),
        result("lstm", 1e-2, 900, 0.96),
        result("lstm", 1e-2, None, 0.4),
        # rnn: nothing solves; the highest valid recall decides
        result("rnn", 1e-3, None, 0.3),
        result("rnn", 3e-3, None, 0.2),
        result("rnn", 1e-2, None, 0.125),
        # bow: a tie everywhere keeps the untuned rate
        result("bow", 1e-3, None, 0.125),
        result("bow", 3e-3, None, 0.125),
        result("bow", 1e-2, None, 0.125),
    ]
    chosen = tuning.choose(results)
    assert {f: c["lr"] for f, c in chosen.items()} == {"gru": 1e-2, "lstm": 3e-3, "rnn": 1e-3, "bow": 3e-3}
    assert chosen["gru"]["rates"]["0.01"] == {
        "solved": 2,
        "runs": 2,
        "median_updates": 600.0,
        "valid_recall": pytest.approx(0.965),
    }


def test_the_record_round_trips_and_a_broken_one_is_refused_in_one_line(tmp_path):
    chosen = tuning.choose([result("gru", 1e-2, 500, 0.96), result("gru", 1e-3, None, 0.2)])
    path = tuning.write(tmp_path, chosen, OPTIONS, "abc123")
    record = tuning.read(tmp_path)
    assert tuning.rates(record) == (("gru", 0.01),)
    assert record["seeds"] == list(tuning.TUNING_SEEDS) and record["commit"] == "abc123"
    assert tuning.read(tmp_path / "elsewhere") is None and tuning.rates(None) == ()
    path.write_text(json.dumps({"families": {"gru": {}}}))
    with pytest.raises(SeqlmError, match=r"probe_lr.json is not a tuning record .*seqlm study --tune"):
        tuning.read(tmp_path)
