"""Evaluation in the training precision where a check measures it equal to fp32 (``evaluate.precision``):
the check on a tiny LSTM trained in bf16-mixed, its fallbacks, and the record in metrics.json and MLflow."""

import json
import math

import numpy as np
import pytest
import torch
from seqlm_testing import QUICK_EVALUATE, TINY_TRAIN, in_project, make_tokens

from seqlm.evaluation import precision
from seqlm.evaluation.streamed import Streamed

EOS = 2  # unused by the streamed protocol


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from seqlm.stages.train import run_train

    with in_project(tmp_path_factory.mktemp("eval-precision")) as project:
        make_tokens(project)
        project.set(
            **(TINY_TRAIN | QUICK_EVALUATE | {"train.max_steps": 100, "train.precision": "bf16-mixed"})
        )
        run_train(project.config(), project.paths())
        yield project


@pytest.fixture(scope="module")
def model(trained):
    from seqlm.models import export

    return export.load(trained.paths().model_dir)[0]


@pytest.fixture(scope="module")
def valid(trained):
    meta = json.loads(trained.paths().tokens_meta.read_text())
    return np.fromfile(trained.paths().tokens("valid"), dtype=meta["dtype"]), meta["splits"]["valid"]


def choose(model, valid, requested="auto", trained_in="bf16-mixed", native_bf16=True, **kw):
    tokens, split = valid
    return precision.choose(
        requested, trained_in, Streamed(), model, tokens, split, EOS, 8, 32, "cpu", native_bf16, **kw
    )


def test_auto_scores_in_the_training_precision_when_the_check_measures_it_equal(model, valid):
    dtype, record = choose(model, valid)
    check = record["eval_precision_check"]
    assert (dtype, record["eval_precision"]) == (torch.bfloat16, "bf16-mixed"), check
    assert check["tokens"] == 8 * (precision.CHECK_WINDOWS * 32 + 1)
    fp32, bf16 = check["fp32_bits_per_byte"], check["training_precision_bits_per_byte"]
    assert math.isfinite(fp32) and 0 < fp32 < 8
    assert check["difference_bits_per_byte"] == pytest.approx(abs(bf16 - fp32))
    assert check["difference_bits_per_byte"] <= precision.TOLERANCE_BITS_PER_BYTE
    assert "within" in check["reason"]


def test_a_difference_above_the_tolerance_falls_back_to_fp32(model, valid):
    # tolerance 0: bf16's rounding, really computed, is a violation
    dtype, record = choose(model, valid, tolerance=0.0)
    check = record["eval_precision_check"]
    assert check["difference_bits_per_byte"] > 0
    assert (dtype, record["eval_precision"]) == (None, "32-true")
    assert "differs from fp32" in check["reason"]


@pytest.mark.parametrize(
    "kw, reason",
    [
        ({"requested": "32-true"}, "evaluate.precision is 32-true"),
        ({"trained_in": "32-true"}, "trained in 32-true"),
        ({"native_bf16": False}, "no native bf16"),
        ({"trained_in": "16-mixed"}, "fp16 autocast is for GPUs"),
    ],
)
def test_fp32_without_a_check_where_the_training_precision_does_not_apply(model, valid, kw, reason):
    dtype, record = choose(model, valid, **kw)
    assert (dtype, record["eval_precision"]) == (None, "32-true")
    assert reason in record["eval_precision_check"]["reason"]
    assert "fp32_bits_per_byte" not in record["eval_precision_check"]


def test_a_cpu_without_native_bf16_falls_back(trained, model, valid, monkeypatch):
    from seqlm.stages.evaluate import choose_precision

    meta = json.loads(trained.paths().tokens_meta.read_text())
    model_config = {"training": {"precision": "bf16-mixed"}}
    for query in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):  # torch's capability query
        monkeypatch.setattr(torch.cpu, query, lambda: False, raising=False)
    cpu = torch.device("cpu")
    dtype, record = choose_precision(trained.config(), model_config, Streamed(), model, valid[0], meta, cpu)
    assert (dtype, record["eval_precision"]) == (None, "32-true")
    assert "no native bf16" in record["eval_precision_check"]["reason"]


def evaluate(project, **overrides):
    from seqlm.stages.evaluate import run_evaluate
    from seqlm.tracking.run_record import read_run_json
    from seqlm.tracking.store import connect, tracking_uri

    project.set(**overrides)
    metrics = run_evaluate(project.config(), project.paths())
    on_disk = json.loads(project.paths().eval_metrics.read_text())
    run_id = read_run_json(project.paths())["run_id"]
    tags = connect(tracking_uri(project.paths())).get_run(run_id).data.tags
    return metrics, on_disk, tags


def test_metrics_and_run_record_the_precision_and_32_true_forces_fp32(trained):
    auto, on_disk, tags = evaluate(trained, **{"evaluate.precision": "auto"})
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert on_disk["eval_precision"] == auto["eval_precision"] == tags["eval.precision"]
    assert on_disk["eval_precision_check"]["training_precision"] == "bf16-mixed"
    assert json.loads(tags["eval.precision_check"]) == on_disk["eval_precision_check"]
    assert auto["eval_precision"] == ("bf16-mixed" if native else "32-true"), auto["eval_precision_check"]

    fp32, on_disk, tags = evaluate(trained, **{"evaluate.precision": "32-true"})
    assert on_disk["eval_precision"] == tags["eval.precision"] == "32-true"
    assert on_disk["eval_precision_check"]["reason"] == "evaluate.precision is 32-true"
    if native:  # scored under autocast, not only recorded: the numbers differ, by little
        difference = abs(auto["valid"]["bits_per_byte"] - fp32["valid"]["bits_per_byte"])
        assert 0 < difference <= precision.TOLERANCE_BITS_PER_BYTE
