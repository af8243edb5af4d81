"""A small embedding index: embed a corpus once, query it many times, save/load as .npy + JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fastlm.io import atomic_write, atomic_write_text
from fastlm.tokenizer import _check_text, _check_texts

EMBEDDINGS_FILE, META_FILE = "embeddings.npy", "index.json"


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
        from fastlm.engine.model import _top_hits

        _check_text(query, "query")
        if not self.texts:
            return []
        return _top_hits(self.embeddings @ self.model.embed(query), top_k, self.texts)

    def save(self, path: str | os.PathLike) -> None:
        """Write DIR/embeddings.npy and DIR/index.json (texts, model, dimension), atomically."""
        path = Path(path)
        atomic_write(path / EMBEDDINGS_FILE, lambda tmp: np.save(open(tmp, "wb"), self.embeddings))
        meta = {
            "model": self.model.name,
            "architecture": self.model.architecture,
            "dim": int(self.embeddings.shape[1]),
            "texts": self.texts,
        }
        atomic_write_text(path / META_FILE, json.dumps(meta))

    @classmethod
    def load(cls, path: str | os.PathLike, model) -> Index:
        path = Path(path)
        for name in (EMBEDDINGS_FILE, META_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"index file missing: {path / name}")
        try:
            meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
            vecs = np.load(path / EMBEDDINGS_FILE, allow_pickle=False)
        except (ValueError, json.JSONDecodeError) as err:
            raise ValueError(f"index at {path} is corrupt: {err}") from None
        if meta.get("architecture") != model.architecture or meta.get("dim") != model.embedding_dim:
            raise ValueError(
                f"index at {path} was built with {meta.get('model')!r} "
                f"({meta.get('architecture')}); load it with that model"
            )
        return cls(model, vecs.astype(np.float32), meta["texts"])
