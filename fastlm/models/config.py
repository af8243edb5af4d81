"""Model configurations: one dataclass per architecture, stored as config.json with the weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from fastlm.validation import check_float, check_int

# Bounds checked before anything is allocated: a config.json from an untrusted or damaged
# checkpoint must not make us build a model of gigabytes. Generous for this project (the
# shipped models use 2,000 / 256 / 2-3 layers); token streams are uint16, hence the vocab cap.
MAX_VOCAB = 65_535
MAX_WIDTH = 8_192  # embedding_dim, hidden_dim, d_model
MAX_FEEDFORWARD = 32_768
MAX_LAYERS = 64
MAX_HEADS = 256
MAX_POSITIONS = 65_536  # rows of the Transformer's fixed position table
MAX_PARAMETERS = 500_000_000  # ~2 GB of float32 weights


@dataclass
class LSTMConfig:
    architecture = "lstm"  # class attribute: not a field, written to config.json by to_dict
    vocab_size: int = 2000  # byte-level BPE, special tokens included
    embedding_dim: int = 256
    hidden_dim: int = 256  # also the embedding size returned by embed()
    num_layers: int = 2
    dropout: float = 0.2  # between LSTM layers (SPEC); training may lower it

    def __post_init__(self):
        _check_bounded(self, vocab_size=MAX_VOCAB, embedding_dim=MAX_WIDTH, hidden_dim=MAX_WIDTH)
        _check_bounded(self, num_layers=MAX_LAYERS)
        _check_dropout(self)
        h, e, v = self.hidden_dim, self.embedding_dim, self.vocab_size
        lstm = 4 * h * (e + h + 2) + (self.num_layers - 1) * 4 * h * (2 * h + 2)
        _check_parameters(v * e + lstm + v * (h + 1))

    @property
    def embed_dim(self) -> int:
        return self.hidden_dim

    @property
    def max_len(self) -> int | None:
        return None  # a recurrent model has no position table

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, **dataclasses.asdict(self)}


@dataclass
class TransformerConfig:
    architecture = "transformer"
    vocab_size: int = 2000
    d_model: int = 256  # also the embedding size returned by embed()
    nhead: int = 4  # head_dim = d_model / nhead = 64
    num_layers: int = 3
    dim_feedforward: int = 512
    dropout: float = 0.2
    max_len: int = 5000  # rows of the fixed sinusoidal position table

    def __post_init__(self):
        _check_bounded(self, vocab_size=MAX_VOCAB, d_model=MAX_WIDTH, nhead=MAX_HEADS)
        _check_bounded(self, num_layers=MAX_LAYERS, dim_feedforward=MAX_FEEDFORWARD)
        _check_bounded(self, max_len=MAX_POSITIONS)
        _check_dropout(self)
        d, f = self.d_model, self.dim_feedforward
        layer = 4 * d * (d + 1) + 2 * d * f + d + f + 4 * d
        _check_parameters(self.vocab_size * (2 * d + 1) + self.num_layers * layer)
        if self.d_model % self.nhead:
            raise ValueError(f"d_model={self.d_model} must be divisible by nhead={self.nhead}")
        if self.d_model % 2:
            raise ValueError("d_model must be even for the sinusoidal position table")

    @property
    def embed_dim(self) -> int:
        return self.d_model

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": self.architecture, **dataclasses.asdict(self)}


ModelConfig = LSTMConfig | TransformerConfig
CONFIGS = {"lstm": LSTMConfig, "transformer": TransformerConfig}


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Inverse of `to_dict`; unknown keys are an error so a typo never passes silently.

    Types and bounds are checked (in the dataclass) before any tensor exists."""
    if not isinstance(data, dict):
        raise TypeError(f"a model config must be a JSON object, got {type(data).__name__}")
    data = dict(data)
    arch = data.pop("architecture", None)
    if arch not in CONFIGS:
        raise ValueError(f"config architecture must be one of {sorted(CONFIGS)}, got {arch!r}")
    cls = CONFIGS[arch]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {arch} config keys: {sorted(unknown)}")
    return cls(**data)


def config_to_json(config: ModelConfig) -> str:
    return json.dumps(config.to_dict(), indent=2)


def _check_bounded(cfg, **limits: int) -> None:
    for name, limit in limits.items():
        check_int(getattr(cfg, name), name, min=1, max=limit)


def _check_dropout(cfg) -> None:
    cfg.dropout = check_float(cfg.dropout, "dropout", min=0.0, max=1.0, max_open=True)


def _check_parameters(count: int) -> None:
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"config describes ~{count:,} parameters, more than the {MAX_PARAMETERS:,} fastlm "
            "accepts; the config is damaged or not meant for fastlm"
        )
