"""Embeddings into a LanceDB table, searched there (extra `fastlm[lancedb]`).

    model = fastlm.load("transformer")
    ds = embed_dataset(ray.data.read_parquet("s3://bucket/corpus/"), model="transformer")
    write_lancedb(ds, "s3://bucket/lancedb", "docs", model=model)
    hits = open_lancedb_search("s3://bucket/lancedb", "docs", model).search("query", top_k=5)

The route past `fastlm.Index`, which holds its vectors in one process: a LanceDB table lives
on disk or object storage, is read without loading it, and is shared by every process that
opens it. Scoring is LanceDB's own: cosine vector search, its native full-text (BM25) index on
the text column, and its hybrid query fused by reciprocal rank. The table's schema metadata
records the model that embedded it; another model is refused, on append and on open.
"""

from fastlm.lance.search import LanceSearch, open_lancedb_search
from fastlm.lance.write import write_lancedb

__all__ = ["LanceSearch", "open_lancedb_search", "write_lancedb"]
