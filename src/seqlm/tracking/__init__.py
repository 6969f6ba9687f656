"""MLflow tracking: where the store is, the pipeline's one run, lineage tags, batched step metrics.

Decision 7 in docs/architecture.md: one MLflow run per pipeline run. The train stage creates it and
records its id in ``models/run.json``; evaluate and register reopen it. DVC's JSON metrics are the
source of truth, MLflow mirrors them.

Owns ``store`` (tracking URI, reachability, client, experiment), ``run`` (``RunHandle``: the run's
client and id, which the stages pass instead of the pair), ``run_record`` (models/run.json),
``lineage`` (git and dvc.lock tags) and ``metrics`` (batched metric logging). May import ``core``
and ``config``; mlflow is imported inside functions, so importing this package stays cheap.
"""
