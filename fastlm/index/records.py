"""What an Index stores beside its vectors: document ids, texts and metadata (checked on the way
in and on the way back from disk), and the identity of the model that embedded them."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

from fastlm.index.store import IndexFileError
from fastlm.validation import ArgumentTypeError, ArgumentValueError, check_texts

_INTEGER_ID = re.compile(r"0|[1-9][0-9]*")  # ids that default ids continue after
PREVIEW = 5  # ids named in one error message


class IndexModelMismatch(ValueError):
    """An index is loaded with a model other than the one that embedded its documents."""


# ------------------------------------------------------------------ ids and metadata
def as_list(value: object, what: str) -> list:
    """A sequence argument as a list (a str or bytes is not a sequence of items here)."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ArgumentTypeError(f"{what} must be a list, got {type(value).__name__}", what)
    return list(value)


def check_ids(ids: object, n: int) -> list[str]:
    """`ids` (n,) distinct non-empty str; duplicates are a ValueError naming them."""
    ids = as_list(ids, "ids")
    if len(ids) != n:
        raise ArgumentValueError(
            f"ids has {len(ids)} entries for {n} texts; give one id per text", "ids"
        )
    for i, doc_id in enumerate(ids):
        if not isinstance(doc_id, str):
            raise ArgumentTypeError(
                f"ids[{i}] must be a str, got {type(doc_id).__name__} {doc_id!r}"
            )
        if not doc_id:
            raise ArgumentValueError(f"ids[{i}] is empty: an id must be a non-empty str")
    seen, repeated = set(), []
    for doc_id in ids:
        if doc_id in seen and doc_id not in repeated:
            repeated.append(doc_id)
        seen.add(doc_id)
    if repeated:
        raise ArgumentValueError(f"duplicate ids in one call: {preview(repeated)}")
    return ids


def default_ids(existing: Sequence[str], n: int) -> list[str]:
    """ "0", "1", ... continuing after the largest integer-looking id of `existing`."""
    start = max((int(i) + 1 for i in existing if _INTEGER_ID.fullmatch(i)), default=0)
    return [str(start + k) for k in range(n)]


def check_metadata(metadata: object, ids: list[str]) -> list[dict | None]:
    """One JSON-serialisable dict (or None) per document, as JSON gives it back (tuples become
    lists): what `get` returns before a save is what it returns after a load."""
    if metadata is None:
        return [None] * len(ids)
    items = as_list(metadata, "metadata")
    if len(items) != len(ids):
        raise ArgumentValueError(
            f"metadata has {len(items)} entries for {len(ids)} texts", "metadata"
        )
    out = []
    for doc_id, item in zip(ids, items):
        if item is None:
            out.append(None)
            continue
        if not isinstance(item, dict) or not all(isinstance(k, str) for k in item):
            raise ArgumentTypeError(
                f"metadata of document {doc_id!r} must be a dict with str keys (or None), "
                f"got {type(item).__name__}"
            )
        try:
            out.append(json.loads(json.dumps(item, allow_nan=False)))
        except (TypeError, ValueError, RecursionError) as err:
            raise ArgumentTypeError(
                f"metadata of document {doc_id!r} is not JSON-serialisable: {err}"
            ) from None
    return out


def preview(items: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in items[:PREVIEW])
    return shown + (f", ... ({len(items)} in all)" if len(items) > PREVIEW else "")


def parse_records(meta: object, file: Path) -> tuple[list[str], list[str], list[dict | None]]:
    """(ids, texts, metadata) of a saved index.json, every field checked (an older index with
    texts only gets ids "0".."n-1" and no metadata)."""
    texts = meta.get("texts") if isinstance(meta, dict) else None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise IndexFileError(f"{file}: 'texts' must be a list of str")
    ids = meta.get("ids", [str(i) for i in range(len(texts))])
    metadata = meta.get("metadata", [None] * len(texts))
    try:
        texts = check_texts(texts)  # e.g. a lone surrogate
        ids = check_ids(ids, len(texts))
        if not isinstance(metadata, list) or not all(
            m is None or isinstance(m, dict) for m in metadata
        ):
            raise ValueError("'metadata' must be a list of objects or nulls")
        metadata = check_metadata(metadata, ids)
    except (TypeError, ValueError) as err:
        raise IndexFileError(f"{file}: {err}") from None
    return ids, texts, metadata


# ------------------------------------------------------------------ model identity
def model_facts(model) -> dict:
    """What a saved index records of the model that embedded it."""
    tokenizer = getattr(model, "tokenizer", None)
    to_str = getattr(tokenizer, "to_str", None)
    return {
        "name": str(getattr(model, "name", "")),
        "architecture": model.architecture,
        "dim": int(model.embedding_dim),
        "embedding_digest": getattr(model, "embedding_digest", None),
        "tokenizer_digest": hashlib.sha256(to_str().encode()).hexdigest() if to_str else None,
    }


def check_model(saved: object, model, where: Path) -> None:
    """IndexModelMismatch unless `model` is the one `saved` (model_facts at save) describes.

    Architecture and dimension are always compared; the embedding digest (weights + tokenizer)
    too, except for an index saved before digests were recorded (fastlm-index/1 and /2)."""
    if not isinstance(saved, dict):
        raise IndexFileError(f"{where}: 'model' must be an object")
    given = model_facts(model)
    keys = ("architecture", "dim") + (("embedding_digest",) if "embedding_digest" in saved else ())
    if all(saved.get(k) == given[k] for k in keys):
        return
    raise IndexModelMismatch(
        f"index at {where.parent} was built with {_describe(saved)}; the model given is "
        f"{_describe(given)}: load it with the model that built it, or build it again"
    )


def _describe(facts: dict) -> str:
    digest = facts.get("embedding_digest")
    return (
        f"{facts.get('name')!r} ({facts.get('architecture')}, dim {facts.get('dim')}, "
        f"embedding digest {digest[:16] + '...' if isinstance(digest, str) else digest})"
    )
