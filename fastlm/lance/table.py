"""What the LanceDB writer and search share: the optional lancedb/pyarrow import, the model a
name stands for, opening a table, and the fastlm model record in a table's schema metadata."""

from __future__ import annotations

import json
import os
from typing import Any

from fastlm.index.records import IndexModelMismatch, model_facts

FORMAT = "fastlm-lancedb/1"
METADATA_KEY = b"fastlm"


def lancedb_modules():
    try:
        import lancedb
        import pyarrow
    except ImportError as err:
        raise ImportError(
            'the LanceDB route needs LanceDB: pip install "fastlm[lancedb]"', name=err.name
        ) from None
    return lancedb, pyarrow


def load_model(model: Any):
    """A model name or directory loaded with fastlm.load; a model object as given."""
    if isinstance(model, (str, os.PathLike)):
        from fastlm.engine import load  # torch: only when a model is named, not given

        return load(model)
    if not hasattr(model, "embedding_dim") or not hasattr(model, "embed"):
        raise TypeError(
            f"model must be a fastlm LanguageModel or a model name/path; got {type(model).__name__}"
        )
    return model


def open_table(db, table: str):
    """The table, or None where there is none. Not list_tables(): a create that failed leaves a
    directory it lists but that holds no committed version (and a retry may create over it)."""
    try:
        return db.open_table(table)
    except ValueError:  # lancedb: "Table '...' was not found"
        return None


def check_record(schema, model, where: str, columns: dict[str, str] | None = None) -> dict:
    """The fastlm record in a table's schema metadata, checked against `model` (and the
    columns a writer passes): IndexModelMismatch for another model, ValueError otherwise."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    try:
        record = json.loads(raw) if raw is not None else None
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(
            f"{where} has no fastlm model record ({FORMAT} in its schema metadata): "
            "write it with fastlm.lance.write_lancedb"
        )
    saved, given = record.get("model") or {}, model_facts(model)
    if any(saved.get(k) != given[k] for k in ("architecture", "dim", "embedding_digest")):
        raise IndexModelMismatch(
            f"{where} was built with {describe_model(saved)}; the model given is "
            f"{describe_model(given)}: "
            "search it with the model that built it, or write it again with mode='overwrite'"
        )
    if columns is not None and record.get("columns") != columns:
        raise ValueError(
            f"{where} was written with columns {record.get('columns')}; pass the same "
            "id_column=, text_column=, vector_column="
        )
    return record


def describe_model(facts: dict) -> str:
    digest = facts.get("embedding_digest")
    short = digest[:16] + "..." if isinstance(digest, str) else digest
    return f"{facts.get('name')!r} ({facts.get('architecture')}, dim {facts.get('dim')}, {short})"
