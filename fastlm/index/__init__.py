"""The retrieval index: documents with ids and metadata, dense + BM25 (hybrid) search, an HNSW
graph at scale, float16 / memory-mapped storage, crash-safe versions bound to their model.

Torch-free: numpy, the tokenizer, and the optional `lexical` (bm25s) and `ann` (usearch) extras.
"""

from fastlm.index.core import Index
from fastlm.index.records import IndexModelMismatch
from fastlm.index.search import DEFAULT_MODE_HYBRID_WEIGHT, FUSIONS, MODES
from fastlm.index.store import IndexFileError

__all__ = [
    "DEFAULT_MODE_HYBRID_WEIGHT",
    "FUSIONS",
    "MODES",
    "Index",
    "IndexFileError",
    "IndexModelMismatch",
]
