"""The registered model: an MLflow pyfunc, logged as "models from code" (no pickled class).

MLflow copies this file into the model and runs it on load; ``set_model`` at the bottom names the
model object. The exported folder (weights.safetensors, config.json, spm.model) travels as the
artifact ``model_dir``. The seqlm package itself must be importable where the model is loaded
(``mlflow models serve --env-manager local`` from the project's environment); it is imported
inside the methods, and nothing in seqlm imports this file (that would run ``set_model``).

Input: a DataFrame with a ``prompt`` column. Params pick the task:

* ``task=generate``: column ``text``, a sampled continuation of each prompt;
* ``task=next_words``: column ``next_words``, per prompt a list of ``{"word", "probability"}``,
  most likely first;
* ``task=score``: columns ``tokens``, ``bytes``, ``log_prob_nats`` and ``bits_per_byte``, each prompt
  scored on its own from a fresh state as `seqlm score` scores a line (``seqlm.registry.score``).

Each request is bounded as a whole, not only per prompt: rows × new tokens and the prompts' total
characters (a violation is HTTP 400 with the reason, like a bad ``task`` or ``seed``).

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


class SeqlmModel(PythonModel):
    def load_context(self, context) -> None:
        from seqlm.inference.generator import Generator
        from seqlm.registry.score import Scorer

        self.generator = Generator.from_dir(context.artifacts[ARTIFACT])
        self.scorer = Scorer(self.generator.model, self.generator.sp, self.generator.device)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from seqlm.core.errors import SeqlmError

        try:
            return self._predict([str(x) for x in model_input["prompt"]], params)
        except SeqlmError as exc:  # a bad prompt or param: HTTP 400 from the scoring server, not 500
            raise MlflowException.invalid_parameter_value(str(exc)) from None

    def _predict(self, prompts: list[str], p: dict) -> pd.DataFrame:
        from seqlm.core.errors import SeqlmError
        from seqlm.inference.words import MAX_WORD_CHARS, MAX_WORD_PIECES

        # MLflow fills every param the caller left out from the signature's ParamSchema defaults.
        if p["task"] not in TASKS:
            raise SeqlmError(f"task must be one of {' | '.join(TASKS)}, got {p['task']!r}")
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
                raise SeqlmError(f"seed must be an integer between 0 and {MAX_SEED}, got {p['seed']!r}")
            _check_work(len(prompts), new, "max_new_tokens")
            texts = [
                self.generator.generate(
                    prompt,
                    max_new_tokens=new,
                    temperature=float(p["temperature"]),
                    top_k=int(p["top_k"]),
                    top_p=float(p["top_p"]),
                    seed=seed,
                )
                for prompt in prompts
            ]
            return pd.DataFrame({"text": texts})
        k = _integer(p, "k")
        _check_work(len(prompts), max(MAX_WORD_PIECES, MAX_WORD_CHARS), "next-word search depth")
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
        raise SeqlmError(f"{key} must be an integer, got {value!r}")
    return int(value)


def _check_work(rows: int, tokens_per_row: int, what: str) -> None:
    from seqlm.core.errors import SeqlmError

    if rows * tokens_per_row > MAX_TOKENS_PER_REQUEST:
        raise SeqlmError(
            f"{rows:,} prompts × {tokens_per_row:,} ({what}) = {rows * tokens_per_row:,} tokens of work; "
            f"the limit per request is {MAX_TOKENS_PER_REQUEST:,}: send fewer prompts or fewer tokens"
        )


mlflow.models.set_model(SeqlmModel())
