"""The tokenize stage: sentencepiece model, token arrays, meta.json, and its errors."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest
import sentencepiece as spm

from seqlm import cli
from seqlm.config import TokenizerConfig
from seqlm.core.errors import SeqlmError
from seqlm.data import tokenizer
from seqlm.stages.tokenize import run_tokenize

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will more said what up out "
    "into than them can only other time new some could these two may first then do any like my now over "
    "such our man me even most made after also did many before must through back years where much your way "
    "well down should because each just those people how too little state good very make world still own "
    "see men work long get here between both life being under never day same another know while last might "
    "us great old year off come since against go came right used take three café naïve “quoted” — end"
).split()


def english_ish(rng: random.Random, n_bytes: int) -> str:
    """Paragraphs of random sentences separated by blank lines, with some odd spacing thrown in."""
    out, size = [], 0
    while size < n_bytes:
        paragraph = []
        for _ in range(rng.randint(1, 6)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 25))]
            line = " ".join(words).capitalize() + rng.choice(".?!;")
            if rng.random() < 0.05:
                line = rng.choice(["  ", "\t", ""]) + line.replace(" ", "  ", 1) + rng.choice([" ", ""])
            paragraph.append(line)
        text = "\n".join(paragraph) + "\n\n"
        out.append(text)
        size += len(text.encode())
    return "".join(out)


def write_raw(project, train: str, valid: str, test: str) -> None:
    raw = project.root / "data" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (raw / f"{name}.txt").write_bytes(text.encode("utf-8"))


def small_corpus(project, seed: int = 0, train_kb: int = 200) -> None:
    rng = random.Random(seed)
    write_raw(project, english_ish(rng, train_kb * 1000), english_ish(rng, 20_000), english_ish(rng, 20_000))


def configure(project, **overrides) -> None:
    params = {"tokenizer.vocab_size": 400, "tokenizer.type": "bpe"}
    params.update({f"tokenizer.{k}": v for k, v in overrides.items()})
    project.set(**params)


def run(project) -> dict:
    run_tokenize(project.config(), project.paths())
    return json.loads(project.paths().tokens_meta.read_text())


def tokens_of(project, split: str, meta: dict) -> np.ndarray:
    return np.fromfile(project.paths().tokens(split), dtype=np.dtype(meta["dtype"]).newbyteorder("<"))


def processor(project) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(project.paths().spm_model))


def nothing_written(project) -> bool:
    return not project.paths().tokenizer_dir.exists() and not project.paths().tokens_dir.exists()


# ------------------------------------------------------------------------------------- the stage


@pytest.mark.parametrize("kind", ["bpe", "unigram", "char"])
def test_stage_round_trips_every_split_and_counts_what_meta_says(project, kind):
    small_corpus(project)
    configure(project, type=kind)
    meta = run(project)
    paths, sp = project.paths(), processor(project)

    assert paths.spm_model.is_file() and (paths.tokenizer_dir / "spm.vocab").is_file()
    assert meta["tokenizer_type"] == kind and meta["line_end"] == "eos" and meta["dtype"] == "uint16"
    assert meta["vocab_size"] == sp.get_piece_size() and (kind == "char" or meta["vocab_size"] == 400)
    assert (meta["unk_id"], meta["bos_id"], meta["eos_id"]) == (sp.unk_id(), sp.bos_id(), sp.eos_id())
    assert meta["spm_model_sha256"] == hashlib.sha256(paths.spm_model.read_bytes()).hexdigest()
    for split in ("train", "valid", "test"):
        raw = paths.raw_split(split).read_bytes()
        text = raw.decode("utf-8")
        tokens = tokens_of(project, split, meta)
        counts = meta["splits"][split]
        assert counts["tokens"] == paths.tokens(split).stat().st_size // 2 == tokens.size
        assert counts["bytes"] == len(raw)
        assert counts["lines"] == raw.count(b"\n") == int(np.count_nonzero(tokens == meta["eos_id"]))
        assert counts["words"] == len(text.split())
        assert counts["unk_tokens"] == 0
        assert tokenizer.decode_tokens(sp, tokens) == text  # byte for byte: identity normalisation


def test_blank_line_is_a_lone_eos_and_a_last_line_without_newline_gets_one(project):
    small_corpus(project)
    write_raw(project, (project.root / "data/raw/train.txt").read_text(), "one line\n\nnext line", "x\n")
    configure(project)
    meta = run(project)
    sp, eos = processor(project), meta["eos_id"]
    expected = sp.encode("one line") + [eos, eos] + sp.encode("next line") + [eos]
    assert tokens_of(project, "valid", meta).tolist() == expected
    assert meta["splits"]["valid"]["lines"] == 3


def test_same_params_give_identical_outputs_also_when_sampling_train_lines(project):
    small_corpus(project)
    configure(project, input_sentence_size=500)  # fewer than the train lines: the sample must be seeded
    first = run(project)
    train_bin = project.paths().tokens("train").read_bytes()
    second = run(project)
    assert second == first
    assert project.paths().tokens("train").read_bytes() == train_bin


def test_unseen_characters_fall_back_to_bytes_not_unk(project):
    small_corpus(project)
    write_raw(project, (project.root / "data/raw/train.txt").read_text(), "ok\n", "emoji 😀 and 漢字 here\n")
    configure(project)
    meta = run(project)
    test = meta["splits"]["test"]
    assert test["unk_tokens"] == 0 and test["byte_fallback_fraction"] > 0
    decoded = tokenizer.decode_tokens(processor(project), tokens_of(project, "test", meta))
    assert decoded == "emoji 😀 and 漢字 here\n"

    configure(project, byte_fallback=False)
    assert run(project)["splits"]["test"]["unk_tokens"] > 0  # the same text without fallback: <unk>s


def test_lines_longer_than_max_sentence_length_train_and_a_1mb_line_encodes(project, capsys):
    rng = random.Random(1)
    long_lines = [" ".join(rng.choice(WORDS) for _ in range(300)) for _ in range(200)]  # ~1.5 kB each
    long_lines.append("x" * 1000)  # no whitespace at all: cut between characters
    long_lines.append(" ".join(rng.choice(WORDS) for _ in range(500_000)))  # > one 1 MB read block
    huge = " ".join(rng.choice(WORDS) for _ in range(200_000))[: 1 << 20]  # ~1 MB, no newline at the end
    write_raw(project, "\n".join(long_lines) + "\n", "short line\n", huge)
    configure(project, max_sentence_length=256)
    meta = run(project)
    out = capsys.readouterr().out
    assert "202 train lines longer than tokenizer.max_sentence_length (256 bytes) were split" in out
    assert meta["splits"]["test"]["lines"] == 1
    tokens = tokens_of(project, "test", meta)
    assert tokens[-1] == meta["eos_id"] and tokenizer.decode_tokens(processor(project), tokens) == huge + "\n"


# ------------------------------------------------------------------------------------- errors


def test_vocab_too_large_is_one_line_naming_the_largest_and_leaves_nothing(project, capsys):
    small_corpus(project, train_kb=50)
    configure(project, vocab_size=50_000)
    stale = project.paths().tokens_meta
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")  # from an earlier run: must not survive a failed one
    assert cli.main(["tokenize"]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    prefix = "error: params.yaml: tokenizer.vocab_size 50000 is too large for this corpus: "
    prefix += "the largest it supports is "
    assert lines[0].startswith(prefix) and lines[0].endswith("; lower tokenizer.vocab_size")
    largest = int(lines[0][len(prefix) :].split(";")[0])
    assert 400 < largest < 50_000
    assert nothing_written(project)
    configure(project, vocab_size=largest)  # the number it names really is the largest that works
    assert run(project)["vocab_size"] == largest


def test_vocab_too_small_names_the_smallest(project):
    small_corpus(project, train_kb=20)
    configure(project, vocab_size=100)
    expected = r"tokenizer\.vocab_size 100 is too small for this corpus: the smallest it supports is \d+ "
    with pytest.raises(SeqlmError, match=expected):
        run(project)
    assert nothing_written(project)


def test_missing_raw_points_to_the_download_stage(project):
    configure(project)
    with pytest.raises(SeqlmError, match=r"raw/train\.txt: not found; run the download stage first"):
        run(project)
    assert nothing_written(project)


def test_empty_train_split_is_an_error(project):
    write_raw(project, "\n \n\n", "a\n", "b\n")
    configure(project)
    with pytest.raises(SeqlmError, match=r"train\.txt: the train split has no text"):
        run(project)
    assert nothing_written(project)


def test_invalid_utf8_names_file_and_byte(project):
    small_corpus(project, train_kb=20)
    (project.root / "data/raw/valid.txt").write_bytes(b"fine\nbad \xff byte\n")
    configure(project)
    with pytest.raises(SeqlmError, match=r"valid\.txt: not valid UTF-8 at byte 9;"):
        run(project)
    assert nothing_written(project)


# ------------------------------------------------------------------------------------- helpers


def test_token_dtype_is_uint16_while_ids_fit():
    assert tokenizer.token_dtype(2000) == np.dtype("<u2")
    assert tokenizer.token_dtype(65_535) == np.dtype("<u2")
    assert tokenizer.token_dtype(65_536) == np.dtype("<u4")
    assert tokenizer.token_dtype(256_000).itemsize == 4


@pytest.fixture(scope="module", params=[("bpe", True), ("unigram", True), ("bpe", False)])
def trained(request, tmp_path_factory):
    kind, dummy_prefix = request.param
    root = tmp_path_factory.mktemp(kind)
    train = root / "train.txt"
    train.write_text(english_ish(random.Random(2), 100_000), encoding="utf-8")
    cfg = TokenizerConfig(type=kind, vocab_size=400, add_dummy_prefix=dummy_prefix)
    tokenizer.train_tokenizer(train, root, cfg, seed=0)
    return spm.SentencePieceProcessor(model_file=str(root / "spm.model")), root


def test_chunked_encoding_equals_one_shot(trained):
    sp, root = trained
    rng = random.Random(3)
    odd_spacing = "  lead and   inner  spaces  \n"
    text = english_ish(rng, 30_000) + odd_spacing + " ".join(WORDS) * 3 + "\n" + "y" * 300 + " z"
    src = root / "src.txt"
    src.write_text(text, encoding="utf-8")
    dtype = np.dtype("<u2")
    # 64-byte chunks cut most lines at a space mid-line; the ids must not notice
    small = tokenizer.encode_file(sp, src, root / "small.bin", dtype, chunk_bytes=64, num_threads=2)
    big = tokenizer.encode_file(sp, src, root / "big.bin", dtype, chunk_bytes=1 << 30, num_threads=1)
    one_shot = [i for line in text.split("\n") for i in sp.encode(line) + [sp.eos_id()]]
    assert np.fromfile(root / "small.bin", dtype).tolist() == one_shot
    assert np.fromfile(root / "big.bin", dtype).tolist() == one_shot
    assert (small.tokens, small.lines, small.words) == (big.tokens, big.lines, big.words)
    assert small.words == len(text.split())
    assert tokenizer.decode_tokens(sp, one_shot) == text + "\n"  # lossless, with the dummy prefix or not


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "one",
        "  two words  ",
        "a\tb\nc",
        "nbsp\u00a0split",
        "ideo\u3000space",
        "x\u2028y\u0085z",
        "é — ü",
        "\x1c\x1d",
    ],
)
def test_count_words_matches_str_split(text):
    assert tokenizer.count_words(text) == len(text.split())


def test_long_lines_are_cut_within_the_byte_limit_without_breaking_characters():
    line = "word " * 100 + "é" * 300
    pieces = list(tokenizer._cut(line, 256))
    assert all(len(p.encode()) <= 256 for p in pieces)
    assert "".join(pieces).replace(" ", "") == line.replace(" ", "")
