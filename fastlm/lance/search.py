"""open_lancedb_search / LanceSearch: dense, lexical (LanceDB's full-text index) and hybrid
search over a table that write_lancedb wrote, with the model that embedded it."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from fastlm.index.search import MODES
from fastlm.lance.table import check_record, lancedb_modules, load_model, open_table
from fastlm.language_model import embed_queries
from fastlm.validation import check_int


def open_lancedb_search(
    uri: str | os.PathLike,
    table: str,
    model: Any,
    *,
    storage_options: dict[str, str] | None = None,
) -> LanceSearch:
    """A LanceSearch over table `table` at `uri`, which `model` (a LanguageModel or a name/path
    for fastlm.load) must have embedded: IndexModelMismatch otherwise."""
    lancedb, _ = lancedb_modules()
    model = load_model(model)
    db = lancedb.connect(os.fspath(uri), storage_options=storage_options)
    tbl = open_table(db, table)
    if tbl is None:
        raise ValueError(f"there is no table {table!r} at {os.fspath(uri)}")
    record = check_record(tbl.schema, model, f"LanceDB table {table!r} at {os.fspath(uri)}")
    return LanceSearch(tbl, model, record["columns"])


class LanceSearch:
    """`search(query, top_k, mode)` over a LanceDB table that write_lancedb wrote. `table` is
    the lancedb Table, for anything else (filters, a vector index, `optimize()`)."""

    def __init__(self, table, model, columns: dict[str, str]):
        self.table, self.model, self.columns = table, model, columns

    def __len__(self) -> int:
        return self.table.count_rows()

    def search(self, query: str, top_k: int = 10, mode: str = "hybrid") -> list[dict]:
        """Best matches first: [{"id", "score", "text"}], at most top_k.

        score: "dense" cosine similarity; "lexical" BM25 of LanceDB's full-text index;
        "hybrid" (default) reciprocal-rank fusion of the two (LanceDB's RRFReranker)."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str; got {type(query).__name__}")
        if not query.strip():
            raise ValueError("query is empty: nothing to search")
        top_k = check_int(top_k, "top_k", min=1)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        id_col, text_col, vec_col = (self.columns[k] for k in ("id", "text", "vector"))
        if mode == "lexical":
            builder = self.table.search(query, query_type="fts", fts_columns=text_col)
            score_col = "_score"
        else:
            vector = np.asarray(embed_queries(self.model, [query]), np.float32)[0]
            builder = self._vector_builder(mode, query, vector)
            score_col = "_distance" if mode == "dense" else "_relevance_score"
        # hybrid adds its _relevance_score after fusing; the others compute theirs in the scan
        selected = [id_col, text_col] + ([score_col] if mode != "hybrid" else [])
        found = builder.limit(top_k).select(selected).to_arrow()
        scores = found[score_col].to_numpy().astype(float)
        if mode == "dense":
            scores = 1.0 - scores  # LanceDB's cosine distance -> cosine similarity
        ids, texts = found[id_col].to_pylist(), found[text_col].to_pylist()
        return [{"id": i, "score": float(s), "text": t} for i, s, t in zip(ids, scores, texts)]

    def _vector_builder(self, mode: str, query: str, vector: np.ndarray):
        vec_col, text_col = self.columns["vector"], self.columns["text"]
        if mode == "dense":
            return self.table.search(vector, vector_column_name=vec_col).distance_type("cosine")
        from lancedb.rerankers import RRFReranker  # the lancedb extra

        return (
            self.table.search(query_type="hybrid", vector_column_name=vec_col, fts_columns=text_col)
            .vector(vector)
            .text(query)
            .distance_type("cosine")
            .rerank(RRFReranker())
        )
