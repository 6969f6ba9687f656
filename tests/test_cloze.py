"""The cloze objective: params, blanking, the bidirectional RNN reading the right context, the evaluate
and register stages on a tiny cloze project, and `seqlm fill` (docs/architecture.md, decision 20)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from seqlm_testing import REPO, TINY_TRAIN, in_project, make_tokens

from seqlm import cli, config
from seqlm.config import ModelConfig
from seqlm.core.errors import SeqlmError
from seqlm.data.blanks import blank_batch, blank_mask, blanks_per_row
from seqlm.data.tokens import IGNORE
from seqlm.evaluation.cloze import Cloze
from seqlm.models import build_model, build_model_from_config

V = 16


@pytest.fixture
def one_thread():
    # One thread: on a busy two-core machine, OpenMP threads waiting for each other cost more than they add.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def params(**sections) -> dict:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in sections.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    return raw


def lstm(bidirectional: bool, objective: str = "cloze", seed: int = 0, size: int = 32):
    torch.manual_seed(seed)
    cfg = ModelConfig(
        family="lstm",
        embedding_size=size,
        hidden_size=size,
        dropout=0.0,
        input_dropout=0.0,
        bidirectional=bidirectional,
    )
    return build_model(cfg, V, objective)


# ------------------------------------------------------------------------------------------ params


def test_bidirectional_is_accepted_with_the_cloze_objective_only():
    cfg = config.parse(params(train__objective="cloze", model__bidirectional=True))
    assert cfg.train.objective == "cloze" and cfg.model.bidirectional and cfg.train.cloze_rate == 0.15
    with pytest.raises(SeqlmError, match="reads the tokens it is asked to predict.*train.objective: cloze"):
        config.parse(params(model__bidirectional=True))


@pytest.mark.parametrize("family", ["ffn_window", "bow"])
def test_cloze_refuses_the_window_baselines(family):
    with pytest.raises(SeqlmError, match=f"train.objective: cloze needs a recurrent model.family.*{family}"):
        config.parse(params(train__objective="cloze", model__family=family))


@pytest.mark.parametrize("bad", [0.0, 1.0, "0.15"])
def test_cloze_rate_must_be_a_fraction(bad):
    with pytest.raises(SeqlmError, match=r"train.cloze_rate must be a number > 0 and < 1"):
        config.parse(params(train__cloze_rate=bad))


def test_objective_is_checked():
    with pytest.raises(SeqlmError, match="train.objective must be one of next | cloze"):
        config.parse(params(train__objective="masked"))


def test_a_bidirectional_next_token_model_cannot_be_built():
    with pytest.raises(SeqlmError, match="bidirectional needs objective cloze"):
        lstm(True, "next")


# ------------------------------------------------------------------------------------------ blanking


def test_blanks_are_the_only_targets_and_the_blank_is_never_one():
    tokens = torch.randint(0, V, (4, 20), generator=torch.Generator().manual_seed(0))
    inputs, targets = blank_batch(tokens, 0.15, [1, 2, 3], V)
    blanked = targets != IGNORE
    assert (blanked.sum(1) == blanks_per_row(20, 0.15)).all()  # 3 per row
    assert (inputs[blanked] == V).all() and (inputs[~blanked] == tokens[~blanked]).all()
    assert (targets[blanked] == tokens[blanked]).all() and (targets[blanked] < V).all()


def test_blanks_are_deterministic_per_key_and_fresh_per_step():
    assert torch.equal(blank_mask(8, 32, 0.15, [7, 0, 0, 5]), blank_mask(8, 32, 0.15, [7, 0, 0, 5]))
    assert not torch.equal(blank_mask(8, 32, 0.15, [7, 0, 0, 5]), blank_mask(8, 32, 0.15, [7, 0, 0, 6]))
    assert blank_mask(2, 3, 0.01, [0]).sum(1).tolist() == [1, 1]  # at least one blank per row


def test_the_loss_counts_only_blanked_positions():
    model = lstm(True)
    tokens = torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(1))
    ce, loss, state = Cloze(0.25, seed=0).training_loss(model, (tokens, None, 0), None, [4], None)
    inputs, targets = blank_batch(tokens, 0.25, [4], V)
    logits, _ = model(inputs, None)
    mask = targets != IGNORE
    expected = torch.nn.functional.cross_entropy(logits[mask], tokens[mask], reduction="sum")
    assert int(mask.sum()) == 9 and state is None and torch.allclose(loss, expected / 9) and ce is loss


# ------------------------------------------------------------------------------------------ the model


def test_the_bidirectional_model_reads_the_right_context_and_the_left_to_right_one_does_not():
    tokens = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(2))
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1) % V
    for bidirectional, differs in ((True, True), (False, False)):
        model = lstm(bidirectional).eval()
        with torch.no_grad():
            before, after = model(tokens)[0][:, :7], model(changed)[0][:, :7]
        assert (not torch.allclose(before, after)) == differs
    state = lstm(True).init_state(5)
    assert state[0].shape == (2, 5, 32)  # both directions' states


@pytest.mark.parametrize("family", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("tie", [True, False])
def test_every_recurrent_family_runs_bidirectionally_tied_or_not(family, tie):
    cfg = ModelConfig(
        family=family, embedding_size=8, hidden_size=8, num_layers=2, tie_weights=tie, bidirectional=True
    )
    model = build_model(cfg, V, "cloze")
    logits, _ = model(torch.full((2, 5), V))  # all blanks: the blank id is an input
    assert logits.shape == (2, 5, V)  # never a logit for the blank itself
    assert model.decoder.in_features == (8 if tie else 16)
    assert (model.projection is not None) == tie  # 2 × hidden projected to the tied embedding width
    assert len(model.recurrent_weights()) == 4  # two layers × two directions


def test_export_carries_the_objective_and_the_direction(tmp_path):
    model = lstm(True)
    rebuilt = build_model_from_config(json.loads(json.dumps(model.config)))
    assert rebuilt.config["objective"] == "cloze" and rebuilt.config["bidirectional"]
    rebuilt.load_state_dict(model.state_dict())  # the blank embedding and the reverse weights included
    old = {k: v for k, v in lstm(False, "next").config.items() if k not in ("objective", "bidirectional")}
    assert build_model_from_config(old).config["objective"] == "next"  # an export from before cloze


def _pairs(batch: int, steps: int, gen: torch.Generator) -> torch.Tensor:
    """Random tokens, each written twice: a a b b …; the first of a pair is known only from its right."""
    return torch.randint(0, V, (batch, steps // 2), generator=gen).repeat_interleave(2, dim=1)


def _accuracy_after_training(bidirectional: bool) -> tuple[float, float]:
    """(accuracy at blanks that open a pair, at blanks that close one) after 200 steps on pairs."""
    model = lstm(bidirectional)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(1)
    for step in range(200):
        _, loss, _ = Cloze(0.15, seed=0).training_loss(model, (_pairs(32, 16, gen),), None, [0, step], None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tokens = _pairs(256, 16, gen)
    inputs, targets = blank_batch(tokens, 0.15, [99], V)
    with torch.no_grad():
        right = model.eval()(inputs)[0].argmax(-1) == tokens
    blanked = targets != IGNORE
    opening = torch.zeros_like(blanked)
    opening[:, 0::2] = True
    partner_seen = inputs.view(256, 8, 2).flip(-1).reshape(256, 16) != V
    first, second = blanked & opening & partner_seen, blanked & ~opening & partner_seen
    return right[first].float().mean().item(), right[second].float().mean().item()


def test_a_bilstm_fills_from_the_right_where_a_left_to_right_lstm_cannot(one_thread):
    bi_first, bi_second = _accuracy_after_training(True)
    lr_first, lr_second = _accuracy_after_training(False)
    # The opening token of a pair is random given its left: only the right context gives it away.
    assert bi_first > 0.9 and lr_first < 0.25  # chance is 1/16
    assert bi_second > 0.9 and lr_second > 0.9  # the closing one is given by its left


# ------------------------------------------------------------------------------------------ the stages

CLOZE = TINY_TRAIN | {
    "train.objective": "cloze",
    "model.bidirectional": True,
    "train.cloze_rate": 0.25,
    "train.max_steps": 300,
    "train.val_every_steps": 150,
    "evaluate.cloze_prompts": ["the old man looks at the"],
}


@pytest.fixture(scope="module")
def cloze_project(tmp_path_factory):
    from seqlm.stages.evaluate import run_evaluate
    from seqlm.stages.register import run_register
    from seqlm.stages.train import run_train

    with in_project(tmp_path_factory.mktemp("cloze")) as project:
        # no byte pieces: a vocabulary of 200 then holds every word of the grammar whole
        project.set(**{"tokenizer.byte_fallback": False})
        make_tokens(project, vocab_size=200, lines=1500)
        project.set(**CLOZE)
        train = run_train(project.config(), project.paths())
        metrics = run_evaluate(project.config(), project.paths())
        register = run_register(project.config(), project.paths())
        yield project, train, metrics, register


def test_training_reports_bits_per_blank_not_per_byte(cloze_project):
    project, train, _, _ = cloze_project
    assert train["objective"] == "cloze" and "val_bits_per_byte" not in train
    assert math.isclose(train["val_bits_per_blank"], train["val_loss"] / math.log(2))
    exported = json.loads((project.paths().model_dir / "config.json").read_text())
    assert exported["model"]["objective"] == "cloze" and exported["model"]["bidirectional"]
    assert exported["cloze_rate"] == 0.25


def test_evaluate_scores_the_blanks_of_the_test_split(cloze_project):
    project, _, metrics, _ = cloze_project
    paths = project.paths()
    assert json.loads(paths.eval_metrics.read_text()) == metrics
    assert metrics["objective"] == "cloze" and metrics["protocol"]["carry_state"] is False
    assert 0 <= metrics["top1_accuracy"] <= metrics["top5_accuracy"] <= 1
    # the grammar's words are guessable from both sides: far better than counting tokens
    assert metrics["bits_per_blank"] < 0.6 * metrics["unigram_bits_per_blank"]
    assert metrics["top5_accuracy"] > 0.6
    assert metrics["blanks"] > 0 and "bits_per_byte" not in metrics
    assert metrics["valid"]["bits_per_blank"] > 0
    for name in ("context_ablation", "gradient_flow"):
        assert "does not apply" in json.loads((paths.eval_reports / f"{name}.json").read_text())["skipped"]
        assert (paths.eval_reports / f"{name}.png").stat().st_size > 0
    assert "| 1 |" in paths.eval_samples.read_text()


def test_evaluate_blanks_the_same_tokens_every_time(cloze_project):
    from seqlm.stages.evaluate import run_evaluate

    project, _, metrics, _ = cloze_project
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEQLM_ROOT", str(project.root))
        mp.chdir(project.root)
        again = run_evaluate(project.config(), project.paths())
    for key in ("loss", "top1_accuracy", "top5_accuracy", "blanks", "unigram_bits_per_blank"):
        assert again[key] == metrics[key]


def test_register_keeps_cloze_models_away_from_the_champion(cloze_project):
    project, _, _, register = cloze_project
    assert register["decision"] == "not_registered" and register["version"] is None
    assert "seqlm fill" in register["reason"]
    assert json.loads(project.paths().register_json.read_text()) == register


# ------------------------------------------------------------------------------------------ seqlm fill


def _fill(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["fill", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_fill_ranks_the_planted_word_first(cloze_project, capsys):
    project, *_ = cloze_project
    model = str(project.paths().model_dir)
    code, out, err = _fill(capsys, "my ___ walks to the river at night.", "--model", model, "--top", "3")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["rank", "word", "log-prob", "probability"] and len(lines) == 4
    rank, word, log_prob, prob = lines[1].split()
    assert (rank, word) == ("1", "sister") and math.isclose(
        math.exp(float(log_prob)), float(prob), abs_tol=1e-3
    )


def test_fill_scores_words_of_several_pieces_by_pseudo_log_likelihood(cloze_project):
    from seqlm.inference.fill import Filler, split_blank

    project, *_ = cloze_project
    filler = Filler.from_dir(project.paths().model_dir)
    text = "every child sings about the ___ before the rain."
    ranked = filler.fill(text, top=3, candidates=("market", "kingriver"))
    assert ranked[0][1] in ("river", "market", "hills", "garden") and ranked[-1][1] == "kingriver"
    ranks = [n for n, _, _ in ranked]
    assert ranks[:3] == [1, 2, 3] and ranks == sorted(ranks) and ranks[-1] > 3
    ranked = {word: lp for _, word, lp in ranked}
    assert ranked["market"] > ranked["kingriver"]
    pieces = filler.sp.encode("kingriver")
    assert len(pieces) > 1
    left, right = split_blank(filler.sp, text)
    expected = 0.0
    for i, piece in enumerate(pieces):  # each piece blanked alone, the others in place
        row = left + pieces[:i] + [filler.blank_id] + pieces[i + 1 :] + right
        with torch.no_grad():
            logits = filler.model(torch.tensor([row]))[0][0, len(left) + i]
        expected += logits.log_softmax(-1)[piece].item()
    assert math.isclose(ranked["kingriver"], expected, rel_tol=1e-5)


def test_the_text_around_the_blank_is_encoded_as_the_tokenize_stage_encodes_lines(cloze_project):
    from seqlm.inference.fill import Filler, split_blank

    project, *_ = cloze_project
    sp = Filler.from_dir(project.paths().model_dir).sp
    for text in ("the old ___ looks at the river.", "my ___.", "a cat\n___ walks"):
        left, right = split_blank(sp, text)
        whole = sp.encode(text.replace("___", "man").split("\n"), add_eos=True)
        assert left + sp.encode("man") + right == [i for line in whole for i in line], text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no blank here", "no blank in"),
        ("___ and ___", "has 2 blanks"),
        ("un___able", "must stand for a whole word"),
    ],
)
def test_fill_refuses_bad_text_in_one_line(cloze_project, capsys, text, message):
    project, *_ = cloze_project
    code, out, err = _fill(capsys, text, "--model", str(project.paths().model_dir))
    assert code == 2 and out == "" and err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_fill_refuses_a_next_token_model_and_generate_a_cloze_one(cloze_project, tmp_path, capsys):
    from seqlm.models import export

    project, *_ = cloze_project
    next_dir = tmp_path / "next"
    spm_model = project.paths().model_dir / export.TOKENIZER
    vocab = json.loads((project.paths().model_dir / "config.json").read_text())["model"]["vocab_size"]
    cfg = ModelConfig(family="lstm", embedding_size=16, hidden_size=16)
    export.export(build_model(cfg, vocab), None, next_dir, spm_model, {})
    code, _, err = _fill(capsys, "my ___ walks", "--model", str(next_dir))
    assert code == 2 and "not a cloze model" in err and "train.objective: cloze" in err
    code = cli.main(["generate", "--prompt", "the", "--model", str(project.paths().model_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "cloze model" in err and "seqlm fill" in err


@pytest.mark.slow
def test_a_killed_cloze_run_resumes_to_the_uninterrupted_result(project, one_thread, capsys):
    """Blanks keyed on the step, not drawn from a consumed RNG: a resumed run blanks what an unbroken one
    would, so kill -9 and a re-run end at the same validation loss (as tests/test_training.py's kill test)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from seqlm.stages.train import run_train

    make_tokens(project, lines=1500)
    cloze = {"train.objective": "cloze", "model.bidirectional": True, "model.dropout": 0.1}
    project.set(**(TINY_TRAIN | cloze | {"train.max_steps": 300, "train.val_every_steps": 150}))
    reference = run_train(project.config(), project.paths())["val_loss"]
    paths = project.paths()
    project.set(**{"train.checkpoint_every_minutes": 0.002})
    (paths.models_dir / "last.ckpt").unlink()
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "seqlm.cli", "train", "--fresh"],
        cwd=project.root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt, deadline = paths.models_dir / "last.ckpt", time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the training subprocess never wrote a checkpoint"
    saved_step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < saved_step < 300
    capsys.readouterr()
    resumed = run_train(project.config(), project.paths())
    assert "resuming from models/last.ckpt" in capsys.readouterr().out and resumed["steps"] == 300
    assert resumed["val_loss"] == pytest.approx(reference, rel=1e-5)
