"""params.yaml, parsed once into typed, frozen objects (DESIGN decision 1).

Every key has a rule; an unknown key, a wrong type or an out-of-range value stops with one line:
``params.yaml: tokenizer.vocab_size must be an integer ≥ 32, got "8k"``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from seqlm.errors import SeqlmError

# --------------------------------------------------------------------------------------------- rules


class _Invalid(ValueError):
    """Raised by a rule; the message completes "<key> must be ..."."""


@dataclass(frozen=True)
class Int:
    min: int | None = None
    max: int | None = None
    note: str = ""

    def check(self, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or (self.min is not None and v < self.min) or (
            self.max is not None and v > self.max
        ):
            raise _Invalid(self.describe())
        return v

    def describe(self) -> str:
        bounds = [f"≥ {self.min}" if self.min is not None else "", f"≤ {self.max}" if self.max is not None else ""]
        text = "an integer " + " and ".join(b for b in bounds if b)
        return (text.strip() + (f" ({self.note})" if self.note else "")).strip()


@dataclass(frozen=True)
class Float:
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    note: str = ""

    def check(self, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _Invalid(self.describe())
        if self.min is not None and (v < self.min or (self.min_exclusive and v == self.min)):
            raise _Invalid(self.describe())
        if self.max is not None and (v > self.max or (self.max_exclusive and v == self.max)):
            raise _Invalid(self.describe())
        return float(v)

    def describe(self) -> str:
        bounds = []
        if self.min is not None:
            bounds.append(f"{'>' if self.min_exclusive else '≥'} {self.min:g}")
        if self.max is not None:
            bounds.append(f"{'<' if self.max_exclusive else '≤'} {self.max:g}")
        text = "a number " + " and ".join(bounds)
        return (text.strip() + (f" ({self.note})" if self.note else "")).strip()


@dataclass(frozen=True)
class Bool:
    def check(self, v: Any) -> bool:
        if not isinstance(v, bool):
            raise _Invalid(self.describe())
        return v

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]

    def check(self, v: Any) -> str:
        if v not in self.options:
            raise _Invalid(self.describe())
        return v

    def describe(self) -> str:
        return "one of " + " | ".join(self.options)


@dataclass(frozen=True)
class Str:
    pattern: str = r".+"
    what: str = "a non-empty string"

    def check(self, v: Any) -> str:
        if not isinstance(v, str) or not re.fullmatch(self.pattern, v, flags=re.DOTALL):
            raise _Invalid(self.describe())
        return v

    def describe(self) -> str:
        return self.what


@dataclass(frozen=True)
class IntOrAuto:
    min: int = 1

    def check(self, v: Any) -> int | str:
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int) or v < self.min:
            raise _Invalid(self.describe())
        return v

    def describe(self) -> str:
        return f'"auto" or an integer ≥ {self.min}'


@dataclass(frozen=True)
class List:
    item: Any
    length: int | None = None
    min_length: int = 0

    def check(self, v: Any) -> tuple:
        if not isinstance(v, list) or (self.length is not None and len(v) != self.length) or len(v) < self.min_length:
            raise _Invalid(self.describe())
        return tuple(self.item.check(x) for x in v)

    def describe(self) -> str:
        size = f"{self.length} " if self.length is not None else ""
        at_least = f" (at least {self.min_length})" if self.min_length else ""
        return f"a list of {size}items{at_least}, each {self.item.describe()}"


def param(default: Any, rule: Any) -> Any:
    return field(default=default, metadata={"rule": rule})


# ------------------------------------------------------------------------------------------ sections

SOURCE_KINDS = ("builtin:", "hf:", "files:", "url:", "synthetic:")
PRECISIONS = (
    "auto", "32-true", "32", "64-true", "64", "16-mixed", "16", "bf16-mixed", "bf16",
    "16-true", "bf16-true", "transformer-engine", "transformer-engine-float16",
)  # fmt: skip


@dataclass(frozen=True)
class BaseConfig:
    seed: int = param(1337, Int(min=0))
    experiment: str = param("seqlm", Str(what="a non-empty MLflow experiment name"))


@dataclass(frozen=True)
class DataConfig:
    source: str = param("builtin:kjv", Str(r"(builtin|hf|files|url|synthetic):.+", "one of builtin:<name> | hf:<dataset>[:<config>] | files:<path or glob> | url:<https URL> | synthetic:copy | synthetic:brackets"))
    sha256: str = param("", Str(r"([0-9a-fA-F]{64})?", "empty or 64 hex digits"))
    split: tuple = param((0.9, 0.05, 0.05), List(Float(min=0, max=1, min_exclusive=True), length=3))
    on_decode_error: str = param("strict", Choice(("strict", "replace")))
    text_column: str = param("text", Str())
    delay: int = param(50, Int(min=1))
    synthetic_symbols: int = param(1_000_000, Int(min=1000))


@dataclass(frozen=True)
class TokenizerConfig:
    type: str = param("bpe", Choice(("bpe", "unigram", "char")))
    vocab_size: int = param(2000, Int(min=32))
    character_coverage: float = param(1.0, Float(min=0.5, max=1.0))
    byte_fallback: bool = param(True, Bool())
    input_sentence_size: int = param(2_000_000, Int(min=0, note="0 means every line"))
    max_sentence_length: int = param(16384, Int(min=256, max=1 << 20))


@dataclass(frozen=True)
class ModelConfig:
    family: str = param("lstm", Choice(("lstm", "gru", "rnn", "ffn_window", "bow")))
    embedding_size: int = param(256, Int(min=1))
    hidden_size: int = param(256, Int(min=1))
    num_layers: int = param(1, Int(min=1))
    dropout: float = param(0.1, Float(min=0, max=1, max_exclusive=True))
    tie_weights: bool = param(True, Bool())
    nonlinearity: str = param("tanh", Choice(("tanh", "relu")))
    recurrent_init: str = param("default", Choice(("default", "orthogonal", "identity")))
    forget_bias: float = param(0.0, Float())
    window: int = param(8, Int(min=1))
    bidirectional: bool = param(False, Bool())


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = param(32, Int(min=1))
    bptt: int = param(64, Int(min=2))
    variable_bptt: bool = param(False, Bool())
    optimizer: str = param("adamw", Choice(("adamw", "sgd")))
    lr: float = param(3e-3, Float(min=0, min_exclusive=True))
    weight_decay: float = param(0.01, Float(min=0))
    warmup_steps: int = param(100, Int(min=0))
    schedule: str = param("cosine", Choice(("cosine", "plateau", "constant")))
    grad_clip: float = param(0.5, Float(min=0, note="0 disables clipping"))
    max_epochs: int = param(20, Int(min=1))
    max_steps: int = param(2500, Int(min=0, note="0 means no limit"))
    max_minutes: float = param(6.0, Float(min=0, note="0 means no limit"))
    early_stopping_patience: int = param(3, Int(min=0, note="0 disables early stopping"))
    val_every_steps: int = param(250, Int(min=0, note="0 means once per epoch"))
    precision: str = param("auto", Choice(PRECISIONS))
    accelerator: str = param("auto", Choice(("auto", "cpu", "gpu", "cuda", "mps")))
    devices: Any = param("auto", IntOrAuto())
    strategy: str = param("auto", Str())
    num_nodes: int = param(1, Int(min=1))
    checkpoint_every_minutes: float = param(2.0, Float(min=0, min_exclusive=True))
    log_every_steps: int = param(10, Int(min=1))


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = param(8, Int(min=1))
    bptt: int = param(128, Int(min=1))
    context_resets: tuple = param((1, 4, 16, 64, 256), List(Int(min=1), min_length=1))
    gradient_flow_steps: int = param(128, Int(min=2))
    prompts: tuple = param(("In the beginning", "And the LORD said unto Moses"), List(Str(), min_length=1))
    cloze_prompts: tuple = param(("Every night, I take my dog for a", "And God said, Let there be"), List(Str(), min_length=1))
    sample_tokens: int = param(60, Int(min=1, max=10_000))
    temperature: float = param(0.8, Float(min=0))
    top_k: int = param(50, Int(min=0, note="0 disables"))
    top_p: float = param(0.95, Float(min=0, max=1, min_exclusive=True))


@dataclass(frozen=True)
class RegistryConfig:
    model_name: str = param("seqlm", Str(r"[A-Za-z0-9_.\-]+", "a name of letters, digits, '.', '_' or '-'"))
    min_improvement: float = param(0.01, Float(min=0, max=1, max_exclusive=True))
    auto_promote: bool = param(True, Bool())


SECTIONS: dict[str, type] = {
    "base": BaseConfig,
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "registry": RegistryConfig,
}


@dataclass(frozen=True)
class Config:
    base: BaseConfig = field(default_factory=BaseConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)

    def flat(self) -> dict[str, Any]:
        """``{"model.hidden_size": 256, ...}``: for MLflow params and hashes."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            for f in fields(section):
                value = getattr(section, f.name)
                out[f"{name}.{f.name}"] = list(value) if isinstance(value, tuple) else value
        return out

    def section_hash(self, *names: str) -> str:
        """A stable digest of the named sections (or keys ``section.key``), e.g. to decide resume."""
        import hashlib

        flat = self.flat()
        picked = {k: v for k, v in flat.items() if any(k == n or k.startswith(n + ".") for n in names)}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- parsing


def _fmt(v: Any) -> str:
    try:
        return json.dumps(v, ensure_ascii=False)
    except TypeError:
        return repr(v)


def _parse_section(name: str, cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SeqlmError(f"{where}: {name} must be a mapping of keys to values, got {_fmt(raw)}")
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise SeqlmError(
                f"{where}: {name}.{key} is not a known key; {name} takes {', '.join(known)}"
            )
        try:
            values[key] = known[key].metadata["rule"].check(value)
        except _Invalid as exc:
            raise SeqlmError(f"{where}: {name}.{key} must be {exc}, got {_fmt(value)}") from None
    return cls(**values)


def _cross_checks(cfg: Config, where: str) -> None:
    total = sum(cfg.data.split)
    if abs(total - 1.0) > 1e-6:
        raise SeqlmError(
            f"{where}: data.split must be train, valid and test fractions that sum to 1, "
            f"got {_fmt(list(cfg.data.split))} (sum {total:g})"
        )
    if cfg.data.source.startswith("url:"):
        if not cfg.data.source.startswith(("url:https://", "url:http://")):
            raise SeqlmError(f"{where}: data.source url: must be an http(s) URL, got {_fmt(cfg.data.source)}")
        if not cfg.data.sha256:
            raise SeqlmError(
                f"{where}: data.sha256 is required with data.source url: (64 hex digits of the file's "
                "SHA-256, e.g. from `sha256sum`), got \"\""
            )
    if cfg.model.bidirectional:
        raise SeqlmError(
            f"{where}: model.bidirectional must be false: a bidirectional RNN reads the tokens it is "
            "asked to predict, so it cannot be trained as a next-token language model"
        )
    if cfg.model.recurrent_init != "default" and cfg.model.family in ("ffn_window", "bow"):
        raise SeqlmError(
            f"{where}: model.recurrent_init must be default for model.family {cfg.model.family} "
            f"(it has no recurrent weights), got {_fmt(cfg.model.recurrent_init)}"
        )
    if cfg.model.recurrent_init == "identity" and cfg.model.family != "rnn":
        raise SeqlmError(
            f"{where}: model.recurrent_init: identity applies to model.family: rnn (the IRNN of Le et al., "
            f"2015), got family {_fmt(cfg.model.family)}"
        )


def parse(raw: Any, where: str = "params.yaml") -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SeqlmError(f"{where}: expected a mapping of sections ({', '.join(SECTIONS)}), got {_fmt(raw)}")
    for name in raw:
        if name not in SECTIONS:
            raise SeqlmError(f"{where}: {name} is not a known section; sections are {', '.join(SECTIONS)}")
    cfg = Config(**{name: _parse_section(name, cls, raw.get(name), where) for name, cls in SECTIONS.items()})
    _cross_checks(cfg, where)
    return cfg


def load(path: Path) -> Config:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SeqlmError(f"{path}: not found; run from the project root (the folder with params.yaml and dvc.yaml)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise SeqlmError(f"{path.name}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    return parse(raw, where=path.name)
