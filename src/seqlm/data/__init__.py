"""Text in, tokens out: corpus sources, normalising and splitting, the tokenizer, the token arrays.

Owns ``units`` (the shape of a resolved source), ``sources`` (builtin, files and url sources), ``hf``
(Hugging Face datasets), ``fetch`` (capped https downloads), ``synthetic`` (the copy, brackets and
adding probes), ``corpus`` (normalising and splitting text), ``tokenizer`` (sentencepiece: training,
encoding, decoding), ``tokens`` (token arrays on disk read as parallel streams for truncated BPTT),
``episodes`` (the same arrays read as independent episodes, one per line) and ``cloze`` (the cloze
objective's seeded blanks).
May import ``seqlm.core`` and ``seqlm.config`` only; the download and tokenize stages in
``seqlm.stages`` call it.
"""
