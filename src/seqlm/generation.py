"""Sampling and next-word prediction from an exported model (``models/model/`` or a registry version).

A prompt is encoded exactly as the tokenize stage encoded training text (see ``data/tokenizer.py``: every
finished line is followed by eos; the prompt's last line is left open, so the model continues it), run
through the model once from a fresh state, and then tokens are drawn one at a time carrying the state.

Generated eos tokens come out as newlines, as ``decode_tokens`` reads them. A prompt that ends in one
space is encoded without it and the first token is drawn among word starts: sentencepiece writes the
space inside the next word's first piece ("▁river"), so a trailing "▁" piece is something the model
rarely saw in training (the "token healing" of guidance-ai/guidance, reduced to spaces).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import sys
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from seqlm.data.tokenizer import EOS_ID
from seqlm.errors import SeqlmError
from seqlm.paths import Paths

MAX_PROMPT_CHARS = 10_000
MAX_NEW_TOKENS = 10_000
MAX_K = 100
PROMPT_CHUNK_TOKENS = 2048  # one forward per chunk: bounds activation memory for long prompts
BEAM_PER_WORD = 4  # next_words keeps 4k partial words per step
MAX_WORD_PIECES = 8
MAX_WORD_CHARS = 24  # the depth limit under a char tokenizer, which spells every word out
SPACE = "▁"  # sentencepiece's word-boundary mark (U+2581)
REGISTRY_SCHEME = "models:/"


# ------------------------------------------------------------------------------------------ checks


def check_prompt(prompt: str) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise SeqlmError("the prompt is empty; give some text to continue")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise SeqlmError(f"the prompt has {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}")


def check_sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise SeqlmError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS:,}, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise SeqlmError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise SeqlmError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise SeqlmError(f"top_p must be in (0, 1] (1 = off), got {top_p}")


def check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise SeqlmError(f"k must be between 1 and {MAX_K}, got {k}")


# ------------------------------------------------------------------------------------------ text


@dataclass(frozen=True)
class Prompt:
    ids: list[int]  # the whole prompt under the line-end convention
    last_line: list[int]  # the open line the continuation goes on
    healed: bool  # a trailing space was taken off; the first token must start a word


def encode_prompt(sp, text: str, heal: bool = True) -> Prompt:
    """``text`` as the tokenize stage encodes it, except that its last line stays open (no eos)."""
    healed = heal and text.endswith(" ") and not text[:-1].endswith((" ", "\n"))
    if healed:
        text = text[:-1]
    # one list per line, each with its eos, as tokenizer._encoded_chunks encodes a block
    lines = sp.encode(text.split("\n"), add_eos=True)
    lines[-1] = lines[-1][:-1]
    return Prompt([i for line in lines for i in line], lines[-1], healed)


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or unicodedata.category(ch).startswith("M")


class _Detokenizer:
    """Generated ids to text pieces whose concatenation is ``decode_tokens`` of the ids, after the prompt.

    Sentencepiece strips the dummy-prefix space only at the start of what it decodes, and merges a run
    of byte pieces into characters, so each new token is decoded together with the ids since an anchor:
    the last ordinary piece whose text is already out (its own text, as decoded, is skipped). Trailing
    U+FFFD is held back: it may be a byte-fallback character whose remaining bytes are still to come.
    """

    def __init__(self, sp, prompt: Prompt):
        self.sp = sp
        ordinary = [i for i, t in enumerate(prompt.last_line) if not sp.IsByte(t)]
        self._anchor(prompt.last_line[ordinary[-1] if ordinary else 0 :])
        self.drop_space = prompt.healed  # the prompt already ends in the space the first word brings

    def _anchor(self, ids: list[int]) -> None:
        self.line, self.skip = list(ids), len(self.sp.decode(list(ids)))

    def _out(self, text: str) -> str:
        if self.drop_space and text:
            self.drop_space = False
            return text.removeprefix(" ")
        return text

    def add(self, token: int) -> str:
        if token == EOS_ID:  # lines are decoded one by one (decode_tokens): a new line starts from nothing
            out = self.flush() + "\n"
            self._anchor([])
            self.drop_space = False
            return out
        self.line.append(token)
        text = self.sp.decode(self.line)[self.skip :]
        stable = text.rstrip("\ufffd")
        self.skip += len(stable)
        if len(stable) == len(text) and not self.sp.IsByte(token):
            self._anchor([token])
        return self._out(stable)

    def flush(self) -> str:
        text = self.sp.decode(self.line)[self.skip :]
        self.skip += len(text)
        return self._out(text)


# ------------------------------------------------------------------------------------------ generator


class Generator:
    """An exported model with its tokenizer: ``generate``, ``stream`` and ``next_words``."""

    def __init__(
        self, model: torch.nn.Module, sp, config: dict | None = None, device: str | torch.device = "cpu"
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sp = sp
        self.config = config or {}
        self.vocab_size = model.config["vocab_size"]
        _check_vocab(sp.GetPieceSize(), self.vocab_size, "the model")
        self._masks()
        self.max_word_pieces = MAX_WORD_CHARS if _is_char_model(sp) else MAX_WORD_PIECES

    @classmethod
    def from_dir(cls, model_dir: str | Path, device: str = "cpu") -> "Generator":
        """Load weights (safetensors, no pickle), config.json and spm.model from an exported folder."""
        import sentencepiece as spm

        from seqlm.models import export

        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise SeqlmError(f"{model_dir}: no model folder there; run the train stage first or pass --model")
        config = export.read_config(model_dir)
        spm_path = model_dir / export.TOKENIZER
        if not spm_path.is_file():
            raise SeqlmError(f"{spm_path}: missing from the exported model; re-export with the train stage")
        try:
            sp = spm.SentencePieceProcessor(model_file=str(spm_path))
        except (OSError, RuntimeError) as exc:
            raise SeqlmError(f"{spm_path}: not a sentencepiece model ({str(exc).splitlines()[0]})") from None
        # checked before the weights load, whose shape errors would not say what is wrong
        _check_vocab(sp.GetPieceSize(), config["model"].get("vocab_size"), model_dir)
        model, config = export.load(model_dir, device)
        return cls(model, sp, config, device)

    def _masks(self) -> None:
        sp, n = self.sp, self.vocab_size
        pieces = [sp.id_to_piece(i) for i in range(n)]
        byte = [sp.IsByte(i) for i in range(n)]
        normal = [not (sp.IsControl(i) or sp.IsUnknown(i) or sp.IsUnused(i) or byte[i]) for i in range(n)]
        starts = [normal[i] and p.startswith(SPACE) for i, p in enumerate(pieces)]
        # inside a word: byte pieces and pieces that begin with a letter, digit or mark
        inside = [byte[i] or (normal[i] and _is_word_char(p[0])) for i, p in enumerate(pieces)]
        # a word's first piece: "▁" alone (the word's letters follow) or "▁" and a word character
        first = [s and (len(p) == 1 or _is_word_char(p[1])) for s, p in zip(starts, pieces)]

        def mask(values: list[bool]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.bool, device=self.device)

        eos = mask([i == EOS_ID for i in range(n)])
        self._sampleable = mask([a or b for a, b in zip(normal, byte)]) | eos  # never unk, bos, unused
        self._word_start_or_eos = mask(starts) | eos
        self._word_first = mask(first)
        self._word_inside = mask(inside)
        # after a word: a new word, punctuation or a line end; with _word_inside, every sampleable piece
        self._word_boundary = self._sampleable & ~self._word_inside

    # -- model
    @torch.inference_mode()
    def _prime(self, ids: list[int]):
        """Logits after the prompt [V] and the state, from a fresh state."""
        if not ids:
            raise SeqlmError("the prompt encodes to no tokens; give some text to continue")
        tokens, state = torch.tensor([ids], dtype=torch.long, device=self.device), None
        for chunk in tokens.split(PROMPT_CHUNK_TOKENS, dim=1):
            logits, state = self.model(chunk, state)
        return logits[0, -1].float(), state

    @torch.inference_mode()
    def _advance(self, tokens: torch.Tensor, state):
        """Feed one token per row [B]; logits [B, V] and the new state."""
        logits, state = self.model(tokens.view(-1, 1), state)
        return logits[:, -1].float(), state

    @torch.inference_mode()
    def _pick(self, logits, temperature, top_k, top_p, allowed, rng) -> torch.Tensor:
        logits = logits.masked_fill(~allowed, -math.inf)
        if temperature == 0:
            return logits.argmax()
        logits = logits / temperature
        if 0 < top_k < logits.numel():
            logits = logits.masked_fill(logits < logits.topk(top_k).values[-1], -math.inf)
        if top_p < 1:
            ordered, order = logits.sort(descending=True)
            probs = ordered.softmax(-1)
            # the smallest set of most likely tokens whose mass reaches top_p (the first is always kept)
            drop = probs.cumsum(-1) - probs >= top_p
            logits = logits.scatter(0, order, ordered.masked_fill(drop, -math.inf))
        return torch.multinomial(logits.softmax(-1), 1, generator=rng)[0]

    def _sample_ids(self, prompt: Prompt, max_new_tokens, temperature, top_k, top_p, seed) -> Iterator[int]:
        logits, state = self._prime(prompt.ids)
        rng = torch.Generator(device=self.device).manual_seed(seed)
        allowed = self._word_start_or_eos if prompt.healed else self._sampleable
        for step in range(max_new_tokens):
            token = self._pick(logits, temperature, top_k, top_p, allowed, rng)
            allowed = self._sampleable
            yield int(token)  # the one host sync per token: its text is streamed now
            if step + 1 < max_new_tokens:
                logits, state = self._advance(token, state)
                logits = logits[0]

    # -- public
    def stream(self, prompt: str, max_new_tokens: int = 100, temperature: float = 0.8, top_k: int = 50,
               top_p: float = 0.95, seed: int = 0) -> Iterator[str]:  # fmt: skip
        """Yield the continuation's text as tokens are drawn; ``"".join`` of it is ``generate``'s result."""
        check_prompt(prompt)  # here, not in the generator below, so bad input fails at the call
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        encoded = encode_prompt(self.sp, prompt)
        ids = self._sample_ids(encoded, max_new_tokens, temperature, top_k, top_p, seed)
        return self._stream(encoded, ids)

    def _stream(self, prompt: Prompt, ids: Iterator[int]) -> Iterator[str]:
        text = _Detokenizer(self.sp, prompt)
        for token in ids:
            if piece := text.add(token):
                yield piece
        if rest := text.flush():
            yield rest

    def generate(self, prompt: str, max_new_tokens: int = 100, temperature: float = 0.8, top_k: int = 50,
                 top_p: float = 0.95, seed: int = 0) -> str:  # fmt: skip
        """The continuation of ``prompt`` (without the prompt). The same seed gives the same text."""
        return "".join(self.stream(prompt, max_new_tokens, temperature, top_k, top_p, seed))

    def next_words(self, prompt: str, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most likely next words with their probabilities, most likely first.

        A word is a piece that starts with "▁" followed by pieces that do not (letters, digits, marks,
        bytes), up to a boundary: a new word, punctuation or a line end. Its probability is
        P(pieces) × P(boundary | pieces), the chance that exactly this word comes next, summed over the
        segmentations that decode to it; so the probabilities of all words sum to at most 1. Words are
        found by a beam search over pieces (``BEAM_PER_WORD``·k wide, ``MAX_WORD_PIECES`` deep,
        ``MAX_WORD_CHARS`` under a char tokenizer). The word
        after the prompt's last, possibly unfinished, word is predicted; trailing spaces are ignored.
        Punctuation ends a word, so "don't" comes out as "don".
        """
        check_prompt(prompt)
        check_k(k)
        log_probs = self._word_log_probs(encode_prompt(self.sp, prompt.rstrip(" "), heal=False).ids, k)
        ranked = sorted(log_probs.items(), key=lambda item: item[1], reverse=True)[:k]
        return [(word, math.exp(lp)) for word, lp in ranked]

    @torch.inference_mode()
    def _word_log_probs(self, ids: list[int], k: int) -> dict[str, float]:
        logits, state = self._prime(ids)
        first = logits.log_softmax(-1).masked_fill(~self._word_first, -math.inf)
        beam_lp, tokens = first.topk(min(BEAM_PER_WORD * k, int(self._word_first.sum())))
        beams = [[t] for t in tokens.tolist()]
        if not beams:
            return {}
        batch_dim = _state_batch_dim(self.model)
        state = _select_state(state, torch.zeros(len(beams), dtype=torch.long, device=self.device), batch_dim)
        words: dict[str, float] = {}
        for depth in range(self.max_word_pieces):
            logits, state = self._advance(tokens, state)
            log_probs = logits.log_softmax(-1)
            ends = beam_lp + log_probs.masked_fill(~self._word_boundary, -math.inf).logsumexp(-1)
            for pieces, end in zip(beams, ends.tolist()):
                word = self.sp.decode(pieces)
                if word and "\ufffd" not in word:  # not "▁" alone, not an unfinished byte sequence
                    words[word] = _log_add(words.get(word, -math.inf), end)
            if depth + 1 == self.max_word_pieces:
                break
            grown = (beam_lp[:, None] + log_probs.masked_fill(~self._word_inside, -math.inf)).flatten()
            beam_lp, flat = grown.topk(min(BEAM_PER_WORD * k, grown.numel()))
            alive = beam_lp.isfinite()
            if not alive.any():
                break
            beam_lp, flat = beam_lp[alive], flat[alive]
            parents, tokens = flat // self.vocab_size, flat % self.vocab_size
            beams = [beams[p] + [t] for p, t in zip(parents.tolist(), tokens.tolist())]
            state = _select_state(state, parents, batch_dim)
        return words


def _log_add(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi if lo == -math.inf else hi + math.log1p(math.exp(lo - hi))


def _check_vocab(tokenizer_size: int, model_size, where) -> None:
    if tokenizer_size != model_size:
        raise SeqlmError(
            f"{where}: the tokenizer has {tokenizer_size} pieces but the model's vocab_size is {model_size}; "
            "they do not belong together (re-export the model with the train stage)"
        )


def _is_char_model(sp) -> bool:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    return proto.trainer_spec.model_type == proto.trainer_spec.CHAR


def _state_batch_dim(model) -> int:
    """Which dimension of the (opaque) state is the batch: the one that grows with ``init_state``'s size."""
    one, two = model.init_state(1), model.init_state(2)
    one, two = (one[0], two[0]) if isinstance(one, tuple) else (one, two)
    return next(d for d in range(one.dim()) if one.shape[d] != two.shape[d])


def _select_state(state, rows: torch.Tensor, dim: int):
    if isinstance(state, tuple):
        return tuple(s.index_select(dim, rows) for s in state)
    return state.index_select(dim, rows)


# ------------------------------------------------------------------------------------------ model location


def resolve_model_dir(spec: str | Path) -> Path:
    """An exported model folder, or ``models:/<name>@<alias>`` / ``models:/<name>/<version>`` downloaded.

    A relative folder is looked up from the current directory, then from the project root (SEQLM_ROOT).
    """
    spec = str(spec)
    if spec.startswith(REGISTRY_SCHEME):
        return _download(spec)
    path = Path(spec).expanduser()
    if not path.is_absolute() and not path.exists():
        path = Paths.from_env().root / path
    if not path.is_dir():
        raise SeqlmError(f"{spec}: no model folder there; run the train stage first or pass --model")
    return path


def find_model_dir(root: Path) -> Path:
    """The folder under ``root`` holding an exported model (the registry's pyfunc: artifacts/model_dir/)."""
    from seqlm.models import export

    found = sorted(p.parent for p in Path(root).rglob(export.CONFIG) if (p.parent / export.WEIGHTS).is_file())
    if not found:
        raise SeqlmError(
            f"{root}: the downloaded model holds no {export.CONFIG} + {export.WEIGHTS}; "
            "was it registered by seqlm?"
        )
    return min(found, key=lambda p: len(p.parts))


def _registry_version(client, uri: str) -> tuple[str, str]:
    rest = uri.removeprefix(REGISTRY_SCHEME).strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = rest.rpartition("/")
    if not name or not version.isdigit():
        raise SeqlmError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    client.get_model_version(name, version)  # fails here, with the registry's message, if it is unknown
    return name, version


def _download(uri: str) -> Path:
    """Fetch a registered version once into ~/.cache/seqlm/models/ (versions never change; aliases move)."""
    from seqlm import tracking

    store = tracking.tracking_uri(Paths.from_env())
    if store.startswith("sqlite:///") and not Path(store.removeprefix("sqlite:///")).is_file():
        raise SeqlmError(
            f"{uri}: no MLflow store at {store.removeprefix('sqlite:///')}; run the register stage first, "
            "set MLFLOW_TRACKING_URI or pass a model folder"
        )
    tracking.check_reachable(store)
    import mlflow

    try:
        client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
        name, version = _registry_version(client, uri)
        cache = _cache_root() / hashlib.sha256(store.encode()).hexdigest()[:12] / name / version
        if not cache.is_dir():
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".download-"))
            try:
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{REGISTRY_SCHEME}{name}/{version}",
                    dst_path=str(tmp),
                    tracking_uri=store,
                    registry_uri=store,
                )
                try:
                    tmp.rename(cache)
                except OSError:  # another process got there first
                    if not cache.is_dir():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except mlflow.exceptions.MlflowException as exc:
        message = (str(exc.message).strip().splitlines() or ["unknown error"])[0]
        raise SeqlmError(f"{uri}: {message}") from None
    return find_model_dir(cache)


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seqlm" / "models"


# ------------------------------------------------------------------------------------------ CLI


def cli_generate(args) -> None:
    check_prompt(args.prompt)
    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    generator = Generator.from_dir(resolve_model_dir(args.model))
    for piece in generator.stream(
        args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed
    ):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()


def cli_predict(args) -> None:
    check_prompt(args.text)
    check_k(args.k)
    generator = Generator.from_dir(resolve_model_dir(args.model))
    for word, prob in generator.next_words(args.text, args.k):
        print(f"{word}\t{prob:.4f}")
