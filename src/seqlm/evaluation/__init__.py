"""Language-model evaluation under the evaluation protocol (docs/architecture.md, decisions 3 and 6).

Owns ``metrics`` (bits per byte, the per-batch sums, stream totals, a split's metrics), the protocols
(``protocol``, the base; ``streamed``, ``episodic`` and ``cloze``, one each; ``protocols``, choosing one:
decision 23), ``ngram`` (the unigram and bigram yardsticks), ``probes`` (recall accuracy on a synthetic
probe corpus), ``diagnostics`` (context ablation, gradient flow, spectral radii, or why they do not apply)
``plots`` (their figures) and ``precision`` (scoring in the training precision where measured equal to
fp32). May import ``core``,
``config``, ``data`` and ``models`` only: opening the MLflow run, sampling text and writing the
reports belong to the evaluate stage (``seqlm.stages.evaluate``).
"""
