"""train.episodic (decision 22): whole lines as independent episodes, never mixed, never cut, every one
from a fresh state; recall scored per episode; a step budget; resume; and an LSTM that learns the
episodic copy probe at a short delay (the positive control)."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from seqlm_testing import Project, interrupt_training

from seqlm.core.errors import SeqlmError
from seqlm.data.episodes import EpisodeBatches, episode_bounds, recall_mask
from seqlm.data.tokens import IGNORE
from seqlm.evaluation.episodic import Episodic

EOS = 2


def lines_to_tokens(lines: list[list[int]]) -> np.ndarray:
    return np.array([t for line in lines for t in [*line, EOS]], dtype=np.uint16)


def ragged(n: int = 23, seed: int = 0) -> list[list[int]]:
    """Lines whose tokens name their line (100 + line index), of lengths 0..6."""
    rng = np.random.default_rng(seed)
    return [[100 + i] * int(rng.integers(0, 7)) for i in range(n)]


def test_every_row_is_one_whole_episode_and_every_token_a_target_once():
    lines = ragged()
    tokens = lines_to_tokens(lines)
    seen = []
    for x, y, _ in EpisodeBatches(tokens, EOS, 4, 8, ("valid", "train.bptt")):
        assert (x[:, 0] == EOS).all()  # every episode starts from the line-start token
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            targets = [t for t in row_y if t != IGNORE]
            assert targets[-1] == EOS and EOS not in targets[:-1]  # exactly one line, ending at its eos
            assert len({t for t in targets[:-1]}) <= 1  # never two lines' tokens in a row
            assert row_x[1 : len(targets)] == targets[:-1]  # the input is the target shifted by one
            assert row_y[len(targets) :] == [IGNORE] * (len(row_y) - len(targets))
            seen.append(targets)
    assert seen == [[*line, EOS] for line in lines]  # in order, each once
    assert sum(map(len, seen)) == len(tokens)


def test_recall_mask_marks_the_last_token_before_each_eos():
    x, y, _ = next(iter(EpisodeBatches(lines_to_tokens([[5, 6, 7], [8], [], [9, 4]]), EOS, 4, 8, ("t", "k"))))
    assert y[recall_mask(y)].tolist() == [7, 8, 4]  # the blank line has no recall position


def test_training_order_is_shuffled_by_seed_and_epoch_and_ranks_read_disjoint_batches():
    tokens = lines_to_tokens(ragged(40))

    def firsts(seed=0, epoch=0, rank=0, world=1):
        data = EpisodeBatches(
            tokens, EOS, 4, 8, ("train", "train.bptt"), rank, world, shuffle=True, seed=seed
        )
        data.epoch = epoch
        return [tuple(x[:, 0:2].reshape(-1).tolist()) + tuple(y[:, 0].tolist()) for x, y, _ in data]

    assert firsts() == firsts()
    assert firsts() != firsts(seed=1) and firsts() != firsts(epoch=1)
    assert len(firsts()) == 10  # 40 episodes / 4, full batches only
    rank0, rank1 = firsts(rank=0, world=2), firsts(rank=1, world=2)
    assert len(rank0) == len(rank1) == 5 and not set(rank0) & set(rank1)


def test_resume_start_continues_the_same_epoch_order():
    data = EpisodeBatches(
        lines_to_tokens(ragged(40)), EOS, 4, 8, ("train", "train.bptt"), shuffle=True, seed=3
    )
    data.epoch = 2
    full = list(data)
    data.start = full[3][2]
    resumed = list(data)
    assert len(resumed) == len(full) - 4 and torch.equal(resumed[0][1], full[4][1])
    assert len(list(data)) == len(full)  # the offset applies to one pass only


def test_an_episode_longer_than_the_window_is_refused_never_cut():
    tokens = lines_to_tokens([[5] * 3, [6] * 9, [7]])
    with pytest.raises(
        SeqlmError,
        match=r"line 2 of the train split is an episode of 10 tokens .* more than "
        r"train.bptt 8; raise train.bptt to at least 10 so that no episode is cut",
    ):
        EpisodeBatches(tokens, EOS, 2, 8, ("train", "train.bptt"))
    assert episode_bounds(tokens, EOS)[1].tolist() == [4, 10, 2]
    EpisodeBatches(tokens, EOS, 2, 10, ("train", "train.bptt"))  # exactly the longest fits


def test_evaluation_refuses_a_line_longer_than_evaluate_bptt():
    tokens = lines_to_tokens([[5, 6], [7, 8, 9, 4]])
    model = torch.nn.Module()  # never called: the refusal comes first
    with pytest.raises(SeqlmError, match="line 2 of the valid split .* more than evaluate.bptt 4; raise"):
        Episodic().totals(model, tokens, EOS, 2, 4, "cpu", "valid")
    with pytest.raises(SeqlmError, match="line 2 of the test split .* more than evaluate.bptt 3; raise"):
        Episodic().totals(model, tokens, EOS, 2, 3, "cpu", "test", symbol_ids=np.array([4]))


def test_too_few_episodes_for_one_training_batch_is_one_line():
    with pytest.raises(
        SeqlmError, match="holds 3 episodes, fewer than one batch of 4.*lower train.batch_size"
    ):
        EpisodeBatches(lines_to_tokens([[5]] * 3), EOS, 4, 8, ("train", "train.bptt"), shuffle=True)


def test_episodic_with_variable_bptt_is_refused():
    from seqlm import config

    with pytest.raises(SeqlmError, match="train.variable_bptt must be false with train.episodic: true"):
        config.parse({"train": {"episodic": True, "variable_bptt": True}})


# ------------------------------------------------------------------------ the copy probe, end to end


@pytest.fixture(scope="module")
def copy3(tmp_path_factory):
    """download + tokenize of synthetic:copy at delay 3 (char tokens), episodic training params."""
    from seqlm.stages.download import run_download
    from seqlm.stages.tokenize import run_tokenize

    root = tmp_path_factory.mktemp("episodes")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEQLM_ROOT", str(root))
        project = Project(root)
        project.set(
            **{
                "data.source": "synthetic:copy",
                "data.delay": 3,
                "data.synthetic_symbols": 30_000,
                "tokenizer.type": "char",
                "tokenizer.byte_fallback": False,
                "tokenizer.vocab_size": 32,
                "tokenizer.add_dummy_prefix": False,  # as the study's probes
                "model.embedding_size": 32,
                "model.hidden_size": 64,
                "model.dropout": 0.0,
                "train.episodic": True,
                "train.batch_size": 32,
                "train.bptt": 7,  # the episode: </s> K . . . ? K → 7 targets
                "train.lr": 0.01,
                "train.warmup_steps": 20,
                "train.schedule": "constant",
                "train.max_steps": 500,
                "train.max_minutes": 0,
                "train.val_every_steps": 250,
                "train.early_stopping_patience": 0,
                "train.precision": "32-true",
                "evaluate.batch_size": 64,
                "evaluate.bptt": 7,
                "evaluate.context_resets": [4],
                "evaluate.gradient_flow_steps": 4,
                "evaluate.sample_tokens": 4,
                "evaluate.prompts": ["C"],
                "evaluate.cloze_prompts": ["C...?"],
            }
        )
        run_download(project.config(), project.paths())
        run_tokenize(project.config(), project.paths())
    return project


@pytest.fixture
def in_copy3(copy3, monkeypatch):
    monkeypatch.setenv("SEQLM_ROOT", str(copy3.root))
    monkeypatch.chdir(copy3.root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield copy3
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(copy3):
    """The train (500 updates, no minutes budget) and evaluate stages on the delay-3 copy probe."""
    from seqlm.stages.evaluate import run_evaluate
    from seqlm.stages.train import run_train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEQLM_ROOT", str(copy3.root))
        mp.chdir(copy3.root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        metrics = run_train(copy3.config(), copy3.paths(), fresh=True)
        scores = run_evaluate(copy3.config(), copy3.paths())
    torch.set_num_threads(threads)
    return metrics, scores


@pytest.mark.slow
def test_an_lstm_learns_the_episodic_copy_with_a_step_budget(trained, copy3):
    """The positive control: at delay 3 an LSTM recalls the key far above chance in 500 updates."""
    import mlflow

    metrics, scores = trained
    paths = copy3.paths()
    assert metrics["stopped_by"] == "max_steps" and metrics["steps"] == 500
    assert metrics["wall_seconds"] > 0  # minutes are recorded under a step budget
    # far above chance (1/8): 0.85 on an AMD EPYC (AVX512-BF16), above 0.9 on an Intel Xeon, where oneDNN's
    # fp32 kernels round differently; a state that remembers nothing stays near 0.125
    assert metrics["val_recall_accuracy"] > 0.6
    run_id = json.loads(paths.run_json.read_text())["run_id"]
    run = mlflow.MlflowClient(f"sqlite:///{paths.mlflow_db}").get_run(run_id)
    assert run.data.metrics["final_wall_seconds"] == metrics["wall_seconds"]
    assert run.data.metrics["val_recall_accuracy"] == metrics["val_recall_accuracy"]

    assert scores["protocol"] == {"batch_size": 64, "bptt": 7, "carry_state": False, "episodic": True}
    assert scores["recall_accuracy"] > 0.6 and scores["recall_chance"] == 1 / 8
    lines = paths.raw_split("test").read_text().count("\n")
    assert scores["recall_positions"] == lines  # every episode scored, none skipped
    assert scores["evaluated_tokens"] == scores["tokens"]  # every token a target once


def test_the_gates_re_scoring_honours_the_episodic_protocol(trained, in_copy3):
    """A champion re-scored on valid text under the episodic protocol gets what evaluate computed."""
    from seqlm.registry import rescoring
    from seqlm.stages.register import run_register

    _, scores = trained
    paths = in_copy3.paths()
    version = run_register(in_copy3.config(), paths)["version"]
    again = rescoring.rescore("seqlm", version, scores["protocol"], paths)
    # re-scored in fp32; evaluate scored in the training precision where its check measured it equal
    fp32 = scores["eval_precision"] == "32-true"
    slack = 0.0 if fp32 else scores["eval_precision_check"]["tolerance_bits_per_byte"]
    assert again["bits_per_byte"] == pytest.approx(scores["valid"]["bits_per_byte"], rel=1e-6, abs=slack)


class Recorder(torch.nn.Module):
    """Wraps a model and records whether any forward call received a carried (non-None) state."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.carried = model, []

    def forward(self, x, state=None):
        self.carried.append(state is not None)
        return self.inner(x, state)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


def test_no_state_crosses_an_episode_in_training_validation_or_checkpoints(in_copy3, tmp_path):
    import lightning.pytorch as pl

    from seqlm.data.tokens import read_meta
    from seqlm.models import build_model
    from seqlm.training.datamodule import TokenDataModule
    from seqlm.training.lightning_module import LitLanguageModel

    cfg, paths = in_copy3.config(), in_copy3.paths()
    meta = read_meta(paths)
    model = Recorder(build_model(cfg.model, meta["vocab_size"]))
    lm = LitLanguageModel(model, cfg.train, meta["splits"]["valid"], 12)
    data = TokenDataModule(paths, 32, 8, seed=0, protocol=Episodic())
    trainer = pl.Trainer(
        max_steps=12,
        val_check_interval=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(lm, datamodule=data)
    assert len(model.carried) > 12 and not any(model.carried)
    assert lm.train_state is None and lm.val_recall is not None
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["seqlm"]
    assert saved["ranks"][0]["train_state"] is None


class Oracle(torch.nn.Module):
    """Remembers the last key it read (the state) and predicts it: perfect recall if the key is in reach."""

    def __init__(self, vocab: int, keys):
        super().__init__()
        self.vocab, self.keys = vocab, torch.as_tensor(keys)

    def init_state(self, batch_size, device=None):
        return torch.full((batch_size,), -1, dtype=torch.long)

    def forward(self, x, state=None):
        state = self.init_state(x.shape[0]) if state is None else state
        logits = torch.zeros(*x.shape, self.vocab)
        for t in range(x.shape[1]):
            state = torch.where(torch.isin(x[:, t], self.keys), x[:, t], state)
            rows = (state >= 0).nonzero().squeeze(1)
            logits[rows, t, state[rows]] = 10.0
        return logits, state

    def eval(self):
        return self


def test_episodic_recall_cannot_use_the_previous_line(in_copy3):
    """Every other line shows no key: recall there needs the line before. Carried state gets it, a
    reset per episode must not, so the oracle scores 1 in streams and ½ + ½ × chance in episodes."""
    import sentencepiece as spm

    from seqlm.evaluation.streamed import recall_metrics, recall_targets

    sp = spm.SentencePieceProcessor(model_file=str(in_copy3.paths().spm_model))
    keys = np.array([sp.piece_to_id(k) for k in "ABCDEFGH"])
    rng = np.random.default_rng(0)
    lines = []
    for k in rng.integers(8, size=200):
        lines += [f"{'ABCDEFGH'[k]}...?{'ABCDEFGH'[k]}", f"....?{'ABCDEFGH'[k]}"]
    tokens = np.array([t for line in lines for t in [*sp.encode(line), EOS]], dtype=np.uint16)
    oracle = Oracle(sp.get_piece_size(), keys)
    streams = recall_metrics(oracle, tokens, recall_targets(tokens, EOS, keys), keys, 12, 4, 16)
    assert streams["accuracy"] == 1.0
    episodes = Episodic().recall_metrics(oracle, tokens, EOS, keys, 12, 50, 8, "cpu")
    assert episodes["positions"] == 400
    assert episodes["accuracy"] == pytest.approx(0.5 + 0.5 / 8, abs=0.05)


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_an_episodic_run_exactly(in_copy3, capsys):
    """The resume state holds no carried state (None) but the epoch's episode order and batch index: a
    run killed mid-epoch and resumed ends where the uninterrupted one does."""
    paths = in_copy3.paths()
    with params_restored(paths):
        kill_and_resume(in_copy3, paths, capsys)


@contextlib.contextmanager
def params_restored(paths):
    """params.yaml as it was after the block: the module's other tests share the project."""
    before = paths.params.read_text()
    try:
        yield
    finally:
        paths.params.write_text(before)


def kill_and_resume(in_copy3, paths, capsys):
    import signal

    from seqlm.stages.train import run_train

    in_copy3.set(**{"train.max_steps": 200, "train.val_every_steps": 100, "model.dropout": 0.1})
    reference = run_train(in_copy3.config(), paths, fresh=True)["val_loss"]
    paths.last_ckpt.unlink()
    in_copy3.set(**{"train.checkpoint_every_minutes": 0.002})
    interrupt_training(in_copy3.root, paths.last_ckpt, signal.SIGKILL)
    saved = torch.load(paths.last_ckpt, map_location="cpu", weights_only=False)
    assert 0 < saved["global_step"] < 200 and saved["seqlm"]["ranks"][0]["train_state"] is None
    capsys.readouterr()
    resumed = run_train(in_copy3.config(), paths)
    assert "resuming from models/last.ckpt" in capsys.readouterr().out
    assert resumed["steps"] == 200
    assert resumed["val_loss"] == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize("task", ["copy", "adding"])
def test_the_study_helper_gives_valid_params_whose_window_is_the_episode(project, task):
    from seqlm.data import synthetic
    from seqlm.data.episodes import episode_bounds
    from seqlm.stages.download import run_download
    from seqlm.stages.tokenize import run_tokenize

    keys = synthetic.episodic_probe_params(task, 7, steps=300)
    project.set(**keys, **{"data.synthetic_symbols": 3000})
    cfg = project.config()  # every key validates
    assert cfg.train.episodic and cfg.train.max_steps == 300 and cfg.train.max_minutes == 0
    run_download(cfg, project.paths())
    run_tokenize(cfg, project.paths())
    meta = json.loads(project.paths().tokens_meta.read_text())
    assert meta["vocab_size"] == 3 + len(synthetic.alphabet(task))  # <unk> <s> </s> + the symbols, no ▁
    tokens = np.fromfile(project.paths().tokens("train"), dtype=meta["dtype"])
    text = project.paths().raw_split("train").read_text()
    assert meta["splits"]["train"]["tokens"] == len(text)  # one token per symbol, eos for each newline
    assert set(episode_bounds(tokens, meta["eos_id"])[1].tolist()) == {keys["train.bptt"]}


def test_each_epoch_reads_its_own_order_and_a_mid_epoch_resume_continues_it(in_copy3, tmp_path):
    """Recorded batches of a real fit over several epochs: epoch e reads the order keyed on (seed, e),
    and a run resumed from a checkpoint taken inside epoch 2 reads exactly what the whole run read."""
    import lightning.pytorch as pl

    from seqlm.data.tokens import read_meta
    from seqlm.models import build_model
    from seqlm.training.datamodule import TokenDataModule
    from seqlm.training.lightning_module import LitLanguageModel

    cfg, paths = in_copy3.config(), in_copy3.paths()
    meta = read_meta(paths)

    class SaveAt(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 20:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")

    def fit(steps, callbacks=(), ckpt=None):
        torch.manual_seed(0)
        model = Recorder(build_model(cfg.model, meta["vocab_size"]))
        seen = []
        model.forward = lambda x, state=None, inner=model.inner: seen.append(x.clone()) or inner(x, state)
        lm = LitLanguageModel(model, cfg.train, meta["splits"]["valid"], steps)
        data = TokenDataModule(paths, 512, 8, seed=5, protocol=Episodic())
        trainer = pl.Trainer(
            max_steps=steps,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=list(callbacks),
            default_root_dir=tmp_path,
        )
        trainer.fit(lm, datamodule=data, ckpt_path=ckpt)
        return seen, data

    whole, data = fit(30, [SaveAt()])
    per_epoch = data.split_windows("train")  # 8 batches of 512 episodes
    assert per_epoch < 20 // 2  # the checkpoint lies past the first epoch
    reference = data.split("train", 0, 1)
    for epoch in range(3):
        reference.epoch = epoch
        for i, (x, _, _) in enumerate(reference):
            assert torch.equal(whole[epoch * per_epoch + i], x)
    resumed, _ = fit(30, ckpt=str(tmp_path / "mid.ckpt"))
    assert len(resumed) == 10 and all(torch.equal(a, b) for a, b in zip(resumed, whole[20:]))


# ------------------------------------------------------------- updates to solve (train.stop_at_recall)


def test_a_probe_stops_at_the_first_validation_that_solves_it(in_copy3, capsys):
    """With train.stop_at_recall the run ends at the first validation whose recall reaches it, long before
    max_steps, and reports those updates as solved; a run killed after it solved resumes to the same
    report without training on; a cap too small to solve in says max_steps and not solved."""
    paths = in_copy3.paths()
    with params_restored(paths):
        updates_to_solve(in_copy3, paths, capsys)


def updates_to_solve(in_copy3, paths, capsys):
    import mlflow

    from seqlm.stages.train import run_train

    # delay 3: 0.75 recall at 200 updates, 1.0 at 350 (a Xeon), chance 1/8
    in_copy3.set(**{"train.max_steps": 5000, "train.val_every_steps": 25, "train.stop_at_recall": 0.6})
    solved = run_train(in_copy3.config(), paths, fresh=True)
    assert solved["stopped_by"] == "solved" and solved["solved"] == 1.0
    assert solved["steps"] < 2000 and solved["steps"] % 25 == 0
    assert json.loads(paths.train_metrics.read_text()) == solved
    run_id = json.loads(paths.run_json.read_text())["run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{paths.mlflow_db}")
    assert client.get_run(run_id).data.metrics["final_solved"] == 1.0
    recall = [(m.step, m.value) for m in client.get_metric_history(run_id, "val_recall_accuracy")]
    assert [s for s, _ in recall] == list(range(25, solved["steps"] + 1, 25))
    assert all(v < 0.6 for _, v in recall[:-1]) and recall[-1][1] == solved["val_recall_accuracy"] >= 0.6

    # killed after the checkpoint at the end, before the run was recorded finished
    state = json.loads(paths.last_state.read_text())
    paths.last_state.write_text(json.dumps(state | {"complete": False}))
    capsys.readouterr()
    resumed = run_train(in_copy3.config(), paths)
    assert "resuming from models/last.ckpt" in capsys.readouterr().out
    assert {k: resumed[k] for k in solved if k not in ("wall_seconds", "tokens_per_s")} == {
        k: solved[k] for k in solved if k not in ("wall_seconds", "tokens_per_s")
    }

    in_copy3.set(**{"train.max_steps": 40, "train.stop_at_recall": 0.99})
    capped = run_train(in_copy3.config(), paths, fresh=True)
    assert capped["stopped_by"] == "max_steps" and capped["steps"] == 40 and capped["solved"] == 0.0
    assert capped["val_recall_accuracy"] < 0.99
