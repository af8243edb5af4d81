"""Inference engine: one model object, several backends."""

from fastlm.engine.backends import Backend, backend_names, register_backend
from fastlm.engine.index import Index, IndexFileError
from fastlm.engine.loading import load
from fastlm.language_model import LanguageModel, ScoreResult

__all__ = [
    "Backend",
    "Index",
    "IndexFileError",
    "LanguageModel",
    "ScoreResult",
    "backend_names",
    "load",
    "register_backend",
]
