"""fastlm: train, compile, export and serve small language models.

Re-exports only. Heavy modules (torch) load on first use, so `fastlm.runtime` (ONNX Runtime
only) and `fastlm.tokenizer` stay importable on machines without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fastlm.version import __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads on use
    from fastlm.engine import load
    from fastlm.generation import Step
    from fastlm.hub import available_models
    from fastlm.index import Index
    from fastlm.language_model import LanguageModel
    from fastlm.sampling import SamplingParams
    from fastlm.tokenizer import Tokenizer
    from fastlm.validation import ArgumentError

_LAZY = {
    "load": ("fastlm.engine", "load"),
    "Index": ("fastlm.index", "Index"),
    "LanguageModel": ("fastlm.language_model", "LanguageModel"),
    "available_models": ("fastlm.hub", "available_models"),
    "Tokenizer": ("fastlm.tokenizer", "Tokenizer"),
    "SamplingParams": ("fastlm.sampling", "SamplingParams"),
    "Step": ("fastlm.generation", "Step"),
    "ArgumentError": ("fastlm.validation", "ArgumentError"),
}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastlm' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = [
    "ArgumentError",
    "Index",
    "LanguageModel",
    "SamplingParams",
    "Step",
    "Tokenizer",
    "__version__",
    "available_models",
    "load",
]
