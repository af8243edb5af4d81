"""`Index`: documents (id, text, metadata) embedded once and searched many times, by dense
vectors, BM25 or both fused; exact below `fastlm.ann.EXACT_BELOW` documents, through an HNSW
graph above; saved as crash-safe versions (fastlm/index/store.py) that only the model which
built them can load.

A version holds index.json (ids, texts, metadata), embeddings.npy ((n, D) float32 or float16),
the BM25 files bm25.* when the index has a lexical side, ann.usearch when it uses the graph,
and manifest.json: every file's sha256, the model's name, architecture, dim, embedding digest
and tokenizer digest, the lexical and graph settings and the storage dtype.

Derived state is rebuilt lazily: BM25 has no incremental add, so after `add` / `remove` the
lexical side is refitted on the next lexical or hybrid search, or on `save`. The graph takes
appended documents as they come; a removal renumbers rows, and an upsert replaces a row, so
either marks the graph stale and it is rebuilt on the next search or save. A graph loaded with
mmap=True is a read-only view: the first edit reads an editable copy of its file (or rebuilds).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from fastlm import ann as ann_mod
from fastlm import lexical as lexical_mod
from fastlm.index import records, search, store
from fastlm.index.loading import ANN_FILE, EMBEDDINGS_FILE, META_FILE, read_version
from fastlm.index.vectors import as_float32, as_matrix, check_storage, write_npy
from fastlm.language_model import embed_queries
from fastlm.validation import ArgumentTypeError, ArgumentValueError, check_int, check_texts


class Index:
    """Documents with ids, texts, metadata and (n, D) normalised embeddings.

    >>> index = Index(model).add(docs, ids=doc_ids); index.search("query", top_k=5)
    """

    def __init__(
        self, model, *, lexical: bool = True, ann: bool | None = None, storage: str = "float32"
    ):
        """lexical: a BM25 side (True needs the `lexical` extra; a LexicalSettings chooses its
        settings). ann: None uses the graph from `fastlm.ann.EXACT_BELOW` documents when the
        `ann` extra is installed; True always (needs the extra); False never. storage: how
        vectors are kept, "float32" or "float16" (half the memory, scores within ~1e-3)."""
        self.model = model
        self.storage, self._dtype = storage, check_storage(storage)
        if isinstance(lexical, lexical_mod.LexicalSettings):
            self._lexical_settings = lexical
        elif isinstance(lexical, bool):
            self._lexical_settings = lexical_mod.LexicalSettings() if lexical else None
        else:
            raise ArgumentTypeError(
                f"lexical must be a bool or LexicalSettings, got {lexical!r}", "lexical"
            )
        if self._lexical_settings is not None:
            lexical_mod._import_backend()  # ImportError naming the extra, now rather than later
        if ann not in (None, True, False):
            raise ArgumentTypeError(f"ann must be None, True or False, got {ann!r}", "ann")
        if ann:
            ann_mod._import_usearch()
        # the graph keeps its own copy of every vector: in the index's storage precision
        graph_dtype = "f16" if storage == "float16" else "f32"
        self._ann_choice, self._ann_settings = ann, ann_mod.AnnSettings(dtype=graph_dtype)
        self._ann: ann_mod.AnnIndex | None = None  # None: not built yet, or stale
        self._ann_file: Path | None = None  # the file a read-only graph view maps
        self._lexical: lexical_mod.LexicalIndex | None = None  # None: not fitted, or stale
        self._set_records([], [], [], np.zeros((0, model.embedding_dim), self._dtype))

    @classmethod
    def from_embeddings(
        cls,
        model,
        embeddings: ArrayLike,
        texts: Sequence[str],
        ids: Sequence[str] | None = None,
        metadata: Sequence[dict | None] | None = None,
        **options,
    ) -> Index:
        """An index of precomputed `embeddings` (any (n, D) array-like of numbers) for `texts`;
        `options` as for the constructor."""
        index = cls(model, **options)
        texts = check_texts(texts if isinstance(texts, str | Sequence) else list(texts))
        ids = (
            records.default_ids([], len(texts))
            if ids is None
            else records.check_ids(ids, len(texts))
        )
        metadata = records.check_metadata(metadata, ids)
        vecs = as_matrix(embeddings, len(texts), model.embedding_dim, index._dtype)
        index._set_records(ids, texts, metadata, vecs)
        return index

    def _set_records(self, ids, texts, metadata, vectors) -> None:
        self._ids, self._texts, self._metadata, self._vectors = ids, texts, metadata, vectors
        self._row = {doc_id: row for row, doc_id in enumerate(ids)}

    # ------------------------------------------------------------------ documents
    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def texts(self) -> list[str]:
        return list(self._texts)

    @property
    def embeddings(self) -> np.ndarray:
        """(n, D) in the storage dtype (read-only when memory-mapped); row i is document ids[i]."""
        return self._vectors

    @property
    def lexical(self) -> bool:
        return self._lexical_settings is not None

    def get(self, id: str) -> dict:
        """{"id", "text", "metadata"} of one document; KeyError for an unknown id."""
        row = self._row.get(id) if isinstance(id, str) else None
        if row is None:
            raise KeyError(f"no document with id {id!r} in the index")
        return {"id": id, "text": self._texts[row], "metadata": self._metadata[row]}

    def add(
        self,
        texts: str | Sequence[str],
        ids: Sequence[str] | None = None,
        metadata: Sequence[dict | None] | None = None,
        *,
        upsert: bool = False,
        batch_size: int = 64,
        progress: bool | None = None,
    ) -> Index:
        """Embed and add `texts` (returns self). ids: one distinct str per text (default "0",
        "1", ... after the largest integer-looking id present); an id already present is a
        ValueError unless upsert=True, which replaces that document. metadata: one
        JSON-serialisable dict (or None) per text."""
        single = isinstance(texts, str)
        texts = check_texts([texts] if single else texts)
        if single and isinstance(ids, str):
            ids = [ids]
        if single and isinstance(metadata, dict):
            metadata = [metadata]
        ids = (
            records.default_ids(self._ids, len(texts))
            if ids is None
            else records.check_ids(ids, len(texts))
        )
        metadata = records.check_metadata(metadata, ids)
        if not isinstance(upsert, bool):
            raise ArgumentTypeError(f"upsert must be a bool, got {upsert!r}", "upsert")
        present = [doc_id for doc_id in ids if doc_id in self._row]
        if present and not upsert:
            raise ArgumentValueError(
                f"ids already in the index: {records.preview(present)}; pass upsert=True to "
                "replace those documents"
            )
        if texts:
            vecs = self._embed(texts, batch_size, progress).astype(self._dtype)
            self._insert(ids, texts, metadata, vecs)
        return self

    def _insert(self, ids, texts, metadata, vecs) -> None:
        replaced = [(self._row[i], k) for k, i in enumerate(ids) if i in self._row]
        new = [k for k, i in enumerate(ids) if i not in self._row]
        vectors = self._vectors
        if replaced:
            vectors = np.array(vectors)  # an editable copy (a memory map is read-only)
            for row, k in replaced:
                self._texts[row], self._metadata[row] = texts[k], metadata[k]
                vectors[row] = vecs[k]
        first = len(self._ids)
        self._ids.extend(ids[k] for k in new)
        self._texts.extend(texts[k] for k in new)
        self._metadata.extend(metadata[k] for k in new)
        self._set_records(
            self._ids,
            self._texts,
            self._metadata,
            np.concatenate([vectors, vecs[new]]) if new else vectors,
        )
        self._lexical = None
        if replaced:
            self._ann = None
        elif self._ann is not None and self._editable_ann():
            added = as_float32(vecs[new])
            keep = _unit_rows(added)
            self._ann.add(_normalised(added[keep]), np.flatnonzero(keep) + first)

    def remove(self, ids: str | Sequence[str]) -> int:
        """Remove the documents of `ids` (a KeyError names unknown ones); returns how many."""
        ids = [ids] if isinstance(ids, str) else records.as_list(ids, "ids")
        unknown = [i for i in ids if not isinstance(i, str) or i not in self._row]
        if unknown:
            raise KeyError(f"ids not in the index: {records.preview(unknown)}")
        gone = {self._row[i] for i in ids}
        keep = np.array([row not in gone for row in range(len(self))], bool)
        self._set_records(
            [i for i, k in zip(self._ids, keep) if k],
            [t for t, k in zip(self._texts, keep) if k],
            [m for m, k in zip(self._metadata, keep) if k],
            np.asarray(self._vectors[keep]),
        )
        self._lexical, self._ann = None, None  # rows renumbered
        return len(gone)

    # ------------------------------------------------------------------ search
    def search(
        self,
        query_or_queries: str | Sequence[str],
        top_k: int = 10,
        mode: str | None = None,
        *,
        fusion: str = "weighted",
        weight: float | None = None,
    ) -> list[dict] | list[list[dict]]:
        """Best matches first: [{"id", "score", "text", "metadata"}] for one query (a str), a
        list of such lists for a list of queries (one embed call, one matrix product).

        mode: "hybrid" (default with a lexical side), "dense" (default without) or "lexical".
        fusion: "weighted" (min-max normalised scores, weight * dense + (1 - weight) * lexical,
        weight default DEFAULT_MODE_HYBRID_WEIGHT) or "rrf" (reciprocal-rank fusion)."""
        single = isinstance(query_or_queries, str)
        queries = check_texts([query_or_queries] if single else query_or_queries)
        for i, query in enumerate(queries):
            if not query.strip():
                raise ArgumentValueError(
                    f"query{'' if single else f' {i}'} is empty: nothing to search"
                )
        top_k = check_int(top_k, "top_k", min=1)
        mode, fusion, weight = search.check_options(mode, fusion, weight, self.lexical)
        if not queries or not len(self):
            return [] if single else [[] for _ in queries]
        rows, scores = search.rank(self, queries, top_k, mode, fusion, weight)
        hits = [self._hits(r, s) for r, s in zip(rows, scores)]
        return hits[0] if single else hits

    def _hits(self, rows: np.ndarray, scores: np.ndarray) -> list[dict]:
        return [
            {
                "id": self._ids[r],
                "score": float(s),
                "text": self._texts[r],
                "metadata": self._metadata[r],
            }
            for r, s in zip(rows.tolist(), scores.tolist())
            if 0 <= r < len(self)
        ]

    def _embed(
        self, texts: list[str], batch_size: int, progress: bool | None, queries: bool = False
    ) -> np.ndarray:
        """(n, D) vectors of documents, or of `queries` (a LanguageModel embeds those with
        kind="query")."""
        check_int(batch_size, "batch_size", min=1)
        if progress is not None and not isinstance(progress, bool):
            raise ArgumentTypeError(
                f"progress must be None or a bool, got {progress!r}", "progress"
            )
        embed = partial(embed_queries, self.model) if queries else self.model.embed
        vecs = embed(texts, batch_size=batch_size, show_progress_bar=progress)
        return as_matrix(vecs, len(texts), self.model.embedding_dim, np.dtype(np.float32))

    def _lexical_index(self) -> lexical_mod.LexicalIndex | None:
        """The BM25 side, fitted on the current texts (refitted after an edit)."""
        if self._lexical_settings is not None and self._lexical is None:
            self._lexical = lexical_mod.LexicalIndex(self._lexical_settings).fit(self._texts)
        return self._lexical

    def _uses_ann(self) -> bool:
        if self._ann_choice is not None:
            return self._ann_choice
        if len(self) < ann_mod.EXACT_BELOW:
            return False
        try:
            ann_mod._import_usearch()
        except ImportError:
            return False
        return True

    def _ann_index(self) -> ann_mod.AnnIndex | None:
        """The graph over the current vectors (built when stale), or None for exact search.
        Rows whose vector is zero (an empty text) are left out: they match nothing."""
        if not self._uses_ann():
            return None
        if self._ann is None:
            vecs = as_float32(self._vectors)
            keep = _unit_rows(vecs)
            self._ann = ann_mod.AnnIndex.build(
                _normalised(vecs[keep]), np.flatnonzero(keep), self._ann_settings
            )
            self._ann_file = None
        return self._ann

    def _editable_ann(self) -> bool:
        """Make the graph editable: a view is replaced by an in-memory copy of its file, or
        dropped (rebuilt on next use) when that file is gone. Returns whether a graph is left."""
        if self._ann is not None and self._ann.view:
            try:
                self._ann = ann_mod.AnnIndex.load(
                    self._ann_file, view=False, settings=self._ann_settings
                )
            except (OSError, ValueError):  # removed by later saves: rebuild from the vectors
                self._ann = None
        return self._ann is not None

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write a new version of index directory `path` and point it there (store.py).

        `path` may be new, empty or an index; anything else is refused (FileExistsError), never
        replaced. Saves to one directory from several processes run one after the other.
        """
        lexical, graph = self._lexical_index(), self._ann_index()

        def write(vdir: Path) -> list[str]:
            meta = {"ids": self._ids, "texts": self._texts, "metadata": self._metadata}
            with open(vdir / META_FILE, "xb") as f:
                f.write(json.dumps(meta).encode("utf-8"))
            with open(vdir / EMBEDDINGS_FILE, "xb") as f:
                write_npy(self._vectors, f)
            names = [META_FILE, EMBEDDINGS_FILE]
            if lexical is not None:
                names += lexical.save(vdir)
            if graph is not None:
                if graph.view:  # a mapped graph is the unchanged file of the loaded version
                    shutil.copyfile(self._ann_file, vdir / ANN_FILE)
                else:
                    graph.save(vdir / ANN_FILE)
                names.append(ANN_FILE)
            return names

        facts = {
            "count": len(self),
            "storage": self.storage,
            "model": records.model_facts(self.model),
            "lexical": self._lexical_settings.to_dict() if self.lexical else None,
            "ann": {"mode": self._ann_choice, "graph": graph.describe() if graph else None},
        }
        store.save_version(Path(path), write, facts)

    @classmethod
    def load(cls, path: str | os.PathLike, model, *, mmap: bool = True) -> Index:
        """The current version of an index saved by `save`, every file checked first (sha256,
        type, size, shape). mmap: map the vectors and the graph read-only instead of reading
        them into memory. A model other than the one that built the index (architecture, dim
        or embedding digest) is refused with IndexModelMismatch naming both."""
        if not isinstance(mmap, bool):
            raise ArgumentTypeError(f"mmap must be a bool, got {mmap!r}", "mmap")
        return store.load_current(Path(path), lambda p, v: _read_version(cls, p, v, model, mmap))


def _unit_rows(vecs: np.ndarray) -> np.ndarray:
    """(n,) bool: rows with a non-zero norm (what the graph can hold)."""
    return np.linalg.norm(vecs, axis=1) > 1e-6


def _normalised(vecs: np.ndarray) -> np.ndarray:
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


# ------------------------------------------------------------------ reading
def _read_version(cls, path: Path, version: str, model, mmap: bool) -> Index:
    """The Index of one version, each file checked before it is used."""
    return read_version(cls, path / version, version, model, mmap)
