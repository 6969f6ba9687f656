"""The model registry: registering versions, the champion gate, serving, and finding a model to load.

Owns ``register`` (version tags, the logged pyfunc, finding and registering a version, applying the
gate), ``gate`` (scores, aliases, champion history; decide, gate, promote, rollback), ``rescoring``
(a registered version's score on the current test text), ``resolve`` (``models:/`` URIs to a local
model folder, with a download cache), ``pyfunc`` (the MLflow model, logged as code) and ``commands``
(`seqlm generate | predict | models | promote | rollback | serve`). May import ``core``, ``config``,
``data``, ``models``, ``tracking``, ``evaluation`` and ``inference`` (docs/architecture.md, decision 8).
"""
