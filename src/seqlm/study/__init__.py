"""The sequence-model study (`seqlm study`, `make study`): the classic argument about sequence models put
to the test as queued DVC experiments (docs/architecture.md, decision 12), judged claim by claim in
docs/study.md. Owns ``plan`` (families, matched sizes, the experiments), ``queue`` (dvc's experiment
queue), ``collect`` (metrics, MLflow runs, the machine), ``shards`` and ``shard_records`` (the plan
across several machines), ``results`` (what one experiment measured), ``aggregate`` (seeds into cells,
the comparisons), ``stats`` (the tests and the correction), ``claims`` and ``probe_claims`` (the
verdicts), ``report`` (docs/study.md), ``limitations`` (its section on the literature), ``figures``
(docs/study/*.png) and ``commands`` (the orchestration and the `seqlm study` command). It is a top
layer: it may import ``seqlm.core``, ``seqlm.config``, ``seqlm.tracking``, ``seqlm.models`` and
``seqlm.data``, and nothing in seqlm imports it except ``seqlm.cli``.
"""
