"""Language-model evaluation under the evaluation protocol (docs/architecture.md, decisions 3 and 6).

Owns ``metrics`` (bits per byte, stream totals, a split's metrics), ``ngram`` (the unigram and bigram
yardsticks), ``probes`` (recall accuracy on a synthetic probe corpus), ``cloze`` (bits per blank and
accuracy at seeded blanks, decision 20), ``diagnostics`` (context ablation, gradient flow, spectral
radii) and ``plots`` (their figures). May import ``core``,
``config``, ``data`` and ``models`` only: opening the MLflow run, sampling text and writing the
reports belong to the evaluate stage (``seqlm.stages.evaluate``).
"""
