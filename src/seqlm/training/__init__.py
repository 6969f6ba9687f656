"""Training: what Lightning runs around a plain model, and how a run is set up, resumed and stopped.

Owns ``lightning_module`` (loss, carried state for truncated BPTT, optimiser, schedule, clipping statistics),
``datamodule`` (the token streams handed to Lightning), ``callbacks`` (step metrics, best weights, periodic
checkpoints), ``device`` (device and precision choice, decision 5 in docs/architecture.md), ``resume`` (the
checkpoint's fingerprint, decision 9), ``planner`` (``train.plan: auto``: the budget's expected epochs
choose the regularisation, decision 21), ``cloze`` (the cloze objective's loss, decision 20) and ``trainer``
(the Trainer and its budgets). May import ``seqlm.core``, ``seqlm.config``, ``seqlm.data``, ``seqlm.models``,
``seqlm.tracking`` and ``seqlm.evaluation.metrics`` (the one bits-per-byte definition); never the registry,
the stages or the study.
"""
