"""The register stage, the champion gate, the pyfunc and the registry tools, on a sqlite store.

One tiny model is trained and evaluated per module; every test copies that project into its own folder
with its own empty MLflow store, and each "pipeline run" there is a fresh MLflow run whose evaluation
(reports/eval/metrics.json and its mirrored valid/test bits per byte) the test may rewrite to steer the
gate, which selects on valid.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import socket

import pytest
from seqlm_testing import Project, evaluated_project, grammar_text

from seqlm.cli import main
from seqlm.core.errors import SeqlmError
from seqlm.registry import gate, rescoring
from seqlm.registry import register as registration
from seqlm.stages.register import run_register
from seqlm.tracking.run_record import write_run_json
from seqlm.tracking.store import connect, experiment_id, tracking_uri

NAME = "seqlm"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project after download, tokenize, train (60 steps) and evaluate."""
    root = evaluated_project(tmp_path_factory.mktemp("trained")).root
    # An empty store, created once: creating the sqlite schema costs seconds; copying it does not.
    empty = tmp_path_factory.mktemp("empty-store")
    connect(f"sqlite:///{empty / 'mlflow.db'}").search_experiments()
    return root, empty / "mlflow.db"


@pytest.fixture
def proj(trained, tmp_path, monkeypatch) -> Project:
    """A copy of the trained project with an empty MLflow store and a fresh pipeline run."""
    trained_root, empty_store = trained
    root = tmp_path / "project"
    root.mkdir()
    project = Project(root)
    shutil.copytree(
        trained_root, root, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"), dirs_exist_ok=True
    )
    shutil.copy(empty_store, root / "mlflow.db")
    monkeypatch.setenv("SEQLM_ROOT", str(root))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # generation's registry downloads
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(root)
    new_run(project)
    return project


def new_run(project: Project, bits_per_byte: float | None = None, test: float | None = None) -> str:
    """Another pipeline run of the same weights, evaluated at valid ``bits_per_byte`` and ``test`` bits
    per byte (default: as evaluated)."""
    paths = project.paths()
    metrics_file = paths.eval_reports / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    if bits_per_byte is not None:
        metrics["valid"]["bits_per_byte"] = bits_per_byte
    if test is not None:
        metrics["bits_per_byte"] = test
    metrics_file.write_text(json.dumps(metrics))
    uri = tracking_uri(paths)
    client = connect(uri)
    run_id = client.create_run(experiment_id(client, "seqlm", paths)).info.run_id
    client.log_metric(run_id, "test_bits_per_byte", metrics["bits_per_byte"])  # what evaluate mirrors
    client.log_metric(run_id, "valid_bits_per_byte", metrics["valid"]["bits_per_byte"])
    client.set_terminated(run_id)
    write_run_json(paths, run_id, "seqlm", uri)
    return run_id


def register(project: Project) -> dict:
    return run_register(project.config(), project.paths())


def client_of(project: Project):
    return connect(tracking_uri(project.paths()))


def eval_bits(project: Project) -> float:
    """The valid bits per byte: what the gate compares."""
    return json.loads((project.paths().eval_reports / "metrics.json").read_text())["valid"]["bits_per_byte"]


def precision_slack(project: Project) -> float:
    """How far an fp32 re-score may be from the evaluation: 0 where that was fp32, else its check's
    tolerance (evaluate scored in the training precision, measured equal to fp32)."""
    metrics = json.loads(project.paths().eval_metrics.read_text())
    if metrics["eval_precision"] == "32-true":
        return 0.0
    return metrics["eval_precision_check"]["tolerance_bits_per_byte"]


def history_versions(project: Project) -> list[int]:
    return [event["version"] for event in gate.champion_history(client_of(project), NAME)]


def versions(project: Project) -> list[int]:
    return sorted(int(mv.version) for mv in client_of(project).search_model_versions(f"name = '{NAME}'"))


def report(project: Project) -> dict:
    return json.loads(project.paths().register_json.read_text())


# ------------------------------------------------------------------------------------------ register


def test_first_registration_is_champion_with_lineage_and_no_network(proj, monkeypatch, capsys):
    paths = proj.paths()
    (proj.root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  download:\n    outs:\n    - path: data/raw\n      md5: 1111.dir\n"
        "  tokenize:\n    outs:\n    - path: data/tokenizer\n      md5: 2222.dir\n"
    )
    real_connect = socket.socket.connect

    def loopback_only(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in (
            "127.0.0.1",
            "::1",
            "localhost",
        ):
            raise AssertionError(f"register tried to reach {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    run_id = json.loads(paths.run_json.read_text())["run_id"]
    out = register(proj)

    assert out["version"] == 1 and out["decision"] == "promoted"
    assert out["aliases_before"] == {} and out["aliases_after"] == {"challenger": 1, "champion": 1}
    assert out == report(proj)
    assert "becomes champion" in capsys.readouterr().out
    metrics = json.loads((paths.eval_reports / "metrics.json").read_text())
    manifest = json.loads(paths.manifest.read_text())
    tags = client_of(proj).get_model_version(NAME, "1").tags
    assert float(tags["seqlm.test_bits_per_byte"]) == metrics["bits_per_byte"]
    assert float(tags["seqlm.test_word_perplexity"]) == metrics["word_perplexity"]
    assert (
        json.loads(tags["seqlm.eval_protocol"])
        == metrics["protocol"]
        == {"batch_size": 8, "bptt": 128, "carry_state": True}
    )
    assert tags["seqlm.test_sha256"] == manifest["splits"]["test"]["sha256"]
    assert tags["seqlm.test_sha256"] == hashlib.sha256(paths.raw_split("test").read_bytes()).hexdigest()
    assert float(tags["seqlm.valid_bits_per_byte"]) == metrics["valid"]["bits_per_byte"]
    assert float(tags["seqlm.valid_word_perplexity"]) == metrics["valid"]["word_perplexity"]
    assert tags["seqlm.valid_sha256"] == manifest["splits"]["valid"]["sha256"]
    assert out["selected_on"] == "valid" and out["challenger"]["split"] == "valid"
    assert out["challenger"]["bits_per_byte"] == metrics["valid"]["bits_per_byte"]
    assert out["challenger_test"]["bits_per_byte"] == metrics["bits_per_byte"]
    assert (
        tags["seqlm.weights_sha256"]
        == hashlib.sha256((paths.model_dir / "weights.safetensors").read_bytes()).hexdigest()
    )
    assert tags["seqlm.run_id"] == run_id
    assert tags["seqlm.params_hash"] == proj.config().section_hash(*registration.MODEL_SECTIONS)
    assert tags["dvc.md5.data/raw"] == "1111.dir" and tags["dvc.md5.data/tokenizer"] == "2222.dir"
    assert "git.commit" in tags
    client = client_of(proj)
    assert client.get_run(run_id).data.tags["seqlm.registered_version"] == f"{NAME}/1"
    assert [a.path for a in client.list_artifacts(run_id, "register")] == ["register/register.json"]


@pytest.mark.slow
def test_worse_challenger_is_kept_and_a_better_one_promoted(proj, capsys):
    base = eval_bits(proj)
    register(proj)
    new_run(proj, base * 1.05)
    out = register(proj)
    assert out["decision"] == "kept" and out["version"] == 2
    assert out["aliases_after"] == {"challenger": 2, "champion": 1}
    assert out["champion"]["version"] == 1 and out["champion"]["bits_per_byte"] == base
    printed = capsys.readouterr().out
    assert (
        f"challenger {base * 1.05:.4f} valid bits/byte does not beat champion {base:.4f} (version 1) by 1%"
        in printed
    )

    new_run(proj, base * 0.995)  # better, but by less than registry.min_improvement (1%)
    assert register(proj)["decision"] == "kept"

    new_run(proj, base * 0.98)
    out = register(proj)
    assert out["decision"] == "promoted" and out["aliases_after"] == {"challenger": 4, "champion": 4}
    assert "beats champion" in out["reason"]

    proj.set(**{"registry.min_improvement": 0.001})
    new_run(proj, base * 0.98 * 0.995)  # 0.5% better clears a 0.1% bar
    assert register(proj)["decision"] == "promoted"
    assert history_versions(proj) == [1, 4, 5]


def test_the_gate_selects_on_valid_not_on_test(proj):
    valid, test = eval_bits(proj), json.loads(proj.paths().eval_metrics.read_text())["bits_per_byte"]
    register(proj)
    new_run(proj, valid * 1.05, test * 0.5)  # far better on test, worse on valid: not chosen
    out = register(proj)
    assert out["decision"] == "kept" and out["aliases_after"]["champion"] == 1
    assert out["challenger"]["bits_per_byte"] == valid * 1.05 and out["champion"]["bits_per_byte"] == valid
    assert (
        out["challenger_test"]["bits_per_byte"] == test * 0.5
        and out["champion_test"]["bits_per_byte"] == test
    )
    new_run(proj, valid * 0.9, test * 2)  # worse on test, better on valid: chosen
    assert register(proj)["decision"] == "promoted"
    tags = client_of(proj).get_model_version(NAME, "3").tags
    assert float(tags["seqlm.test_bits_per_byte"]) == test * 2  # test is still tagged, for reporting


def test_auto_promote_false_only_registers(proj):
    register(proj)
    proj.set(**{"registry.auto_promote": False})
    new_run(proj, eval_bits(proj) * 0.5)
    out = register(proj)
    assert out["decision"] == "registered_only" and "auto_promote is false" in out["reason"]
    assert out["aliases_after"] == {"challenger": 2, "champion": 1}


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing", "not found, the model is unevaluated"),
        ("nan", r"bits_per_byte is nan \(the model diverged\)"),
        ("no_words", "word_perplexity is null, not a number"),
        ("stale", "is not the evaluation of run"),
        ("no_valid", "no valid metrics"),
        ("stale_valid", r"valid bits/byte .* is not the evaluation of run"),
    ],
)
def test_unevaluated_or_diverged_models_are_refused(proj, damage, message):
    metrics_file = proj.paths().eval_reports / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    if damage == "missing":
        metrics_file.unlink()
    elif damage == "nan":
        metrics_file.write_text(json.dumps(metrics | {"bits_per_byte": math.nan}))
    elif damage == "no_words":
        metrics_file.write_text(json.dumps(metrics | {"word_perplexity": None}))
    elif damage == "no_valid":
        metrics_file.write_text(json.dumps({k: v for k, v in metrics.items() if k != "valid"}))
    elif damage == "stale_valid":
        valid = metrics["valid"] | {"bits_per_byte": metrics["valid"]["bits_per_byte"] + 0.1}
        metrics_file.write_text(json.dumps(metrics | {"valid": valid}))
    else:  # evaluated, but not this run's evaluation
        metrics_file.write_text(json.dumps(metrics | {"bits_per_byte": metrics["bits_per_byte"] + 0.1}))
    with pytest.raises(SeqlmError, match=message) as err:
        register(proj)
    assert "\n" not in str(err.value) and "nothing registered" in str(err.value)
    assert versions(proj) == []
    assert not proj.paths().register_json.exists()


def test_a_rerun_after_a_failure_reuses_the_version(proj, monkeypatch):
    real_gate = gate.gate

    def server_gone(*args, **kwargs):
        raise ConnectionError("the tracking server went away")

    monkeypatch.setattr(gate, "gate", server_gone)
    with pytest.raises(ConnectionError):
        register(proj)
    assert versions(proj) == [1]
    assert gate.aliases(client_of(proj), NAME) == {"challenger": 1}
    assert not proj.paths().register_json.exists()

    monkeypatch.setattr(gate, "gate", real_gate)
    out = register(proj)
    assert out["version"] == 1 and out["reused_version"] and out["decision"] == "promoted"
    assert register(proj)["reason"] == "version 1 is already champion"
    assert versions(proj) == [1]
    client = client_of(proj)
    experiment = client.get_experiment_by_name("seqlm").experiment_id
    assert (
        len(client.search_logged_models(experiment_ids=[experiment])) == 1
    )  # the logged pyfunc was reused too


def test_registered_model_and_versions_carry_descriptions(proj):
    first = register(proj)
    client = client_of(proj)
    model = client.get_registered_model(NAME)
    assert model.description == registration.MODEL_DESCRIPTION
    assert "champion" in model.description and "valid bits per byte" in model.description
    text = client.get_model_version(NAME, "1").description
    steps = json.loads((proj.paths().model_dir / "config.json").read_text())["training"]["steps"]
    assert text.startswith("lstm (1 layer × 64 hidden, embedding 64), trained on files:corpus for ")
    assert f"for {steps} steps" in text
    assert f"valid {first['challenger']['bits_per_byte']:.4f}" in text
    assert f"test {first['challenger_test']['bits_per_byte']:.4f}" in text

    # another pipeline run: its own version and description; version 1's stays
    new_run(proj, bits_per_byte=1.25, test=1.5)
    assert register(proj)["version"] == 2
    assert "Bits per byte: valid 1.2500, test 1.5000" in client.get_model_version(NAME, "2").description
    assert client.get_model_version(NAME, "1").description == text


def test_a_reused_version_is_re_described_and_a_secret_in_the_source_is_not(proj, monkeypatch):
    url = "https://user:pass@example.org/corpus.txt?X-Amz-Signature=secret"
    manifest = proj.paths().manifest
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"source": url}))
    register(proj)
    client = client_of(proj)
    client.update_model_version(NAME, "1", description="stale")
    client.update_registered_model(NAME, description="")
    out = register(proj)
    assert out["version"] == 1 and out["reused_version"]
    text = client.get_model_version(NAME, "1").description
    assert "trained on https://<redacted>@example.org/corpus.txt?<redacted> for " in text
    assert "secret" not in text and "pass" not in text
    assert client.get_registered_model(NAME).description == registration.MODEL_DESCRIPTION


def test_champion_moved_during_the_decision_is_re_decided(proj, monkeypatch, capsys):
    base = eval_bits(proj)
    register(proj)  # version 1, champion
    proj.set(**{"registry.auto_promote": False})
    new_run(proj, base * 0.8)
    register(proj)  # version 2, registered only: the "other" registration that will win the race
    proj.set(**{"registry.auto_promote": True})
    new_run(proj, base * 0.9)

    real_read, calls = gate.read_champion, []

    def racing_read(client, name):
        calls.append(1)
        if len(calls) == 2:  # between our decision and our alias move, another process promotes 2
            client.set_registered_model_alias(name, "champion", "2")
        return real_read(client, name)

    monkeypatch.setattr(gate, "read_champion", racing_read)
    out = register(proj)
    assert "champion moved from version 1 to 2 while deciding; deciding again" in capsys.readouterr().out
    assert out["decision"] == "kept" and out["champion"]["version"] == 2
    assert out["aliases_after"] == {"challenger": 3, "champion": 2}


@pytest.mark.slow
def test_champion_scored_on_other_valid_data_is_re_scored_on_valid(proj, monkeypatch):
    paths, evaluated = proj.paths(), eval_bits(proj)
    register(proj)
    # the rescore path computes what the evaluate stage computed, on the same text
    protocol = report(proj)["challenger"]["protocol"]
    rescored = rescoring.rescore(NAME, 1, protocol, paths)["bits_per_byte"]
    assert rescored == pytest.approx(evaluated, rel=1e-6, abs=precision_slack(proj))

    text = grammar_text(150, seed=7)
    paths.raw_split("valid").write_text(text)
    manifest = json.loads(paths.manifest.read_text())
    manifest["splits"]["valid"]["sha256"] = new_sha = hashlib.sha256(text.encode()).hexdigest()
    paths.manifest.write_text(json.dumps(manifest))
    new_run(proj, 0.5)
    out = register(proj)
    champion = out["champion"]
    assert champion["version"] == 1 and champion["scored"] == "rescored"
    assert champion["split"] == "valid" and champion["text_sha256"] == new_sha
    assert 0.7 * evaluated < champion["bits_per_byte"] < 1.3 * evaluated  # similar text, similar score
    assert out["decision"] == "promoted"
    assert any(
        k.startswith("seqlm.rescore.valid.") for k in client_of(proj).get_model_version(NAME, "1").tags
    )

    # version 1's score on this text is kept as a tag: no second re-scoring
    monkeypatch.setattr(rescoring, "rescore", lambda *a: pytest.fail("re-scored twice"))
    client_of(proj).set_registered_model_alias(NAME, "champion", "1")
    new_run(proj, 0.6)
    assert register(proj)["champion"]["bits_per_byte"] == champion["bits_per_byte"]


def test_unreachable_tracking_server_is_one_line_and_touches_nothing(proj, monkeypatch, capsys):
    paths = proj.paths()

    def snapshot():
        return {
            p: p.read_bytes()
            for d in (paths.model_dir, paths.eval_reports)
            for p in sorted(d.rglob("*"))
            if p.is_file()
        }

    before = snapshot()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    assert main(["register"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"MLflow tracking server http://127.0.0.1:{port} is unreachable" in err
    assert snapshot() == before
    assert not paths.register_json.exists()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert versions(proj) == []


# ------------------------------------------------------------------------------------------ the pyfunc


@pytest.mark.slow
def test_registered_pyfunc_answers_both_tasks(proj):
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    register(proj)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    prompts = pd.DataFrame({"prompt": ["the dog walks to", "a cat"]})
    first = model.predict(prompts, params={"max_new_tokens": 12, "seed": 3})
    again = model.predict(prompts, params={"max_new_tokens": 12, "seed": 3})
    assert list(first.columns) == ["text"] and len(first) == 2
    assert all(isinstance(t, str) and t for t in first["text"]) and first.equals(again)

    words = model.predict(prompts, params={"task": "next_words", "k": 3})["next_words"]
    for row in words:
        probs = [w["probability"] for w in row]
        assert len(row) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(isinstance(w["word"], str) and w["word"].strip() for w in row)
    with pytest.raises(MlflowException, match="task must be one of generate | next_words"):
        model.predict(prompts, params={"task": "translate"})
    with pytest.raises(MlflowException, match=r"temperature must be 0 \(greedy\) or between"):
        model.predict(prompts, params={"temperature": -1.0})
    with pytest.raises(MlflowException, match="seed must be an integer between 0 and"):
        model.predict(prompts, params={"seed": -1})
    many = pd.DataFrame({"prompt": ["a cat"] * 11})  # 11 × 10,000 > 100,000 tokens of work
    with pytest.raises(MlflowException, match="11 prompts × 10,000 .* the limit per request is 100,000"):
        model.predict(many, params={"max_new_tokens": 10_000})


# ------------------------------------------------------------------------------------------ the cache


def test_download_cache_follows_the_weights_not_the_version_number(proj, trained, tmp_path):
    """A recreated store numbers new weights 1 again: resolving models:/seqlm/1 must give the new ones."""
    from safetensors.torch import load_file, save_file

    from seqlm.registry.resolve import resolve_model_dir

    paths = proj.paths()
    weights = paths.model_dir / "weights.safetensors"
    register(proj)
    first = resolve_model_dir(f"models:/{NAME}/1")
    assert (first / "weights.safetensors").read_bytes() == weights.read_bytes()

    shutil.rmtree(proj.root / "mlartifacts")  # a new store: same path, same name, version 1 again
    shutil.copy(trained[1], proj.root / "mlflow.db")
    save_file({k: v + 0.01 for k, v in load_file(weights).items()}, weights)
    new_run(proj)
    assert register(proj)["version"] == 1
    again = resolve_model_dir(f"models:/{NAME}/1")
    assert (again / "weights.safetensors").read_bytes() == weights.read_bytes()
    assert resolve_model_dir(f"models:/{NAME}@champion") == again

    (again / "weights.safetensors").write_bytes(b"damaged")  # a damaged cache is fetched again
    fixed = resolve_model_dir(f"models:/{NAME}/1")
    assert (fixed / "weights.safetensors").read_bytes() == weights.read_bytes()


# ------------------------------------------------------------------------------------------ history


@pytest.mark.parametrize("killed", ["before_the_alias_moved", "after_the_alias_moved"])
@pytest.mark.slow
def test_a_promotion_killed_around_the_alias_move_keeps_history_and_alias_agreeing(proj, monkeypatch, killed):
    """after_the_alias_moved is the crash the old order (alias first, history second) lost an entry in.
    before_the_alias_moved guards the new order: the event is written before the alias moves, so a kill
    there leaves a pending event that the history must skip (counting it would name a champion that
    never was)."""
    from mlflow import MlflowClient

    base = eval_bits(proj)
    register(proj)
    new_run(proj, base * 1.1)
    register(proj)  # version 2, kept
    new_run(proj, base * 1.2)
    register(proj)  # version 3, kept
    real_move = MlflowClient.set_registered_model_alias

    def killed_move(self, name, alias, version):
        if alias == "champion" and killed == "before_the_alias_moved":
            raise SystemExit(137)
        real_move(self, name, alias, version)
        if alias == "champion":
            raise SystemExit(137)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", killed_move)
    with pytest.raises(SystemExit):
        gate.promote(client_of(proj), NAME, 2, "by hand")
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real_move)

    champion = gate.aliases(client_of(proj), NAME)["champion"]
    assert history_versions(proj)[-1] == champion
    assert history_versions(proj) == ([1] if killed == "before_the_alias_moved" else [1, 2])
    gate.promote(client_of(proj), NAME, 3, "the re-run")  # the next move after the kill
    assert history_versions(proj) == ([1, 3] if killed == "before_the_alias_moved" else [1, 2, 3])
    assert gate.aliases(client_of(proj), NAME)["champion"] == 3
    assert gate.rollback(client_of(proj), NAME) == (3, 1 if killed == "before_the_alias_moved" else 2)


@pytest.mark.slow
def test_racing_promotions_lose_no_history_entry(proj, monkeypatch):
    import threading

    from mlflow import MlflowClient

    base = eval_bits(proj)
    register(proj)
    for bits in (1.1, 1.2):
        new_run(proj, base * bits)
        register(proj)  # versions 2 and 3, kept
    real_move, both_decided = MlflowClient.set_registered_model_alias, threading.Barrier(2, timeout=60)

    def move_together(self, name, alias, version):
        if alias == "champion":
            both_decided.wait()  # each has read the history and the champion; now both move it
        real_move(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", move_together)
    errors = []

    def promote(version: int) -> None:
        try:
            gate.promote(client_of(proj), NAME, version, f"racer {version}")
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real_move)
    moved = history_versions(proj)
    assert moved[0] == 1 and sorted(moved[1:]) == [2, 3]
    assert moved[-1] == gate.aliases(client_of(proj), NAME)["champion"]


# ------------------------------------------------------------------------------------------ the tools


@pytest.mark.slow
def test_promote_rollback_and_models(proj, capsys):
    base = eval_bits(proj)
    register(proj)
    new_run(proj, base * 1.1)
    register(proj)  # version 2, kept
    client = client_of(proj)
    capsys.readouterr()

    assert main(["promote", "2", "--reason", "better samples by eye"]) == 0
    assert "champion is now version 2 (was 1)" in capsys.readouterr().out
    tags = client.get_model_version(NAME, "2").tags
    assert tags["seqlm.champion_by"] == "manual" and tags["seqlm.champion_reason"] == "better samples by eye"
    assert tags["seqlm.previous_champion"] == "1" and tags["seqlm.champion_since"]
    assert history_versions(proj) == [1, 2]

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[1].split() == "version aliases valid bits/byte test bits/byte word ppl created run id".split()
    )
    row1, row2 = lines[2].split(), lines[3].split()
    test = json.loads(proj.paths().eval_metrics.read_text())["bits_per_byte"]
    assert row1[:4] == ["1", "-", f"{base:.4f}", f"{test:.4f}"]
    assert row2[:4] == ["2", "challenger,champion", f"{base * 1.1:.4f}", f"{test:.4f}"]
    assert row2[-1] == json.loads(proj.paths().run_json.read_text())["run_id"]

    assert main(["rollback"]) == 0
    assert "champion is now version 1 (was 2)" in capsys.readouterr().out
    assert gate.aliases(client, NAME)["champion"] == 1
    assert client.get_model_version(NAME, "1").tags["seqlm.champion_by"] == "rollback"
    assert history_versions(proj) == [1, 2, 1]  # a rollback appends; nothing is truncated
    assert main(["models", "--history"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("champion history") :].splitlines()[1:]
    assert table[0].split() == ["#", "version", "previous", "by", "when", "reason"]
    assert [row.split()[:4] for row in table[1:]] == [
        ["1", "1", "-", "gate"],
        ["2", "2", "1", "manual"],
        ["3", "1", "2", "rollback"],
    ]
    assert table[2].endswith("better samples by eye") and table[3].endswith("rollback from version 2")
    assert main(["rollback"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no previous champion to roll back to" in err

    client.delete_model_version_tag(NAME, "2", "seqlm.test_bits_per_byte")
    assert main(["promote", "2"]) == 2
    assert "no test bits-per-byte tag (it was not evaluated)" in capsys.readouterr().err
    assert main(["promote", "9"]) == 2
    assert "has no version 9" in capsys.readouterr().err
    assert gate.aliases(client, NAME)["champion"] == 1


def test_tools_without_a_registered_model_say_so(proj, capsys):
    for argv in (["models"], ["serve"], ["rollback"]):
        assert main(argv) == 2
        assert f"no registered model '{NAME}'" in capsys.readouterr().err
