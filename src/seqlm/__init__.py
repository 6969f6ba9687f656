"""seqlm: a reproducible pipeline for recurrent neural language models."""

__version__ = "0.1.0"
