"""Compatibility re-export: the index lives in fastlm/index/ (torch-free)."""

from fastlm.index import Index, IndexFileError, IndexModelMismatch  # noqa: F401
