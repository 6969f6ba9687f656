"""Prompts in, text out: a prompt encoded as the tokenize stage encodes text, and ids decoded as they come.

A prompt is encoded exactly as the tokenize stage encoded training text (``seqlm.data.tokenizer``:
every finished line is followed by eos; the prompt's last line is left open, so the model continues
it). Generated eos tokens come out as newlines, as ``decode_tokens`` reads them.

A prompt that ends in one space is encoded without it and the first token is drawn among word starts:
sentencepiece writes the space inside the next word's first piece ("▁river"), so a trailing "▁" piece
is something the model rarely saw in training (the "token healing" of guidance-ai/guidance, reduced to
spaces).
"""

from __future__ import annotations

from dataclasses import dataclass

from seqlm.data.tokenizer import EOS_ID


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


class Detokenizer:
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
