"""Model configurations: one dataclass per architecture, stored as config.json with the weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


@dataclass
class LSTMConfig:
    architecture = "lstm"  # class attribute: not a field, written to config.json by to_dict
    vocab_size: int = 2000  # byte-level BPE, special tokens included
    embedding_dim: int = 256
    hidden_dim: int = 256  # also the embedding size returned by embed()
    num_layers: int = 2
    dropout: float = 0.2  # between LSTM layers (SPEC); training may lower it

    def __post_init__(self):
        _check_positive(self, "vocab_size", "embedding_dim", "hidden_dim", "num_layers")
        _check_dropout(self.dropout)

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
        _check_positive(self, "vocab_size", "d_model", "nhead", "num_layers", "dim_feedforward")
        _check_positive(self, "max_len")
        _check_dropout(self.dropout)
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
    """Inverse of `to_dict`; unknown keys are an error so a typo never passes silently."""
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


def _check_positive(cfg, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_dropout(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
