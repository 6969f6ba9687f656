"""The evaluate stage's samples.md: continuations of ``evaluate.prompts``, next words of ``cloze_prompts``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from seqlm.inference.generator import Generator

if TYPE_CHECKING:
    from seqlm.config import EvaluateConfig


def samples_markdown(generator: Generator, ev: EvaluateConfig, seed: int) -> str:
    """Samples for ``ev.prompts`` (prompt + continuation), top-5 next words for ``ev.cloze_prompts``."""
    lines = [
        "# Samples",
        "",
        f"temperature {ev.temperature:g}, top_k {ev.top_k}, top_p {ev.top_p:g}, {ev.sample_tokens} tokens, "
        f"seed {seed}",
        "",
        "## Generated text",
    ]
    for prompt in ev.prompts:
        sample = generator.generate(prompt, ev.sample_tokens, ev.temperature, ev.top_k, ev.top_p, seed)
        text = prompt + sample
        fence = "~~~~" if "```" in text else "```"  # verbatim: generated text may hold markdown
        lines += ["", f"### {prompt}", "", fence + "text", text.rstrip("\n"), fence]
    lines += ["", "## Next-word predictions"]
    for prompt in ev.cloze_prompts:
        lines += ["", f"### {prompt} …", "", "| rank | word | probability |", "| ---: | --- | ---: |"]
        for rank, (word, prob) in enumerate(generator.next_words(prompt, k=5), 1):
            lines.append(f"| {rank} | {_cell(word)} | {prob:.4f} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`" if text.strip() else "(line end)"


def fill_markdown(filler, ev: EvaluateConfig) -> str:
    """A cloze model's samples: the top-5 words for a blank after each of ``ev.cloze_prompts``."""
    lines = [
        "# Samples",
        "",
        "A cloze model (train.objective: cloze) fills blanks and does not continue text, so there is no",
        "generated text; these are its best words for a blank that ends each of `evaluate.cloze_prompts`",
        "(`seqlm fill`).",
        "",
        "## Blank predictions",
    ]
    for prompt in ev.cloze_prompts:
        text = f"{prompt.rstrip()} ___"
        lines += ["", f"### {text}", "", "| rank | word | PLL probability |", "| ---: | --- | ---: |"]
        for rank, word, log_prob in filler.fill(text, top=5):
            lines.append(f"| {rank} | {_cell(word)} | {math.exp(log_prob):.4f} |")
    return "\n".join(lines) + "\n"
