"""Fusion of dense and lexical retrieval scores (pure numpy, no torch, no extra).

Full-matrix helpers work on `(n_queries, n_docs)` score matrices and compose with
`top_k_scores`: `minmax_normalise`, `fuse_weighted` (weight * dense + (1 - weight) * lexical,
each side min-max normalised per query) and `fuse_rrf` (reciprocal-rank fusion).
`fuse_weighted_candidates` / `fuse_rrf_candidates` do the same when each side only returned its
top-N candidates (an approximate-neighbour index on the dense side).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fastlm.validation import ArgumentValueError, check_float, check_int


def _check_scores(scores: object, name: str) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.dtype.kind not in "iuf":
        raise ArgumentValueError(
            f"{name} must be a (n_queries, n_docs) array of numbers: {scores.shape}", name
        )
    if not np.isfinite(scores).all():
        raise ArgumentValueError(f"{name} holds NaN or infinite scores", name)
    return scores if scores.dtype.kind == "f" else scores.astype(np.float64)  # -x of a uint wraps


def minmax_normalise(scores: np.ndarray) -> np.ndarray:
    """(n_q, n_docs) float32 scaled to [0, 1] per query; a constant row becomes zeros."""
    scores = _check_scores(scores, "scores").astype(np.float64)
    low = scores.min(axis=1, keepdims=True, initial=np.inf)
    span = scores.max(axis=1, keepdims=True, initial=-np.inf) - low
    safe = np.where(span > 0, span, 1.0)  # a constant row: (x - low) is 0, divide by 1
    return ((scores - low) / safe).astype(np.float32)


def fuse_weighted(dense: np.ndarray, lexical: np.ndarray, weight: float) -> np.ndarray:
    """(n_q, n_docs) float32: weight * norm(dense) + (1 - weight) * norm(lexical), each side
    min-max normalised per query; weight 1 ranks as dense alone, 0 as lexical alone."""
    weight = check_float(weight, "weight", min=0, max=1)
    dense, lexical = _check_scores(dense, "dense"), _check_scores(lexical, "lexical")
    if dense.shape != lexical.shape:
        raise ArgumentValueError(f"dense {dense.shape} and lexical {lexical.shape} shapes differ")
    fused = weight * minmax_normalise(dense) + (1 - weight) * minmax_normalise(lexical)
    return fused.astype(np.float32)


def _check_rankings(rankings: Sequence[np.ndarray], upper: int | None) -> list[np.ndarray]:
    """Each ranking (n_q, r) int64 of doc ids best first; -1 pads a row with fewer results."""
    if isinstance(rankings, np.ndarray) or not rankings:
        raise ArgumentValueError(
            "rankings must be a non-empty list of (n_queries, r) id arrays", "rankings"
        )
    out = [np.asarray(r) for r in rankings]
    for i, r in enumerate(out):
        if r.ndim != 2 or r.dtype.kind not in "iu" or r.shape[0] != out[0].shape[0]:
            raise ArgumentValueError(
                f"rankings[{i}] must be (n_queries, r) ints, got {r.shape} {r.dtype}"
            )
        if r.size and (r.min() < -1 or (upper is not None and r.max() >= upper)):
            raise ArgumentValueError(
                f"rankings[{i}] holds an id outside [0, {upper}) (or -1 padding)"
            )
        ordered = np.sort(r, axis=1)
        if ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any():
            raise ArgumentValueError(f"rankings[{i}] lists a document twice for one query")
    return [r.astype(np.int64) for r in out]


def _rrf_terms(ranking: np.ndarray, k: float) -> np.ndarray:
    """1 / (k + rank) for each cell of a ranking, rank 1 first; 0 for -1 padding."""
    ranks = np.arange(1, ranking.shape[1] + 1, dtype=np.float64)
    return np.where(ranking >= 0, 1.0 / (k + ranks), 0.0)


def fuse_rrf(rankings: Sequence[np.ndarray], n_docs: int, k: float = 60) -> np.ndarray:
    """Reciprocal-rank fusion as (n_q, n_docs) float32 scores (use `top_k_scores` to rank).

    Document d of query q scores sum over rankings of 1 / (k + rank of d), rank 1 being the
    best; a ranking that does not list d adds 0. Each ranking is (n_q, r) doc ids best first,
    -1 padding a shorter row. Scores rather than ids, so it composes like the other fusions.
    """
    n_docs = check_int(n_docs, "n_docs", min=0)
    k = check_float(k, "k", min=0)
    rankings = _check_rankings(rankings, n_docs)
    n_q = rankings[0].shape[0]
    out = np.zeros((n_q, n_docs), np.float64)
    for ranking in rankings:
        rows, ranks = np.nonzero(ranking >= 0)  # a row lists a document once (checked)
        out[rows, ranking[rows, ranks]] += _rrf_terms(ranking, k)[rows, ranks]
    return out.astype(np.float32)


def top_k_scores(scores: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n_q, min(top_k, n_docs)) int64, scores float32) best first, ties by lower id.

    O(n_docs) a row: the k-th best score by partition, then every document above it and the
    lowest-id documents equal to it, so which of tied documents make the cut is fixed too.
    """
    scores = _check_scores(scores, "scores")
    n_q, n_docs = scores.shape
    top_k = min(check_int(top_k, "top_k", min=1), n_docs)
    ids = np.zeros((n_q, top_k), np.int64)
    if top_k == 0:
        return ids, np.zeros((n_q, 0), np.float32)
    kth = -np.partition(-scores, top_k - 1, axis=1)[:, top_k - 1]  # (n_q,)
    for row, (values, cut) in enumerate(zip(scores, kth)):
        above = np.flatnonzero(values > cut)
        ids[row, : above.size] = above
        ids[row, above.size :] = np.flatnonzero(values == cut)[: top_k - above.size]
    picked = np.take_along_axis(scores, ids, 1).astype(np.float32)
    order = np.lexsort((ids, -picked), axis=1)  # by score, then by id
    return np.take_along_axis(ids, order, 1), np.take_along_axis(picked, order, 1)


def _check_candidates(ids: object, scores: object, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64, scores float64), both (n_q, N); scores under -1 padding are ignored."""
    (ids,) = _check_rankings([ids], None)
    scores = np.asarray(scores)
    if scores.shape != ids.shape or scores.dtype.kind not in "iuf":
        raise ArgumentValueError(
            f"{name} scores {scores.shape} must be numbers shaped like its ids"
        )
    scores = np.where(ids >= 0, scores, 0.0)
    if not np.isfinite(scores).all():
        raise ArgumentValueError(f"{name} scores hold NaN or infinite values")
    return ids, scores.astype(np.float64)


def _side_over(candidates: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """One side's scores at `candidates` (sorted ids), min-max normalised; a candidate this
    side did not return takes this side's lowest score, so it normalises to 0."""
    keep = ids >= 0
    ids, scores = ids[keep], scores[keep]
    if ids.size == 0:
        return np.zeros(candidates.size)
    order = np.argsort(ids)
    ids, scores = ids[order], scores[order]
    at = np.minimum(np.searchsorted(ids, candidates), ids.size - 1)
    values = np.where(ids[at] == candidates, scores[at], scores.min())
    return minmax_normalise(values[None, :])[0].astype(np.float64)


def _best(per_query: list[tuple[np.ndarray, np.ndarray]], top_k: int):
    """(ids (n_q, top_k) int64, scores float32) of (candidate ids, fused) rows, best first,
    ties by lower id; a row with fewer than top_k candidates is padded with -1 / -inf."""
    ids = np.full((len(per_query), top_k), -1, np.int64)
    scores = np.full((len(per_query), top_k), -np.inf, np.float32)
    for row, (candidates, fused) in enumerate(per_query):
        order = np.lexsort((candidates, -fused))[:top_k]
        ids[row, : order.size], scores[row, : order.size] = candidates[order], fused[order]
    return ids, scores


def fuse_weighted_candidates(
    dense_ids: np.ndarray,
    dense_scores: np.ndarray,
    lexical_ids: np.ndarray,
    lexical_scores: np.ndarray,
    weight: float,
    top_k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted fusion when each side only returned its top-N: (ids, scores) (n_q, top_k).

    Inputs are (n_q, N_side) doc ids (best first or not, -1 padding) with their raw scores.
    Per query the candidates are the union of both sides' ids; a candidate one side did not
    return gets that side's lowest returned score (so 0 after min-max normalisation over the
    candidates); then weight * dense + (1 - weight) * lexical as in `fuse_weighted`.
    """
    weight = check_float(weight, "weight", min=0, max=1)
    top_k = check_int(top_k, "top_k", min=1)
    dense_ids, dense_scores = _check_candidates(dense_ids, dense_scores, "dense")
    lexical_ids, lexical_scores = _check_candidates(lexical_ids, lexical_scores, "lexical")
    if dense_ids.shape[0] != lexical_ids.shape[0]:
        raise ArgumentValueError(
            f"dense has {dense_ids.shape[0]} queries, lexical {lexical_ids.shape[0]}", "dense"
        )
    rows = []
    for d_ids, d_sc, l_ids, l_sc in zip(dense_ids, dense_scores, lexical_ids, lexical_scores):
        candidates = np.union1d(d_ids[d_ids >= 0], l_ids[l_ids >= 0])
        dense = _side_over(candidates, d_ids, d_sc)
        lexical = _side_over(candidates, l_ids, l_sc)
        rows.append((candidates, weight * dense + (1 - weight) * lexical))
    return _best(rows, top_k)


def fuse_rrf_candidates(
    rankings: Sequence[np.ndarray], top_k: int, k: float = 60
) -> tuple[np.ndarray, np.ndarray]:
    """`fuse_rrf` without a (n_q, n_docs) matrix: (ids, scores) (n_q, top_k) over the union
    of the rankings' ids, padded with -1 / -inf; same scores as `fuse_rrf` for those ids."""
    top_k = check_int(top_k, "top_k", min=1)
    k = check_float(k, "k", min=0)
    rankings = _check_rankings(rankings, None)
    ids = np.concatenate(rankings, axis=1)
    terms = np.concatenate([_rrf_terms(r, k) for r in rankings], axis=1)
    rows = []
    for row_ids, row_terms in zip(ids, terms):
        keep = row_ids >= 0
        candidates, where = np.unique(row_ids[keep], return_inverse=True)
        rows.append((candidates, np.bincount(where, row_terms[keep], candidates.size)))
    return _best(rows, top_k)
