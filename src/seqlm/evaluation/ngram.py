"""The n-gram yardsticks: add-one smoothed unigram and bigram models of the train tokens.

Every evaluation reports their bits per byte beside the model's, so a number is read against what
counting alone achieves on the same split (docs/architecture.md, decision 6).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# A dense V×V bigram count table up to this many cells (64 MB of int64, V ≤ 2896); sparse beyond.
DENSE_BIGRAM_CELLS = 1 << 23
NGRAM_CHUNK = 1 << 22  # tokens per numpy pass over a memmap


def _chunks(tokens: np.ndarray, overlap: int = 0) -> Iterator[np.ndarray]:
    """``tokens`` in int64 pieces of NGRAM_CHUNK (+ ``overlap`` tokens shared with the next piece)."""
    for i in range(0, max(len(tokens) - overlap, 0), NGRAM_CHUNK):
        yield np.asarray(tokens[i : i + NGRAM_CHUNK + overlap], dtype=np.int64)


class NgramBaselines:
    """Add-one (Laplace) smoothed unigram and bigram models of the train tokens.

    Counts come from chunked passes over the memmap. Bigram counts live in a dense V×V table when it
    is small (DENSE_BIGRAM_CELLS), else as sorted unique pair codes a·V+b with their counts, merged
    chunk by chunk: memory grows with the distinct pairs seen, never with the corpus.
    """

    def __init__(self, train: np.ndarray, vocab: int):
        self.vocab = vocab
        self.unigram = np.zeros(vocab, dtype=np.int64)
        self.rows = np.zeros(vocab, dtype=np.int64)  # pairs starting with each token
        self.dense = vocab * vocab <= DENSE_BIGRAM_CELLS
        self.pairs = np.zeros(vocab * vocab if self.dense else 0, dtype=np.int64)
        self.codes = np.zeros(0, dtype=np.int64)
        self.unigram[int(train[0])] += 1
        for chunk in _chunks(train, overlap=1):  # every pair once; its second tokens are tokens 1..N-1
            self.unigram += np.bincount(chunk[1:], minlength=vocab)
            self.rows += np.bincount(chunk[:-1], minlength=vocab)
            codes = chunk[:-1] * vocab + chunk[1:]
            if self.dense:
                self.pairs += np.bincount(codes, minlength=vocab * vocab)
            else:
                new, counts = np.unique(codes, return_counts=True)
                merged, where = np.unique(np.concatenate([self.codes, new]), return_inverse=True)
                weights = np.concatenate([self.pairs, counts])
                self.pairs, self.codes = np.bincount(where, weights=weights, minlength=len(merged)), merged
        self.unigram_logp = np.log2((self.unigram + 1) / (self.unigram.sum() + vocab))

    def _pair_counts(self, codes: np.ndarray) -> np.ndarray:
        if self.dense:
            return self.pairs[codes]
        at = np.minimum(np.searchsorted(self.codes, codes), len(self.codes) - 1)  # train has ≥ 1 pair
        return np.where(self.codes[at] == codes, self.pairs[at], 0)

    def bits(self, tokens: np.ndarray) -> dict[str, float]:
        """Total bits of ``tokens`` under each model (the bigram's first token falls back to the unigram)."""
        unigram_bits = bigram_bits = float(-self.unigram_logp[int(tokens[0])])
        for chunk in _chunks(tokens, overlap=1):
            unigram_bits -= float(self.unigram_logp[chunk[1:]].sum())
            prev, nxt = chunk[:-1], chunk[1:]
            counts = self._pair_counts(prev * self.vocab + nxt)
            bigram_bits -= float((np.log2(counts + 1.0) - np.log2(self.rows[prev] + float(self.vocab))).sum())
        return {"unigram_bits": unigram_bits, "bigram_bits": bigram_bits}
