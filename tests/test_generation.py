import io
import json
import math
import random
import re
import shutil

import numpy as np
import pytest
import torch
from seqlm_testing import TINY_TRAIN, Project, grammar_text, make_tokens

from seqlm.cli import main
from seqlm.core.errors import SeqlmError
from seqlm.data.tokenizer import BOS_ID, EOS_ID, UNK_ID, decode_tokens, encode_file
from seqlm.inference.generator import Generator
from seqlm.inference.text import Detokenizer, Prompt, encode_prompt
from seqlm.registry.resolve import find_model_dir, resolve_model_dir

PROMPT = "the dog walks to the"
PLACES = {"river", "market", "hills", "garden"}  # the grammar's objects that follow "the"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared, busy CPU, OpenMP hand-offs between threads make each one-token
    step 10-50x slower; these tests are about what the code computes, not about the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, one_thread):
    """One tiny LSTM trained on the grammar corpus (~10 s). Without byte fallback a vocabulary of 100
    holds most words whole but splits some (river: ▁r i ver), which the next-word tests need."""
    from seqlm.stages.train import run_train

    root = tmp_path_factory.mktemp("generation")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEQLM_ROOT", str(root))
        mp.chdir(root)
        project = Project(root)
        project.set(**{"tokenizer.byte_fallback": False})
        make_tokens(project, vocab_size=100)
        project.set(**TINY_TRAIN)
        run_train(project.config(), project.paths())
    return project.paths().model_dir


@pytest.fixture(scope="module")
def gen(model_dir):
    return Generator.from_dir(model_dir)


def sample_ids(gen, prompt, n, temperature=0.8, top_k=50, top_p=0.95, seed=0):
    return list(gen._sample_ids(encode_prompt(gen.sp, prompt), n, temperature, top_k, top_p, seed))


def test_same_seed_same_text_other_seed_other_text(gen):
    first = gen.generate("the dog", 60, seed=1)
    assert first and first == gen.generate("the dog", 60, seed=1)
    assert first != gen.generate("the dog", 60, seed=2)


def test_greedy_is_deterministic_and_top_k_1_is_greedy(gen):
    greedy = gen.generate("a cat", 40, temperature=0, seed=1)
    assert greedy == gen.generate("a cat", 40, temperature=0, seed=2)
    assert gen.generate("a cat", 40, temperature=1.0, top_k=1, seed=3) == greedy


def test_unk_and_bos_are_never_drawn(gen):
    # temperature 5 over the whole vocabulary is near uniform: an unmasked <unk>/<s> would come up often
    ids = sample_ids(gen, "the dog", 400, temperature=5.0, top_k=0, top_p=1.0)
    assert not {UNK_ID, BOS_ID} & set(ids)
    assert EOS_ID in ids  # line ends are drawn, and come out as newlines
    text = gen.generate("the dog", 400, temperature=5.0, top_k=0, top_p=1.0)
    assert "\n" in text and "⁇" not in text and "<unk>" not in text and "<s>" not in text


def test_stream_joins_to_generate_and_decodes_like_the_tokenizer(gen):
    pieces = list(gen.stream(PROMPT, 80, seed=4))
    assert len(pieces) > 10 and "".join(pieces) == gen.generate(PROMPT, 80, seed=4)
    ids = sample_ids(gen, PROMPT, 80, seed=4)
    # prompt + continuation is exactly the tokenizer's decoding of the whole token stream
    assert PROMPT + "".join(pieces) == decode_tokens(gen.sp, encode_prompt(gen.sp, PROMPT).ids + ids)


def test_stream_checks_its_input_when_called(gen):
    with pytest.raises(SeqlmError, match=r"temperature must be 0 \(greedy\) or between"):
        gen.stream("the dog", temperature=-1)


def test_carried_state_matches_recomputing_the_prompt(gen):
    prompt = encode_prompt(gen.sp, "my sister looks at\nthe king")
    ids = list(gen._sample_ids(prompt, 15, 0, 0, 1.0, 0))
    seq = list(prompt.ids)
    with torch.no_grad():
        for token in ids:
            logits, _ = gen.model(torch.tensor([seq]))
            assert token == int(logits[0, -1].masked_fill(~gen.masks.sampleable, -math.inf).argmax())
            seq.append(token)


def test_trailing_space_is_healed(gen):
    text = gen.generate("the dog walks to ", 20, temperature=0)
    assert text[0] != " " and text.split()[0] in {"the", "a", "my"}
    assert gen.generate("the dog walks to", 20, temperature=0) == " " + text


def test_prompt_encoding_matches_the_tokenize_stage(gen, tmp_path):
    text = "the dog walks\n\na cat  sings about the river.\n"
    (tmp_path / "split.txt").write_text(text)
    encode_file(gen.sp, tmp_path / "split.txt", tmp_path / "split.bin", np.dtype("<u2"))
    assert encode_prompt(gen.sp, text).ids == np.fromfile(tmp_path / "split.bin", dtype="<u2").tolist()
    expected = gen.sp.encode("a cat", add_eos=True) + gen.sp.encode("the dog")
    assert encode_prompt(gen.sp, "a cat\nthe dog").ids == expected


def test_incremental_decoding_with_byte_fallback_pieces():
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(grammar_text(300).splitlines() + ["naïve café 日本語"]),
        model_writer=model,
        vocab_size=300,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=-1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    rng = random.Random(0)
    sequences = [sp.encode("naïve 日本 café, the dog") + [EOS_ID] + sp.encode("日本")]
    sequences += [[rng.choice([EOS_ID] + list(range(3, 300))) for _ in range(60)] for _ in range(30)]
    for prompt in ("", "the dog", "a naïve 日本"):
        last_line = sp.encode(prompt)
        for ids in sequences:
            text = Detokenizer(sp, Prompt(last_line, last_line, False))
            pieces = [text.add(i) for i in ids] + [text.flush()]
            assert prompt + "".join(pieces) == decode_tokens(sp, last_line + ids)
    text = Detokenizer(sp, Prompt([], [], False))
    assert [text.add(i) for i in sp.encode("日", add_eos=True)][-4:] == ["", "", "日", "\n"]


def test_next_words_follow_the_grammar(gen):
    words = gen.next_words(PROMPT, 4)
    names, probs = [w for w, _ in words], [p for _, p in words]
    assert len(set(names)) == 4 and all(name and "▁" not in name and " " not in name for name in names)
    assert all(0 < p < 1 for p in probs) and probs == sorted(probs, reverse=True) and sum(probs) <= 1
    assert names[0] in PLACES
    assert sum(p for w, p in words if w in PLACES) > 0.5


def test_multi_piece_words_come_back_whole(gen):
    multi = {w for w in PLACES if len(gen.sp.encode(w)) >= 2}
    assert multi, "the test needs a place the tokenizer splits"
    names = [w for w, _ in gen.next_words(PROMPT, 6)]
    found = multi & set(names)
    assert found
    for word in found:  # its first piece alone ("r" of "▁r i ver") ranks below the whole word, if at all
        fragment = gen.sp.decode(gen.sp.encode(word)[:1])
        assert fragment not in names[: names.index(word)]


def test_next_word_probability_is_pieces_times_boundary(gen):
    word, prob = gen.next_words(PROMPT, 3)[0]
    ids = encode_prompt(gen.sp, PROMPT).ids
    pieces = gen.sp.encode(word)
    with torch.no_grad():
        logits, _ = gen.model(torch.tensor([ids + pieces]))
    log_probs = logits[0].log_softmax(-1)
    path = sum(float(log_probs[len(ids) - 1 + i, p]) for i, p in enumerate(pieces))
    boundary = float(log_probs[-1].masked_fill(~gen.masks.word_boundary, -math.inf).logsumexp(-1))
    one_segmentation = math.exp(path + boundary)
    # other segmentations of the same word only add to it
    assert one_segmentation * (1 - 1e-5) <= prob <= one_segmentation * 1.05


def test_window_models_generate_and_predict(gen):
    from seqlm.config import ModelConfig
    from seqlm.models import build_model

    torch.manual_seed(0)
    config = ModelConfig(family="ffn_window", embedding_size=16, hidden_size=16, window=4)
    model = build_model(config, gen.vocab_size)
    window = Generator(model, gen.sp)
    assert window.generate("the dog", 30, seed=5) == window.generate("the dog", 30, seed=5)
    words = window.next_words("the dog", 5)
    assert len({w for w, _ in words}) == 5


def test_the_prompt_runs_once_then_one_token_per_step(gen):
    fed = []
    hook = gen.model.register_forward_hook(lambda module, args, out: fed.append(args[0].shape[1]))
    try:
        gen.generate(PROMPT, 100, seed=0)
    finally:
        hook.remove()
    assert fed == [len(encode_prompt(gen.sp, PROMPT).ids)] + [1] * 99


def test_a_hundred_tokens_draw_a_hundred_ids(gen):
    # how long they take is measured by bench/generation_latency.py, not asserted here
    for seed in (1, 2, 3):
        assert len(sample_ids(gen, "the dog", 100, seed=seed)) == 100
        assert gen.generate("the dog", 100, seed=seed)


def test_cli_predict(model_dir, capsys):
    assert main(["predict", PROMPT, "--k", "3", "--model", str(model_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(re.fullmatch(r"\w+\t0\.\d{4}", line) for line in lines)
    probs = [float(line.split("\t")[1]) for line in lines]
    assert probs == sorted(probs, reverse=True)


def test_cli_generate(model_dir, capsys):
    argv = ["generate", "--prompt", "the dog", "--max-new-tokens", "20", "--model", str(model_dir)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.strip()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--prompt", "  \n "], "the prompt is empty"),
        (["generate", "--prompt", "a" * 10_001], "the limit is 10,000"),
        (["generate", "--prompt", "a", "--max-new-tokens", "0"], "must be between 1 and 10,000, got 0"),
        (["generate", "--prompt", "a", "--max-new-tokens", "10001"], "max_new_tokens must be between"),
        (["generate", "--prompt", "a", "--temperature", "-0.5"], "temperature must be 0 (greedy) or between"),
        (["generate", "--prompt", "a", "--temperature", "1e-300"], "between 1e-06 and 1e+06, got 1e-300"),
        (["generate", "--prompt", "a", "--top-p", "0"], "top_p must be between 1e-06 and 1"),
        (["generate", "--prompt", "a", "--top-p", "1.5"], "top_p must be between 1e-06 and 1"),
        (["generate", "--prompt", "a", "--top-k", "-1"], "top_k must be >= 0"),
        (["predict", ""], "the prompt is empty"),
        (["predict", "a", "--k", "0"], "k must be between 1 and 100"),
        (["predict", "a", "--k", "101"], "k must be between 1 and 100"),
    ],
)
def test_bad_input_is_one_line(model_dir, capsys, argv, message):
    assert main([*argv, "--model", str(model_dir)]) != 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_missing_model_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEQLM_ROOT", str(tmp_path))
    assert main(["predict", "the dog"]) != 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert "models/model: no model folder there; run the train stage first or pass --model" in err[0]


def test_registry_uri_without_a_store(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["generate", "--prompt", "a", "--model", "models:/seqlm@champion"]) != 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: models:/seqlm@champion: no MLflow store at")
    assert not (tmp_path / "mlflow.db").exists()


def test_registry_uri_downloads_once_into_the_cache(model_dir, tmp_path, capsys, monkeypatch):
    import mlflow

    # a hand-made version in the store the training run created, laid out as the registry's pyfunc
    pyfunc = tmp_path / "pyfunc"
    shutil.copytree(model_dir, pyfunc / "artifacts" / "model_dir")
    (pyfunc / "MLmodel").write_text("flavors: {}\n")
    store = f"sqlite:///{model_dir.parents[1] / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    client.create_registered_model("generation-test")
    version = client.create_model_version("generation-test", source=str(pyfunc)).version
    client.set_registered_model_alias("generation-test", "champion", version)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    assert main(["predict", PROMPT, "--k", "2", "--model", str(model_dir)]) == 0
    expected = capsys.readouterr().out
    assert main(["predict", PROMPT, "--k", "2", "--model", "models:/generation-test@champion"]) == 0
    assert capsys.readouterr().out == expected
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", None)  # a second time comes from the cache
    cached = resolve_model_dir(f"models:/generation-test/{version}")
    assert cached.name == "model_dir" and (cached / "weights.safetensors").is_file()
    assert str(cached).startswith(str(tmp_path / "cache"))

    assert main(["predict", PROMPT, "--model", "models:/generation-test@nobody"]) != 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: models:/generation-test@nobody: ")


def test_vocabulary_mismatch_names_both_sizes(model_dir, tmp_path, capsys):
    bad = tmp_path / "model"
    shutil.copytree(model_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    config["model"]["vocab_size"] = 101
    (bad / "config.json").write_text(json.dumps(config))
    assert main(["predict", PROMPT, "--model", str(bad)]) != 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "the tokenizer has 100 pieces but the model's vocab_size is 101" in err[0]


def test_relative_model_folder_is_found_from_the_project_root(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEQLM_ROOT", str(model_dir.parents[1]))
    assert resolve_model_dir("models/model") == model_dir


def test_find_model_dir_in_a_downloaded_pyfunc(tmp_path):
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    (tmp_path / "artifacts" / "other").mkdir(parents=True)
    (tmp_path / "artifacts" / "other" / "config.json").write_text("{}")  # no weights beside it
    exported = tmp_path / "artifacts" / "model_dir"
    exported.mkdir()
    for name in ("config.json", "weights.safetensors", "spm.model"):
        (exported / name).write_text("")
    assert find_model_dir(tmp_path) == exported
    with pytest.raises(SeqlmError, match="holds no config.json"):
        find_model_dir(tmp_path / "artifacts" / "other")
