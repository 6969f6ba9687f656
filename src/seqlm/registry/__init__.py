"""The model registry: registering versions, the champion gate, serving, and finding a model to load.

Owns ``register`` (version tags, the logged pyfunc, finding and registering a version, applying the
gate), ``gate`` (scores, aliases; decide, gate, promote, rollback), ``history`` (the append-only
champion events), ``rescoring`` (a registered version's score on the current valid text), ``resolve``
(``models:/`` URIs to a local model folder, with a download cache keyed by weights sha256), ``pyfunc``
(the MLflow model, logged as code), ``use`` (`seqlm generate | predict | fill` from a model folder or a
``models:/`` URI), ``score`` and ``lines`` (`seqlm score` and the pyfunc's score task: decision 24)
and ``commands`` (`seqlm models | promote | rollback | serve`). May import ``core``, ``config``,
``data``, ``models``, ``tracking``, ``evaluation`` and ``inference`` (docs/architecture.md, decision 8).
"""
