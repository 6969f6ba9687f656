"""The registered model: an MLflow pyfunc, logged as "models from code" (no pickled class).

MLflow copies this file into the model and runs it on load; ``set_model`` at the bottom names the
model object. The exported folder (weights.safetensors, config.json, spm.model) travels as the
artifact ``model_dir``, and the seqlm package as the model's code (``code/seqlm``, which MLflow puts
first on ``sys.path``); seqlm is imported inside the methods, and nothing in seqlm imports this file
(that would run ``set_model``).

Input: a DataFrame with a ``prompt`` column. Params pick the task:

* ``task=generate``: column ``text``, a sampled continuation of each prompt;
* ``task=next_words``: column ``next_words``, per prompt a list of ``{"word", "probability"}``,
  most likely first;
* ``task=score``: columns ``tokens``, ``bytes``, ``log_prob_nats`` and ``bits_per_byte``, each prompt
  scored on its own from a fresh state as `seqlm score` scores a line (``seqlm.registry.score``).

Each request is bounded as a whole, not only per prompt: its work (rows × new tokens; for next_words
rows × the search's depth × its width, 4·k) and the prompts' total characters. Input is the one column
``prompt`` of strings; anything else (another column, a null, a number, an out-of-range param) is HTTP 400
with the reason, never a 500 or a silently stringified prompt.

Deliberately no ``from __future__ import annotations``: MLflow reads the ``pd.DataFrame`` hint on
``predict`` as a real type (a known type that it does not infer a schema from; the signature is given).
"""

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

ARTIFACT = "model_dir"
TASKS = ("generate", "next_words", "score")
# One request's work: rows × new tokens. 100,000 sampled tokens is about a minute of one CPU core for
# the small models seqlm trains; more would hold a scoring worker (and every request behind it) longer.
MAX_TOKENS_PER_REQUEST = 100_000
MAX_PROMPT_CHARS_PER_REQUEST = 1_000_000  # the prompts are encoded and run through the model too
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit seed
SHOWN_CHARS = 40  # a bad value is quoted in the error up to this many characters


class SeqlmModel(PythonModel):
    def load_context(self, context) -> None:
        from seqlm.inference.generator import Generator
        from seqlm.registry.score import Scorer

        self.generator = Generator.from_dir(context.artifacts[ARTIFACT])
        self.scorer = Scorer(self.generator.model, self.generator.sp, self.generator.device)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from seqlm.core.errors import SeqlmError

        try:
            return self._predict(_prompts(model_input), params)
        except SeqlmError as exc:  # a bad prompt or param: HTTP 400 from the scoring server, not 500
            raise MlflowException.invalid_parameter_value(str(exc)) from None

    def _predict(self, prompts: list[str], p: dict) -> pd.DataFrame:
        from seqlm.core.errors import SeqlmError
        from seqlm.inference.checks import check_k, check_sampling
        from seqlm.inference.words import BEAM_PER_WORD

        # MLflow fills every param the caller left out from the signature's ParamSchema defaults.
        if p["task"] not in TASKS:
            raise SeqlmError(f"task must be one of {' | '.join(TASKS)}, got {_shown(p['task'])}")
        chars = sum(len(prompt) for prompt in prompts)
        if chars > MAX_PROMPT_CHARS_PER_REQUEST:
            raise SeqlmError(
                f"the request's prompts have {chars:,} characters in all; the limit is "
                f"{MAX_PROMPT_CHARS_PER_REQUEST:,}: send fewer or shorter prompts per request"
            )
        if p["task"] == "score":
            return _scores(self.scorer.score(prompts))
        if p["task"] == "generate":
            seed, new = _integer(p, "seed"), _integer(p, "max_new_tokens")
            if not 0 <= seed <= MAX_SEED:
                raise SeqlmError(f"seed must be an integer between 0 and {MAX_SEED}, got {_shown(seed)}")
            check_sampling(new, _real(p, "temperature"), _integer(p, "top_k"), _real(p, "top_p"))
            _check_work(len(prompts), new, "max_new_tokens")
            texts = [
                self.generator.generate(
                    prompt,
                    max_new_tokens=new,
                    temperature=float(p["temperature"]),
                    top_k=_integer(p, "top_k"),
                    top_p=float(p["top_p"]),
                    seed=seed,
                )
                for prompt in prompts
            ]
            return pd.DataFrame({"text": texts})
        k = _integer(p, "k")
        check_k(k)
        # the search runs BEAM_PER_WORD·k partial words one piece at a time, up to the model's word depth
        depth, width = self.generator.max_word_pieces, BEAM_PER_WORD * k
        search = f"next-word search {depth} pieces deep × {width} wide for k={k}"
        _check_work(len(prompts), depth * width, search, "send fewer prompts or a smaller k")
        rows = [
            [
                {"word": word, "probability": float(prob)}
                for word, prob in self.generator.next_words(prompt, k)
            ]
            for prompt in prompts
        ]
        return pd.DataFrame({"next_words": rows})


def _scores(scores: list) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tokens": [s.tokens for s in scores],
            "bytes": [s.bytes for s in scores],
            "log_prob_nats": [-s.nll for s in scores],
            "bits_per_byte": [s.bits_per_byte for s in scores],
        }
    )


def _integer(params: dict, key: str) -> int:
    import numbers

    from seqlm.core.errors import SeqlmError

    value = params[key]  # MLflow has converted it to the signature's type (long) where it could
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SeqlmError(f"{key} must be an integer, got {_shown(value)}")
    return int(value)


def _real(params: dict, key: str) -> float:
    import numbers

    from seqlm.core.errors import SeqlmError

    value = params[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SeqlmError(f"{key} must be a number, got {_shown(value)}")
    return float(value)


def _check_work(
    rows: int, tokens_per_row: int, what: str, remedy: str = "send fewer prompts or fewer tokens"
) -> None:
    from seqlm.core.errors import SeqlmError

    if rows * tokens_per_row > MAX_TOKENS_PER_REQUEST:
        raise SeqlmError(
            f"{rows:,} prompts × {tokens_per_row:,} ({what}) = {rows * tokens_per_row:,} tokens of work; "
            f"the limit per request is {MAX_TOKENS_PER_REQUEST:,}: {remedy}"
        )


def _prompts(frame) -> list[str]:
    """The request's prompts: the one column ``prompt``, a string in every row."""
    from seqlm.core.errors import SeqlmError

    extra = [str(column) for column in frame.columns if column != "prompt"]
    if extra or "prompt" not in frame.columns:
        got = f"got column {_shown(extra[0])}" if extra else "got no columns"
        raise SeqlmError(f"send one column, prompt (a string per row); {got}")
    prompts = list(frame["prompt"])
    for row, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise SeqlmError(f"prompt in row {row} must be a string, got {_shown(prompt)}")
    return prompts


def _shown(value) -> str:
    """``repr(value)``, cut short: an error names the bad value without echoing a whole request back."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}… ({len(text):,} characters)"


mlflow.models.set_model(SeqlmModel())
