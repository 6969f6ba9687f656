"""The registered model: an MLflow pyfunc, logged as "models from code" (no pickled class).

MLflow copies this file into the model and runs it on load; ``set_model`` at the bottom names the
model object. The exported folder (weights.safetensors, config.json, spm.model) travels as the
artifact ``model_dir``. The seqlm package itself must be importable where the model is loaded
(``mlflow models serve --env-manager local`` from the project's environment); it is imported
inside the methods, and nothing in seqlm imports this file (that would run ``set_model``).

Input: a DataFrame with a ``prompt`` column. Params pick the task:

* ``task=generate``: column ``text``, a sampled continuation of each prompt;
* ``task=next_words``: column ``next_words``, per prompt a list of ``{"word", "probability"}``,
  most likely first.

Deliberately no ``from __future__ import annotations``: MLflow reads the ``pd.DataFrame`` hint on
``predict`` as a real type (a known type that it does not infer a schema from; the signature is given).
"""

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

ARTIFACT = "model_dir"
TASKS = ("generate", "next_words")


class SeqlmModel(PythonModel):
    def load_context(self, context) -> None:
        from seqlm.inference.generator import Generator

        self.generator = Generator.from_dir(context.artifacts[ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from seqlm.core.errors import SeqlmError

        try:
            return self._predict([str(x) for x in model_input["prompt"]], params)
        except SeqlmError as exc:  # a bad prompt or param: HTTP 400 from the scoring server, not 500
            raise MlflowException.invalid_parameter_value(str(exc)) from None

    def _predict(self, prompts: list[str], p: dict) -> pd.DataFrame:
        # MLflow fills every param the caller left out from the signature's ParamSchema defaults.
        if p["task"] == "generate":
            texts = [
                self.generator.generate(
                    prompt,
                    max_new_tokens=int(p["max_new_tokens"]),
                    temperature=float(p["temperature"]),
                    top_k=int(p["top_k"]),
                    top_p=float(p["top_p"]),
                    seed=int(p["seed"]),
                )
                for prompt in prompts
            ]
            return pd.DataFrame({"text": texts})
        if p["task"] == "next_words":
            rows = [
                [
                    {"word": word, "probability": float(prob)}
                    for word, prob in self.generator.next_words(prompt, int(p["k"]))
                ]
                for prompt in prompts
            ]
            return pd.DataFrame({"next_words": rows})
        raise MlflowException.invalid_parameter_value(
            f"task must be one of {' | '.join(TASKS)}, got {p['task']!r}"
        )


mlflow.models.set_model(SeqlmModel())
