"""The evaluate stage on a tiny trained LSTM: metrics and their invariants, baselines, diagnostics,
samples, the MLflow mirror, and bad inputs that must leave no reports."""

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
from seqlm_testing import TINY_TRAIN, Project, in_project, make_tokens

KEYS = {
    "loss",
    "token_perplexity",
    "bits_per_token",
    "bits_per_byte",
    "word_perplexity",
    "top1_accuracy",
    "top5_accuracy",
    "tokens",
    "bytes",
    "words",
    "eval_tokens_per_s",
    "protocol",
    "unigram_bits_per_byte",
    "bigram_bits_per_byte",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from seqlm.stages.train import run_train

    with in_project(tmp_path_factory.mktemp("evaluate")) as project:
        make_tokens(project)
        project.set(**TINY_TRAIN)
        run_train(project.config(), project.paths())
        yield project


@pytest.fixture(scope="module")
def evaluated(trained):
    from seqlm.stages.evaluate import run_evaluate

    return run_evaluate(trained.config(), trained.paths())


@pytest.fixture(scope="module")
def model(trained):
    from seqlm.models import export

    return export.load(trained.paths().model_dir)[0]


def tokens(project, split):
    meta = json.loads(project.paths().tokens_meta.read_text())
    return np.fromfile(project.paths().tokens(split), dtype=meta["dtype"]), meta


def test_metrics_have_every_key_and_beat_the_unigram(trained, evaluated):
    saved = json.loads((trained.paths().eval_reports / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(evaluated))
    assert KEYS <= set(saved) and KEYS <= set(saved["valid"])
    assert saved["protocol"] == {"batch_size": 8, "bptt": 128, "carry_state": True}
    for m in (saved, saved["valid"]):
        assert m["bits_per_byte"] < 0.75 * m["unigram_bits_per_byte"]
        assert m["bigram_bits_per_byte"] <= m["unigram_bits_per_byte"]
        assert 0 < m["top1_accuracy"] <= m["top5_accuracy"] < 1
        assert m["token_perplexity"] == pytest.approx(math.exp(m["loss"]))
        # bits_per_byte × bytes == bits_per_token × tokens: one total, two denominators
        assert m["bits_per_byte"] * m["bytes"] == pytest.approx(m["bits_per_token"] * m["tokens"], rel=1e-12)
        assert m["word_perplexity"] == pytest.approx(math.exp(m["loss"] * m["tokens"] / m["words"]))
        assert 0 <= m["tokens"] - 1 - m["evaluated_tokens"] < 8  # the layout drops < batch_size tokens
    # Same streams (train.batch_size = evaluate.batch_size = 8), carried state: evaluating valid agrees
    # with the train stage's validation of the exported (best) weights — exactly in fp32, within bf16's
    # rounding when training validated under bf16-mixed autocast (precision auto on a bf16 CPU).
    train = json.loads((trained.paths().train_reports / "metrics.json").read_text())
    tolerance = 1e-4 if train["precision"].startswith("32") else 2e-3
    assert saved["valid"]["bits_per_byte"] == pytest.approx(train["val_bits_per_byte"], rel=tolerance)


def test_carried_state_equals_one_pass_over_the_stream(trained, model):
    from seqlm.evaluation.metrics import stream_totals

    test, _ = tokens(trained, "test")
    ids = torch.from_numpy(test[:600].astype(np.int64))
    with torch.inference_mode():
        logits, _ = model(ids[None, :-1])
    whole = torch.nn.functional.cross_entropy(logits[0], ids[1:], reduction="sum").item()
    windows = stream_totals(model, test[:600], batch_size=1, bptt=7)
    assert windows.tokens == 599
    assert windows.nll == pytest.approx(whole, rel=1e-5)
    assert windows.top1 == (logits[0].argmax(-1) == ids[1:]).sum().item()
    assert windows.top5 == (logits[0].topk(5).indices == ids[1:, None]).sum().item()


def test_a_uniform_model_scores_log2_vocab_bits_per_token(trained, model):
    import copy

    from seqlm.evaluation.metrics import split_metrics, stream_totals

    uniform = copy.deepcopy(model)
    with torch.no_grad():
        uniform.decoder.weight.zero_()  # tied: the embedding too; every logit is 0
        uniform.decoder.bias.zero_()
    test, meta = tokens(trained, "test")
    totals = stream_totals(uniform, test, batch_size=8, bptt=128)
    m = split_metrics(totals, meta["splits"]["test"], {}, {"unigram_bits": 0.0, "bigram_bits": 0.0})
    assert m["bits_per_token"] == pytest.approx(math.log2(meta["vocab_size"]), rel=1e-6)
    assert m["top1_accuracy"] == 0.0  # ties count against the target


def test_ngram_baselines_match_direct_counts_in_every_code_path(trained, monkeypatch):
    from seqlm.evaluation import ngram

    train, meta = tokens(trained, "train")
    valid, _ = tokens(trained, "valid")
    vocab = meta["vocab_size"]
    unigram = np.log2((np.bincount(train, minlength=vocab) + 1) / (len(train) + vocab))
    pairs = np.zeros((vocab, vocab))
    np.add.at(pairs, (train[:-1], train[1:]), 1)
    bigram = np.log2((pairs + 1) / (pairs.sum(1, keepdims=True) + vocab))
    expected_unigram = -unigram[valid].sum()
    expected_bigram = -unigram[valid[0]] - bigram[valid[:-1], valid[1:]].sum()
    for dense_cells, chunk in ((1 << 23, 1 << 22), (0, 1 << 22), (0, 1000), (1 << 23, 999)):
        monkeypatch.setattr(ngram, "DENSE_BIGRAM_CELLS", dense_cells)
        monkeypatch.setattr(ngram, "NGRAM_CHUNK", chunk)
        bits = ngram.NgramBaselines(train, vocab).bits(valid)
        assert bits["unigram_bits"] == pytest.approx(expected_unigram, rel=1e-9)
        assert bits["bigram_bits"] == pytest.approx(expected_bigram, rel=1e-9)


def test_mlflow_run_holds_metrics_protocol_and_artifacts(trained, evaluated):
    import mlflow

    paths = trained.paths()
    run_id = json.loads(paths.run_json.read_text())["run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{paths.mlflow_db}")
    run = client.get_run(run_id)
    assert run.data.metrics["test_bits_per_byte"] == pytest.approx(evaluated["bits_per_byte"])
    assert run.data.metrics["valid_word_perplexity"] == pytest.approx(evaluated["valid"]["word_perplexity"])
    assert run.data.params["eval.protocol.batch_size"] == "8"
    assert run.data.params["eval.protocol.carry_state"] == "true"
    logged = {a.path for a in client.list_artifacts(run_id, "eval")}
    expected = {
        "metrics.json",
        "context_ablation.json",
        "context_ablation.png",
        "gradient_flow.json",
        "gradient_flow.png",
        "samples.md",
    }
    assert {f"eval/{name}" for name in expected} <= logged


def test_context_ablation_shows_the_lstm_using_context(trained, evaluated):
    data = json.loads((trained.paths().eval_reports / "context_ablation.json").read_text())
    bpb = {row["reset_every"]: row["bits_per_byte"] for row in data["rows"]}
    assert list(bpb) == ["1", "4", "16", "64", "256", "none"]
    assert bpb["1"] > bpb["16"] > bpb["none"]
    assert bpb["none"] == pytest.approx(evaluated["bits_per_byte"], rel=0.05)  # another layout, same model
    assert data["tokens"] == evaluated["tokens"] and data["token_cap"] == 200_000
    assert (trained.paths().eval_reports / "context_ablation.png").read_bytes()[:4] == b"\x89PNG"


def test_gradient_flow_has_k_plus_one_values_and_spectral_radii(trained, evaluated):
    data = json.loads((trained.paths().eval_reports / "gradient_flow.json").read_text())
    steps = trained.config().evaluate.gradient_flow_steps
    assert [row["k"] for row in data["rows"]] == list(range(steps + 1))
    norms = [row["gradient_norm"] for row in data["rows"]]
    assert norms[0] > norms[10] > 0 and all(math.isfinite(g) for g in norms)
    assert set(data["spectral_radius"]) == {"input", "forget", "cell", "output"}
    assert all(r > 0 for r in data["spectral_radius"].values())
    assert data["windows"] >= 1 and data["streams"] >= 1


def test_window_models_report_zero_gradient_past_the_present_and_plot(trained, tmp_path):
    from seqlm.config import ModelConfig
    from seqlm.evaluation import diagnostics, plots
    from seqlm.models import build_model

    valid, meta = tokens(trained, "valid")
    torch.manual_seed(0)
    bow = build_model(
        ModelConfig(family="bow", embedding_size=16, hidden_size=16, window=4), meta["vocab_size"]
    )
    data = diagnostics.gradient_flow(bow, valid, 20, "cpu")
    norms = [row["gradient_norm"] for row in data["rows"]]
    assert norms[0] > 0 and norms[1:] == [0.0] * 20 and data["spectral_radius"] == {}
    plots.plot_gradient_flow(data, tmp_path / "flow.png")
    ablation = diagnostics.context_ablation(bow, valid[:2000], meta["splits"]["valid"], (1, 4, 16), 32, "cpu")
    plots.plot_context_ablation(ablation, tmp_path / "ablation.png")
    assert (tmp_path / "flow.png").stat().st_size > 0 and (tmp_path / "ablation.png").stat().st_size > 0


def test_gradient_flow_measures_a_vanishing_gradient_below_float32s_floor(trained):
    from seqlm.config import ModelConfig
    from seqlm.evaluation import diagnostics
    from seqlm.models import build_model

    valid, meta = tokens(trained, "valid")
    torch.manual_seed(0)
    config = ModelConfig(family="rnn", embedding_size=16, hidden_size=16, recurrent_gain=0.05)
    rnn = build_model(config, meta["vocab_size"])
    data = diagnostics.gradient_flow(rnn, valid, 48, "cpu")
    norms = [row["gradient_norm"] for row in data["rows"]]
    # W_hh × 0.05: ~0.05^k, far below float32's smallest ~1e-45 by k = 48, which float32 would report as 0
    assert 0 < norms[-1] < 1e-50 and all(a > b for a, b in zip(norms, norms[1:]))
    assert next(rnn.parameters()).dtype == torch.float32  # measured on a copy: the model is untouched


def test_samples_have_prompts_and_cloze_tables(trained, evaluated):
    text = (trained.paths().eval_reports / "samples.md").read_text()
    ev = trained.config().evaluate
    for prompt in ev.prompts + ev.cloze_prompts:
        assert f"### {prompt}" in text
    assert text.count("| rank | word | probability |") == len(ev.cloze_prompts)
    assert text.count("\n| 5 | ") == len(ev.cloze_prompts)


def copy_of(project, dest):
    shutil.copytree(project.root, dest, ignore=shutil.ignore_patterns("mlartifacts"))
    copy = Project.__new__(Project)  # not Project(dest): that would overwrite the copied params.yaml
    copy.root = dest
    return copy


@pytest.mark.slow
def test_re_evaluation_with_another_protocol_updates_metrics_and_tags(
    trained, evaluated, tmp_path, capsys, monkeypatch
):
    import mlflow

    from seqlm.stages.evaluate import run_evaluate

    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which would send the copy to the first store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    copy = copy_of(trained, tmp_path / "copy")
    copy.set(**{"evaluate.batch_size": 4})
    metrics = run_evaluate(copy.config(), copy.paths())
    assert metrics["protocol"]["batch_size"] == 4
    assert "evaluate: test" in capsys.readouterr().out
    run_id = json.loads(copy.paths().run_json.read_text())["run_id"]
    run = mlflow.MlflowClient(f"sqlite:///{copy.paths().mlflow_db}").get_run(run_id)
    assert run.data.params["eval.protocol.batch_size"] == "8"  # MLflow params are write-once
    assert run.data.tags["eval.protocol.batch_size"] == "4"
    assert run.data.metrics["test_bits_per_byte"] == pytest.approx(metrics["bits_per_byte"])


def _break_vocab(paths):
    meta = json.loads(paths.tokens_meta.read_text())
    paths.tokens_meta.write_text(json.dumps(meta | {"vocab_size": 999}))


def _other_run(paths):
    run = json.loads(paths.run_json.read_text())
    paths.run_json.write_text(json.dumps(run | {"run_id": "0" * 32}))


def _empty_test(paths):
    meta = json.loads(paths.tokens_meta.read_text())
    meta["splits"]["test"]["tokens"] = 0
    paths.tokens_meta.write_text(json.dumps(meta))
    paths.tokens("test").write_bytes(b"")


@pytest.mark.parametrize(
    "breaks, message",
    [
        (_break_vocab, r"has vocab_size 320 but .*meta.json has vocab_size 999"),
        (lambda paths: paths.run_json.unlink(), r"run.json: not found; run the train stage first"),
        (lambda paths: paths.run_json.write_text('{"format": "other"}'), r"run.json: not a seqlm run record"),
        (_other_run, r"run.json names run 0+ but .*model was trained in run [0-9a-f]+; re-run train"),
        (_empty_test, r"test.bin: the test split is empty \(0 tokens\)"),
    ],
    ids=["vocab-mismatch", "no-run-json", "foreign-run-json", "another-run", "empty-test-split"],
)
def test_bad_inputs_fail_in_one_line_and_leave_no_reports(
    trained, evaluated, tmp_path, monkeypatch, capsys, breaks, message
):
    from seqlm.cli import main

    copy = copy_of(trained, tmp_path / "copy")
    assert copy.paths().eval_reports.is_dir()  # an earlier evaluation's reports must not survive a failure
    breaks(copy.paths())
    monkeypatch.setenv("SEQLM_ROOT", str(copy.root))
    assert main(["evaluate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert re.search(message, err), err
    assert not copy.paths().eval_reports.exists()
