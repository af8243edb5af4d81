"""A small embedding index: embed a corpus once, query it many times; saved as one directory
(.npy + JSON + a sha256 manifest) written atomically and verified at load."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fastlm.io import atomic_write_dir, sha256_file
from fastlm.tokenizer import _check_text, _check_texts

EMBEDDINGS_FILE, META_FILE, INDEX_MANIFEST = "embeddings.npy", "index.json", "manifest.json"
INDEX_FORMAT = "fastlm-index/1"


class IndexFileError(ValueError):
    """A saved index is missing a file, fails its sha256 check, or cannot be parsed."""


class Index:
    """Normalised document embeddings (n, D) float32 + their texts.

    >>> index = Index(model); index.add(docs); index.search("query", top_k=5)
    """

    def __init__(self, model, embeddings: np.ndarray | None = None, texts: Sequence[str] = ()):
        self.model = model
        dim = model.embedding_dim
        self.embeddings = np.zeros((0, dim), np.float32) if embeddings is None else embeddings
        self.texts = list(texts)
        if self.embeddings.shape != (len(self.texts), dim):
            raise ValueError(
                f"embeddings shape {self.embeddings.shape} does not match "
                f"{len(self.texts)} texts of dimension {dim}"
            )

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, texts: Sequence[str], batch_size: int = 64) -> Index:
        texts = _check_texts(texts)
        vecs = self.model.embed(texts, batch_size=batch_size)
        self.embeddings = np.concatenate([self.embeddings, vecs])
        self.texts.extend(texts)
        return self

    def search(self, query: str, top_k: int = 10) -> list[dict]:
        """Best matches first: [{"corpus_id", "score", "text"}]."""
        from fastlm.language_model import _top_hits

        _check_text(query, "query")
        if not self.texts:
            return []
        return _top_hits(self.embeddings @ self.model.embed(query), top_k, self.texts)

    def save(self, path: str | os.PathLike) -> None:
        """Write DIR/ (embeddings.npy, index.json, manifest.json with their sha256) atomically.

        The directory is built under a temporary name and renamed over DIR, so an interrupted
        save leaves the previous index whole, never new vectors paired with old texts. An
        existing DIR is replaced only when it is an index itself.
        """
        path = Path(path)
        if path.exists() and not (path / INDEX_MANIFEST).is_file():
            if not path.is_dir() or any(path.iterdir()):
                raise FileExistsError(f"{path} exists and is not a fastlm index; not replacing it")
        meta = {
            "model": self.model.name,
            "architecture": self.model.architecture,
            "dim": int(self.embeddings.shape[1]),
            "texts": self.texts,
        }

        def fill(tmp: Path) -> None:
            with open(tmp / EMBEDDINGS_FILE, "wb") as f:
                np.save(f, np.ascontiguousarray(self.embeddings, dtype=np.float32))
            (tmp / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
            files = {name: sha256_file(tmp / name) for name in (EMBEDDINGS_FILE, META_FILE)}
            manifest = {"format": INDEX_FORMAT, "files": files}
            (tmp / INDEX_MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")

        atomic_write_dir(path, fill, force=True)

    @classmethod
    def load(cls, path: str | os.PathLike, model) -> Index:
        """An index saved by `save`, after checking every file against its sha256 manifest."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"index directory not found: {path}")
        _verify(path)
        try:
            meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
            vecs = np.load(path / EMBEDDINGS_FILE, allow_pickle=False)
        except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
            raise IndexFileError(f"index at {path} is corrupt: {err}") from None
        texts = meta.get("texts") if isinstance(meta, dict) else None
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise IndexFileError(f"{path / META_FILE}: 'texts' must be a list of str")
        if meta.get("architecture") != model.architecture or meta.get("dim") != model.embedding_dim:
            raise ValueError(
                f"index at {path} was built with {meta.get('model')!r} "
                f"({meta.get('architecture')}); load it with that model"
            )
        if vecs.dtype != np.float32 or vecs.shape != (len(texts), model.embedding_dim):
            raise IndexFileError(
                f"index at {path}: embeddings {vecs.dtype}{vecs.shape} do not match "
                f"{len(texts)} texts of dimension {model.embedding_dim} (float32)"
            )
        if not np.isfinite(vecs).all():
            raise IndexFileError(f"index at {path}: embeddings hold NaN or inf")
        return cls(model, vecs, texts)


def _verify(path: Path) -> None:
    """Every index file present, listed in manifest.json and matching its sha256."""
    try:
        manifest = json.loads((path / INDEX_MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexFileError(
            f"{path} has no {INDEX_MANIFEST}: not a fastlm index (Index.save writes one)"
        ) from None
    except (ValueError, UnicodeDecodeError) as err:
        raise IndexFileError(f"{path / INDEX_MANIFEST} is corrupt: {err}") from None
    ok = isinstance(manifest, dict) and manifest.get("format") == INDEX_FORMAT
    files = manifest.get("files") if ok else None
    if not isinstance(files, dict):
        raise IndexFileError(f"{path / INDEX_MANIFEST} is not a {INDEX_FORMAT} manifest")
    for name in (EMBEDDINGS_FILE, META_FILE):
        f = path / name
        if not f.is_file():
            raise IndexFileError(f"index file missing: {f}")
        if files.get(name) != sha256_file(f):
            raise IndexFileError(f"sha256 mismatch for {f}: the file is corrupt or was edited")
