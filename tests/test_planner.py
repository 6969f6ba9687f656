"""The budget planner: expected epochs (tokens/s, minutes, corpus size) choose the regularisation."""

from __future__ import annotations

import json

import pytest
from seqlm_testing import TINY_TRAIN, make_tokens

from seqlm.core.errors import SeqlmError
from seqlm.training import planner

SLOW_CPU, FAST_CPU = 9_000, 36_000  # tokens/s: a 2-core CPU without bf16, and one with AMX (issue 23)
SMALL, LARGE = 800_000, 8_000_000  # train tokens: builtin:kjv-sized, and ten times that


def plan(tokens_per_s, train_tokens, minutes=5.0, max_steps=0):
    return planner.choose(tokens_per_s, train_tokens, 32 * 64, minutes, max_steps, max_epochs=100)


@pytest.mark.parametrize(
    ("tokens_per_s", "train_tokens", "regime"),
    [
        (SLOW_CPU, SMALL, "moderate"),  # 3.4 epochs
        (FAST_CPU, SMALL, "awd"),  # 13.5 epochs: the overfitting of issue 23
        (SLOW_CPU, LARGE, "light"),  # 0.34 epochs
        (FAST_CPU, LARGE, "light"),  # 1.35 epochs
    ],
)
def test_two_machine_speeds_and_two_corpora_choose_by_expected_epochs(tokens_per_s, train_tokens, regime):
    chosen = plan(tokens_per_s, train_tokens)
    assert chosen.expected_epochs == pytest.approx(tokens_per_s * 300 / train_tokens)
    assert chosen.regime == regime
    assert chosen.settings == planner.REGIMES[regime]
    assert f"{chosen.expected_epochs:.1f} expected epochs" in chosen.reason


def test_regimes_regularise_more_as_the_corpus_is_seen_more_often():
    light, moderate, awd = (planner.REGIMES[r] for r in ("light", "moderate", "awd"))
    for key in ("dropout", "input_dropout", "weight_drop"):
        assert light[key] == 0 and light[key] < moderate[key] < awd[key]


def test_the_nearest_limit_bounds_the_expected_epochs():
    by_steps = plan(FAST_CPU, SMALL, minutes=5.0, max_steps=100)  # 100 × 2048 tokens ≪ 5 minutes' worth
    assert by_steps.budget_tokens == 100 * 32 * 64 and by_steps.regime == "light"
    unlimited = plan(FAST_CPU, SMALL, minutes=0)
    assert unlimited.expected_epochs == 100 and unlimited.regime == "awd"


def test_apply_replaces_only_the_regularisation_keys(project):
    cfg = project.config()
    planned = planner.apply(cfg, plan(FAST_CPU, SMALL))
    assert planned.model.weight_drop == planner.REGIMES["awd"]["weight_drop"]
    assert planned.model.locked_dropout is True
    assert planned.model.hidden_size == cfg.model.hidden_size and planned.train == cfg.train


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), ("off", "off"), (False, "off")])
def test_plan_key_takes_auto_or_off_and_a_bare_yaml_off(project, value, expected):
    project.set(**{"train.plan": value})
    assert project.config().train.plan == expected


def test_a_bad_plan_value_names_the_key(project):
    project.set(**{"train.plan": "on"})
    with pytest.raises(SeqlmError, match=r"train\.plan must be one of off \| auto"):
        project.config()


def test_measured_tokens_per_s_is_positive_and_finite():
    import math

    from seqlm.config import ModelConfig
    from seqlm.models import build_model

    model = build_model(ModelConfig(embedding_size=32, hidden_size=32), 100, "next")
    tokens_per_s = planner.measure_tokens_per_s(model, 4, 16, 100, "32-true", "cpu", 16.0, seconds=0.2)
    assert math.isfinite(tokens_per_s) and tokens_per_s > 0


@pytest.mark.slow
def test_training_with_plan_auto_logs_and_applies_the_plan(project, capsys):
    import mlflow

    from seqlm.stages.train import run_train

    make_tokens(project)
    # a given speed makes the choice the same on any machine; 40 steps of 256 tokens bound the budget
    project.set(**(TINY_TRAIN | {"train.max_steps": 40, "train.val_every_steps": 20}))
    project.set(**{"train.plan": "auto", "train.plan_tokens_per_s": 2000, "train.max_minutes": 1})
    paths = project.paths()
    train_tokens = json.loads(paths.tokens_meta.read_text())["splits"]["train"]["tokens"]
    metrics = run_train(project.config(), paths)

    expected = planner.choose(2000, train_tokens, 8 * 32, 1, 40, 20, "given")
    assert expected.regime == "light" and project.config().model.input_dropout == 0.1
    assert metrics["plan_regime"] == expected.regime
    assert metrics["plan_expected_epochs"] == pytest.approx(expected.expected_epochs)
    assert json.loads(paths.train_metrics.read_text())["plan_regime"] == expected.regime
    assert f"train: plan {expected.regime} (given)" in capsys.readouterr().out

    info = json.loads(paths.run_json.read_text())
    run = mlflow.MlflowClient(f"sqlite:///{paths.mlflow_db}").get_run(info["run_id"])
    assert run.data.params["plan.regime"] == expected.regime
    assert run.data.params["plan.tokens_per_s_source"] == "given"
    assert "expected epochs" in run.data.tags["plan.reason"]
    # the run's model params are the ones it trained with, not params.yaml's
    assert float(run.data.params["model.input_dropout"]) == 0.0


META = {"vocab_size": 100, "splits": {"train": {"tokens": SMALL}}}


def test_a_resumed_run_reuses_its_own_plan_not_a_new_one(project, capsys):
    from seqlm.stages.train import _plan

    project.set(**{"train.plan": "auto", "train.plan_tokens_per_s": SLOW_CPU, "train.max_minutes": 5})
    cfg, paths = project.config(), project.paths()
    first = _plan(cfg, paths, META, "cpu", "32-true", 1, None, True)
    assert first.regime == "moderate" and paths.last_plan.is_file()
    project.set(**{"train.plan_tokens_per_s": FAST_CPU})  # what a new measurement might say
    resumed = _plan(project.config(), paths, META, "cpu", "32-true", 1, str(paths.last_ckpt), True)
    assert resumed == first
    fresh = _plan(project.config(), paths, META, "cpu", "32-true", 1, None, True)
    assert fresh.regime == "awd"
    assert "train: plan awd (given)" in capsys.readouterr().out


def test_several_processes_need_a_given_speed(project):
    from seqlm.stages.train import _plan

    project.set(**{"train.plan": "auto"})
    with pytest.raises(SeqlmError, match=r"train\.plan_tokens_per_s"):
        _plan(project.config(), project.paths(), META, "cpu", "32-true", 2, None, True)
