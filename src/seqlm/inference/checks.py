"""Limits on what a caller may ask of the Generator; a violation is one line (``SeqlmError``)."""

from __future__ import annotations

from seqlm.core.errors import SeqlmError

MAX_PROMPT_CHARS = 10_000
MAX_NEW_TOKENS = 10_000
MAX_K = 100
# Sampling runs in float32: a temperature below 1e-6 (greedy already) overflows the scaled logits, one
# above 1e6 (uniform already) underflows them, and a top_p below 1e-6 rounds to 0: all three gave NaN
# probabilities and an unexplained error, from `seqlm generate` and from the served model alike.
TEMPERATURE_RANGE = (1e-6, 1e6)
MIN_TOP_P = 1e-6


def check_prompt(prompt: str) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise SeqlmError("the prompt is empty; give some text to continue")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise SeqlmError(f"the prompt has {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}")


def check_sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise SeqlmError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS:,}, got {max_new_tokens}")
    low, high = TEMPERATURE_RANGE
    if not (temperature == 0 or low <= temperature <= high):  # NaN fails both
        raise SeqlmError(
            f"temperature must be 0 (greedy) or between {low:g} and {high:g}, got {temperature!r}"
        )
    if top_k < 0:
        raise SeqlmError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not MIN_TOP_P <= top_p <= 1:
        raise SeqlmError(f"top_p must be between {MIN_TOP_P:g} and 1 (1 = off), got {top_p!r}")


def check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise SeqlmError(f"k must be between 1 and {MAX_K}, got {k}")
