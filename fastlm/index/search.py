"""How an Index ranks documents for a batch of queries: dense, lexical or hybrid, exact or
through the approximate-neighbour graph. Pure numpy over what the Index hands in; every
function returns (rows (n_q, w) int64, scores (n_q, w) float32) best first, -1 padding."""

from __future__ import annotations

import numpy as np

from fastlm.fusion import fuse_rrf_candidates, fuse_weighted, fuse_weighted_candidates, top_k_scores
from fastlm.index.vectors import dense_scores
from fastlm.validation import ArgumentValueError, check_float

MODES = ("hybrid", "dense", "lexical")
FUSIONS = ("weighted", "rrf")
# Weight of the dense side in weighted fusion (the lexical side gets 1 - weight), chosen on both
# retrieval dev sets with both shipped models (scripts/choose_hybrid_weight.py, docs/benchmarks.md
# "Hybrid weight"): the best mean nDCG@10, 85.1 at 0.55 (BM25 alone 83.5, dense alone 75.7).
# Re-run the script whenever the embeddings change.
DEFAULT_MODE_HYBRID_WEIGHT = 0.55
# Candidates each side contributes to a fused ranking (at least top_k): fusion can only
# reorder what either side returned, so a few more than top_k let the other side promote them.
MIN_CANDIDATES = 100
QUERIES_PER_CHUNK = 64  # exact scoring holds (chunk, n_docs) float32 matrices: bounds memory


def check_options(
    mode: object, fusion: object, weight: object, has_lexical: bool
) -> tuple[str, str, float]:
    """(mode, fusion, weight) of a search call, defaults filled in, or a ValueError naming the
    argument and its choices."""
    if mode is None:
        mode = "hybrid" if has_lexical else "dense"
    if mode not in MODES:
        raise ArgumentValueError(
            f"mode must be one of {', '.join(MODES)} (or None); got {mode!r}", "mode"
        )
    if fusion not in FUSIONS:
        raise ArgumentValueError(
            f"fusion must be one of {', '.join(FUSIONS)}; got {fusion!r}", "fusion"
        )
    if mode != "dense" and not has_lexical:
        raise ArgumentValueError(
            f"mode {mode!r} needs a lexical side: this index was built with lexical=False "
            "(use mode='dense', or build it with lexical=True)"
        )
    if weight is not None and (mode != "hybrid" or fusion != "weighted"):
        raise ArgumentValueError(
            f"weight applies to mode='hybrid', fusion='weighted' only (got {mode!r}, {fusion!r})"
        )
    weight = DEFAULT_MODE_HYBRID_WEIGHT if weight is None else weight
    return mode, fusion, check_float(weight, "weight", min=0, max=1)


def rank(index, queries: list[str], top_k: int, mode: str, fusion: str, weight: float):
    """(rows, scores) of `queries` on `index` (an Index with at least one document)."""
    if mode == "lexical":
        return index._lexical_index().top_k(queries, top_k)
    batch = max(1, min(len(queries), 64))
    vecs = index._embed(queries, batch_size=batch, progress=False, queries=True)
    ann = index._ann_index()
    parts = []
    for start in range(0, len(queries), QUERIES_PER_CHUNK):
        chunk = slice(start, start + QUERIES_PER_CHUNK)
        parts.append(
            _rank_chunk(index, ann, queries[chunk], vecs[chunk], top_k, mode, fusion, weight)
        )
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _rank_chunk(index, ann, queries, vecs, top_k, mode, fusion, weight):
    n_candidates = max(top_k, MIN_CANDIDATES)
    if mode == "dense":
        return ann.search(vecs, top_k) if ann else top_k_scores(_exact(index, vecs), top_k)
    lexical = index._lexical_index()
    if fusion == "weighted" and ann is None:  # every document scored on both sides
        fused = fuse_weighted(_exact(index, vecs), lexical.scores(queries), weight)
        return top_k_scores(fused, top_k)
    if ann is not None:
        d_rows, d_scores = ann.search(vecs, n_candidates)
    else:
        d_rows, d_scores = top_k_scores(_exact(index, vecs), n_candidates)
    l_rows, l_scores = lexical.top_k(queries, n_candidates)
    if fusion == "rrf":
        # a document sharing no word with the query is no lexical match, whatever its rank
        l_rows = np.where(l_scores > 0, l_rows, -1)
        return fuse_rrf_candidates([d_rows, l_rows], top_k)
    return fuse_weighted_candidates(d_rows, d_scores, l_rows, l_scores, weight, top_k)


def _exact(index, vecs: np.ndarray) -> np.ndarray:
    return dense_scores(index._vectors, vecs)
