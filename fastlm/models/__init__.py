"""The language models: one file per architecture, each registering an `Architecture`.

    fastlm/models/architecture.py  `Architecture`, the registry and the model protocol
    fastlm/models/config.py        JSON and checks shared by every config (no torch)
    fastlm/models/layers.py        input checks, pooling, positions, the reference generate
    fastlm/models/embedder.py      EmbeddingTower, what `embed()` runs, for any architecture
    fastlm/models/lstm.py          LSTMConfig, SimpleLSTM_LM and all fastlm knows about them
    fastlm/models/transformer.py   TransformerConfig, SimpleTransformer_LM, likewise

Every other module of this package is imported on first use, and each one that defines an
architecture registers it: a new architecture is one new file here.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

from fastlm.models.config import config_from_dict

if TYPE_CHECKING:
    from fastlm.models.architecture import Architecture
    from fastlm.models.lstm import LSTMConfig, SimpleLSTM_LM
    from fastlm.models.transformer import SimpleTransformer_LM, TransformerConfig

ModelConfig = Any  # the config dataclass of any registered architecture
_LAZY = {
    "SimpleLSTM_LM": "fastlm.models.lstm",
    "LSTMConfig": "fastlm.models.lstm",
    "SimpleTransformer_LM": "fastlm.models.transformer",
    "TransformerConfig": "fastlm.models.transformer",
    "Architecture": "fastlm.models.architecture",
}
_SHARED = {"architecture", "config", "layers", "embedder"}  # modules that define no architecture


def architectures() -> dict[str, Architecture]:
    """Every registered architecture by name."""
    _import_architecture_files()
    from fastlm.models.architecture import registered  # torch: `fastlm.models` imports without it

    return registered()


@functools.cache
def _import_architecture_files() -> None:
    """Import every module of this package once (each architecture file registers itself):
    a directory scan per call would sit on every config and backend lookup."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _SHARED:
            importlib.import_module(f"{__name__}.{info.name}")


def architecture_of(config_or_name) -> Architecture:
    """The `Architecture` of a config, a model or an architecture name (ValueError if unknown)."""
    known = architectures()
    name = getattr(getattr(config_or_name, "config", config_or_name), "architecture", None)
    name = config_or_name if name is None else name
    if not isinstance(name, str) or name not in known:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(known)}")
    return known[name]


def config_classes() -> dict[str, type]:
    """{architecture name: its config dataclass}."""
    return {name: a.config_class for name, a in architectures().items()}


def build_model(config: ModelConfig):
    """A fresh model of `config`'s architecture."""
    return architecture_of(config).build(config)


def __getattr__(name: str):
    if name == "CONFIGS_BY_NAME":
        return config_classes()
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastlm.models' has no attribute {name!r}")


__all__ = [
    "Architecture",
    "LSTMConfig",
    "ModelConfig",
    "SimpleLSTM_LM",
    "SimpleTransformer_LM",
    "TransformerConfig",
    "architecture_of",
    "architectures",
    "build_model",
    "config_classes",
    "config_from_dict",
]
