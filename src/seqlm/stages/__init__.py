"""The five DVC stages as ``run_<stage>(cfg, paths)``: orchestration only, each readable top to bottom.

``download``, ``tokenize``, ``train``, ``evaluate`` and ``register`` read their inputs, call the
library packages, and write their outputs atomically (decision 11 in docs/architecture.md); what each
reads and writes is listed in the stage contracts of docs/architecture.md and in dvc.yaml. A stage may
import any library package (core, config, data, models, tracking, training, evaluation, inference,
registry), never another stage, the study or the CLI, which is what calls it.
"""
