"""Similarity and retrieval metrics, numpy only, as the reference tools compute them.

- STS: Spearman rank correlation (x100) of cosine similarity against gold scores (ties get
  their average rank, as scipy.stats.spearmanr does).
- Pair classification: average precision of the cosine against 0/1 labels, as
  sklearn.metrics.average_precision_score computes it (what MTEB reports as "cos_sim ap").
- Retrieval: nDCG@k and Recall@k as trec_eval computes them: graded relevance, gain = rel,
  discount 1/log2(rank + 1); the ideal ranking uses all judged relevant documents of the query;
  documents judged 0 are non-relevant; queries without a relevant document are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties averaged."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho of two equal-length sequences (nan if either is constant)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"spearman needs two 1-D sequences of one length, got {a.shape}, {b.shape}"
        )
    if len(a) < 2:
        raise ValueError("spearman needs at least 2 pairs")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom else float("nan")


def average_precision(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Average precision of ranking by score against 0/1 labels: the sum over score thresholds,
    high to low, of (recall gained) x (precision there). Tied scores are one threshold, as in
    sklearn, so the figure does not depend on the order of tied pairs."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(
            f"average_precision needs two 1-D sequences of one length, got {s.shape}, {y.shape}"
        )
    if not np.isin(y, (0, 1)).all() or not y.any():
        raise ValueError("average_precision needs labels 0 or 1, at least one of them 1")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.append(np.flatnonzero(np.diff(s)), len(s) - 1)  # last index of each tied group
    tp = np.cumsum(y)[last]  # (T,) true positives at each threshold
    precision = tp / (last + 1)
    recall_gain = np.diff(tp, prepend=0) / tp[-1]
    return float((recall_gain * precision).sum())


def ndcg_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k of one query's ranked doc ids against graded judgements {doc_id: relevance}."""
    dcg = sum(max(qrels.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((r for r in qrels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 100) -> float:
    relevant = {d for d, r in qrels.items() if r > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def top_k_ids(scores: np.ndarray, doc_ids: Sequence[str], k: int) -> list[list[str]]:
    """Per query row of scores (Q, N): the k best doc ids, ties broken by corpus order."""
    k = min(k, scores.shape[1])
    out = []
    for row in scores:
        part = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
        best = sorted(part, key=lambda j: (-row[j], j))
        out.append([doc_ids[j] for j in best])
    return out
