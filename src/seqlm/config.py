"""params.yaml, parsed once into typed, frozen pydantic models (decision 1 in docs/architecture.md).

Every key has a type and constraints; an unknown key, a wrong type or an out-of-range value stops with one
line: ``params.yaml: tokenizer.vocab_size must be an integer ≥ 32, got "8k"``.
"""

from __future__ import annotations

import hashlib
import json
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from seqlm.core.errors import SeqlmError
from seqlm.core.paths import PARAMS
from seqlm.core.redact import redact_url, url_credential

# YAML gives lists, strict mode takes only tuples, and tuples keep the frozen models hashable.
_FromList = BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)
# YAML 1.1 reads a bare `off` as false
_OffIsFalse = BeforeValidator(lambda v: "off" if v is False else v)
Fraction = Annotated[float, Field(gt=0, le=1)]
PositiveInt = Annotated[int, Field(ge=1)]
NonEmptyStr = Annotated[str, Field(min_length=1)]
Precision = Literal[
    "auto",
    "32-true",
    "32",
    "64-true",
    "64",
    "16-mixed",
    "16",
    "bf16-mixed",
    "bf16",
    "16-true",
    "bf16-true",
    "transformer-engine",
    "transformer-engine-float16",
]


class _Frozen(BaseModel):
    # Strict, so that "8k", "yes" or 1 for a flag stop the run instead of quietly meaning something else;
    # frozen, so that no stage can change a parameter after it was logged and hashed.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


# A str field's description says what it must be; any other field's description is a note on its range.


class BaseConfig(_Frozen):
    seed: int = Field(1337, ge=0)
    experiment: str = Field("seqlm", min_length=1, description="a non-empty MLflow experiment name")


class DataConfig(_Frozen):
    source: str = Field(
        "builtin:kjv",
        pattern=r"^(builtin|hf|files|url|synthetic):(?s:.+)$",
        description="one of builtin:<name> | hf:<dataset>[:<config>] | files:<path or glob> | "
        "url:<https URL> | synthetic:copy | synthetic:brackets | synthetic:adding",
    )
    sha256: str = Field("", pattern=r"^([0-9a-fA-F]{64})?$", description="empty or 64 hex digits")
    split: Annotated[tuple[Fraction, Fraction, Fraction], _FromList] = (0.9, 0.05, 0.05)
    on_decode_error: Literal["strict", "replace"] = "strict"
    text_column: str = Field("text", min_length=1)
    delay: int = Field(50, ge=1)
    synthetic_symbols: int = Field(1_000_000, ge=1000)
    max_download_mb: float = Field(2048.0, gt=0)
    download_timeout_minutes: float = Field(30.0, gt=0)


class TokenizerConfig(_Frozen):
    type: Literal["bpe", "unigram", "char"] = "bpe"
    vocab_size: int = Field(2000, ge=32)
    character_coverage: float = Field(1.0, ge=0.5, le=1.0)
    byte_fallback: bool = True
    input_sentence_size: int = Field(2_000_000, ge=0, description="0 means every line")
    max_sentence_length: int = Field(16384, ge=256, le=1 << 20)
    # sentencepiece's "▁" before each line's first piece, so a line's first word is tokenized like the
    # others; off for symbol streams (the synthetic probes), where it would be one constant token per line
    add_dummy_prefix: bool = True


class ModelConfig(_Frozen):
    family: Literal["lstm", "gru", "rnn", "ffn_window", "bow"] = "lstm"
    embedding_size: int = Field(256, ge=1)
    hidden_size: int = Field(256, ge=1)
    num_layers: int = Field(1, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    input_dropout: float = Field(0.1, ge=0, lt=1)
    embedding_dropout: float = Field(0.0, ge=0, lt=1)
    embedding_init: Literal["uniform", "normal"] = "uniform"
    weight_drop: float = Field(0.0, ge=0, lt=1)
    locked_dropout: bool = False
    tie_weights: bool = True
    nonlinearity: Literal["tanh", "relu"] = "tanh"
    recurrent_init: Literal["default", "orthogonal", "identity"] = "default"
    forget_bias: float = 0.0
    chrono_max: int = Field(
        0, ge=0, description="0: off; else the longest dependency the gates start tuned to"
    )
    recurrent_gain: float = Field(1.0, gt=0, description="1 keeps the initialisation's scale")
    window: int = Field(8, ge=1)
    bidirectional: bool = False


class TrainConfig(_Frozen):
    objective: Literal["next", "cloze"] = "next"
    cloze_rate: float = Field(0.15, gt=0, lt=1)
    batch_size: int = Field(32, ge=1)
    bptt: int = Field(64, ge=2)
    variable_bptt: bool = False
    episodic: bool = False
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-2, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(100, ge=0)
    schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    grad_clip: float = Field(0.5, ge=0, description="0 disables clipping")
    activation_reg: float = Field(0.0, ge=0, description="0 disables it")
    temporal_activation_reg: float = Field(0.0, ge=0, description="0 disables it")
    loss_chunk_mb: float = Field(16.0, ge=0, description="0 computes the whole step's logits at once")
    max_epochs: int = Field(20, ge=1)
    max_steps: int = Field(0, ge=0, description="0 means no limit")
    max_minutes: float = Field(3.5, ge=0, description="0 means no limit")
    plan: Annotated[Literal["off", "auto"], _OffIsFalse] = "off"
    plan_tokens_per_s: float = Field(0.0, ge=0, description="0 measures it on this machine")
    early_stopping_patience: int = Field(3, ge=0, description="0 disables early stopping")
    val_every_steps: int = Field(250, ge=0, description="0 means once per epoch")
    stop_at_recall: float = Field(0.0, ge=0, le=1, description="0 means off")
    precision: Precision = "auto"
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Literal["auto"] | PositiveInt = "auto"
    strategy: str = Field("auto", min_length=1)
    num_nodes: int = Field(1, ge=1)
    checkpoint_every_minutes: float = Field(2.0, gt=0)
    log_every_steps: int = Field(10, ge=1)
    system_metrics_seconds: float = Field(10.0, ge=0, description="0 turns them off")


class EvaluateConfig(_Frozen):
    batch_size: int = Field(8, ge=1)
    bptt: int = Field(128, ge=1)
    precision: Literal["auto", "32-true"] = Field(
        "auto", description="auto: the training precision where a check measures it equal to fp32"
    )
    context_resets: Annotated[tuple[PositiveInt, ...], _FromList] = Field((1, 4, 16, 64, 256), min_length=1)
    gradient_flow_steps: int = Field(128, ge=2)
    prompts: Annotated[tuple[NonEmptyStr, ...], _FromList] = Field(
        ("In the beginning", "And the LORD said unto Moses"), min_length=1
    )
    cloze_prompts: Annotated[tuple[NonEmptyStr, ...], _FromList] = Field(
        ("Every night, I take my dog for a", "And God said, Let there be"), min_length=1
    )
    sample_tokens: int = Field(60, ge=1, le=10_000)
    temperature: float = Field(0.8, ge=0)
    top_k: int = Field(50, ge=0, description="0 disables")
    top_p: float = Field(0.95, gt=0, le=1)


class RegistryConfig(_Frozen):
    model_name: str = Field(
        "seqlm", pattern=r"^[A-Za-z0-9_.\-]+$", description="a name of letters, digits, '.', '_' or '-'"
    )
    min_improvement: float = Field(0.01, ge=0, lt=1)
    auto_promote: bool = True


class Config(_Frozen):
    base: BaseConfig = Field(default_factory=BaseConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)

    def flat(self, *names: str) -> dict[str, Any]:
        """``{"model.hidden_size": 256, ...}``: every key (a run's record of its params), or only those of
        the named sections and keys (``"model"``, ``"base.seed"``), so that a digest reads no others."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            for key in type(section).model_fields:
                if names and name not in names and f"{name}.{key}" not in names:
                    continue
                value = getattr(section, key)
                out[f"{name}.{key}"] = list(value) if isinstance(value, tuple) else value
        return out

    def section_hash(self, *names: str) -> str:
        """A stable digest of the named sections (or keys ``section.key``), e.g. a registered version's."""
        return hashlib.sha256(json.dumps(self.flat(*names), sort_keys=True).encode()).hexdigest()[:16]


SECTIONS: dict[str, type[BaseModel]] = {name: f.annotation for name, f in Config.model_fields.items()}


# ------------------------------------------------------------------------------------------- parsing


def _fmt(v: Any) -> str:
    try:
        return json.dumps(v, ensure_ascii=False)
    except TypeError:
        return repr(v)


def _must_be(tp: Any, info: FieldInfo | None = None, value: Any = None) -> str:
    """What a value of type ``tp`` (constrained by ``info``) must be: the end of "<key> must be ..."."""
    metadata = list(info.metadata) if info is not None else []
    while get_origin(tp) is Annotated:
        tp, *extra = get_args(tp)
        metadata += [m for e in extra for m in (e.metadata if isinstance(e, FieldInfo) else [e])]
    limits = {
        k: getattr(m, k) for m in metadata for k in ("gt", "ge", "lt", "le", "min_length") if hasattr(m, k)
    }
    note = info.description if info is not None else None
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_must_be(a) for a in args)
    if origin is Literal:
        return _fmt(args[0]) if len(args) == 1 else "one of " + " | ".join(args)
    if tp is bool:
        return "true or false"
    if tp is str:
        return note or "a non-empty string"
    if origin is tuple:
        fixed, at_least = args[-1] is not Ellipsis, limits.get("min_length", 0)
        # A list of the right length can only be wrong in an item, so say what an item must be.
        if isinstance(value, list) and (len(value) == len(args) if fixed else len(value) >= at_least):
            return _must_be(args[0])
        size = f"{len(args)} " if fixed else ""
        at_least_text = f" (at least {at_least})" if at_least else ""
        return f"a list of {size}items{at_least_text}, each {_must_be(args[0])}"
    signs = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    bounds = [f"{s} {format(limits[k], 'g' if tp is float else '')}" for k, s in signs.items() if k in limits]
    text = ("a number " if tp is float else "an integer ") + " and ".join(bounds)
    return text.strip() + (f" ({note})" if note else "")


def _parse_section(name: str, cls: type[BaseModel], raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SeqlmError(f"{where}: {name} must be a mapping of keys to values, got {redact_url(_fmt(raw))}")
    known = cls.model_fields
    try:
        section, bad = cls.model_validate({k: v for k, v in raw.items() if k in known}), set()
    except ValidationError as exc:
        section, bad = None, {e["loc"][0] for e in exc.errors()}
    # Walk the keys in the file's order so that the first problem in the file is the one reported.
    for key, value in raw.items():
        if key not in known:
            raise SeqlmError(f"{where}: {name}.{key} is not a known key; {name} takes {', '.join(known)}")
        if key in bad:
            raise SeqlmError(
                f"{where}: {name}.{key} must be {_must_be(known[key].annotation, known[key], value)}, "
                f"got {redact_url(_fmt(value))}"
            )
    return section


def _cross_checks(cfg: Config, where: str) -> None:
    total = sum(cfg.data.split)
    if abs(total - 1.0) > 1e-6:
        raise SeqlmError(
            f"{where}: data.split must be train, valid and test fractions that sum to 1, "
            f"got {_fmt(list(cfg.data.split))} (sum {total:g})"
        )
    if cfg.data.source.startswith("url:"):
        if not cfg.data.source.startswith("url:https://"):
            # Plain http lets anyone on the path read a presigned token and swap the file; sha256 would
            # catch the swap, but only after the whole download.
            raise SeqlmError(
                f"{where}: data.source url: must be an https:// URL (plain http is neither private nor "
                f"authenticated), got {redact_url(_fmt(cfg.data.source))}"
            )
        if (credential := url_credential(cfg.data.source.removeprefix("url:"))) is not None:
            # params.yaml is recorded in dvc.lock (committed) and logged to MLflow (decision 18)
            raise SeqlmError(
                f"{where}: data.source must not hold a credential, got {redact_url(_fmt(cfg.data.source))} "
                f"with {credential}; remove it and pass it through the environment: ~/.netrc for a login, "
                "SEQLM_HTTP_TOKEN for a bearer token, SEQLM_URL_QUERY for a signed link's query"
            )
        if not cfg.data.sha256:
            raise SeqlmError(
                f"{where}: data.sha256 is required with data.source url: (64 hex digits of the file's "
                'SHA-256, e.g. from `sha256sum`), got ""'
            )
    if cfg.train.episodic and cfg.train.variable_bptt:
        raise SeqlmError(
            f"{where}: train.variable_bptt must be false with train.episodic: true (an episode is one "
            "whole window, train.bptt only bounds its length), got true"
        )
    if cfg.train.stop_at_recall and not cfg.train.episodic:
        raise SeqlmError(
            f"{where}: train.stop_at_recall must be 0 without train.episodic: true (only the episodic "
            f"protocol validates recall), got {_fmt(cfg.train.stop_at_recall)}"
        )
    if cfg.train.episodic and cfg.train.objective == "cloze":
        raise SeqlmError(
            f"{where}: train.episodic must be false with train.objective: cloze (cloze already reads every "
            "window on its own, from a fresh state), got true"
        )
    if cfg.model.bidirectional and cfg.train.objective != "cloze":
        raise SeqlmError(
            f"{where}: model.bidirectional must be false: a bidirectional RNN reads the tokens it is "
            "asked to predict, so it cannot be trained as a next-token language model "
            "(it can with train.objective: cloze)"
        )
    if cfg.train.objective == "cloze" and cfg.model.family in ("ffn_window", "bow"):
        raise SeqlmError(
            f"{where}: train.objective: cloze needs a recurrent model.family (lstm | gru | rnn), got "
            f"{_fmt(cfg.model.family)}: the window baselines see only tokens to the left of a blank"
        )
    if cfg.model.recurrent_init != "default" and cfg.model.family in ("ffn_window", "bow"):
        raise SeqlmError(
            f"{where}: model.recurrent_init must be default for model.family {cfg.model.family} "
            f"(it has no recurrent weights), got {_fmt(cfg.model.recurrent_init)}"
        )
    if cfg.model.recurrent_gain != 1.0 and cfg.model.family in ("ffn_window", "bow"):
        raise SeqlmError(
            f"{where}: model.recurrent_gain must be 1 for model.family {cfg.model.family} "
            f"(it has no recurrent weights), got {_fmt(cfg.model.recurrent_gain)}"
        )
    if cfg.model.chrono_max and cfg.model.family not in ("lstm", "gru"):
        raise SeqlmError(
            f"{where}: model.chrono_max applies to the gated families (lstm | gru), got family "
            f"{_fmt(cfg.model.family)}; set it to 0"
        )
    if cfg.model.chrono_max == 1 or (cfg.model.chrono_max and cfg.model.forget_bias):
        raise SeqlmError(
            f"{where}: model.chrono_max sets the gate biases itself: use it (at least 2) or "
            f"model.forget_bias, not both; got chrono_max {cfg.model.chrono_max}, "
            f"forget_bias {_fmt(cfg.model.forget_bias)}"
        )
    if cfg.model.recurrent_init == "identity" and cfg.model.family != "rnn":
        raise SeqlmError(
            f"{where}: model.recurrent_init: identity applies to model.family: rnn (the IRNN of Le et al., "
            f"2015), got family {_fmt(cfg.model.family)}"
        )


def parse(raw: Any, where: str = PARAMS) -> Config:
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
        raise SeqlmError(
            f"{path}: not found; run from the project root (the folder with params.yaml and dvc.yaml)"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise SeqlmError(f"{path.name}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    return parse(raw, where=path.name)
