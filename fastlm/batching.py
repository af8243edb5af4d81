"""Length-sorted batching for embeddings, shared by the torch engine and the torch-free runtime.

numpy only (no torch), so `fastlm.runtime` can use it on machines without PyTorch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import numpy as np

from fastlm.tokenizer import pad_batch

# run_batch(input_ids (B, T) int64, attention_mask (B, T) int64) -> (B, D) float32
RunBatch = Callable[[np.ndarray, np.ndarray], np.ndarray]


def truncate(seqs: list[list[int]], context: int | None, max_length: int | None):
    """Cut token lists to min(context, max_length). Warns when the model's context (not an
    explicit, smaller max_length) forced the cut."""
    limit = context
    if max_length is not None:
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        limit = max_length if limit is None else min(limit, max_length)
    if limit is None:
        return seqs
    long = [i for i, s in enumerate(seqs) if len(s) > limit]
    if long and (max_length is None or max_length > limit):
        warnings.warn(
            f"{len(long)} text(s) longer than {limit} tokens were truncated "
            f"(first: index {long[0]}, {len(seqs[long[0]])} tokens)",
            stacklevel=4,
        )
    return [s[:limit] for s in seqs]


def embed_sorted(
    seqs: list[list[int]],
    dim: int,
    batch_size: int,
    run_batch: RunBatch,
    normalize: bool,
    progress: Callable[[Iterable], Iterable] = iter,
) -> np.ndarray:
    """(n, dim) float32 embeddings in the caller's order.

    Texts are sorted by length so each batch is padded only to its own longest; texts with no
    tokens keep a zero row (also after normalisation: never NaN).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    out = np.zeros((len(seqs), dim), dtype=np.float32)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for start in progress(range(0, len(order), batch_size)):
        idx = [i for i in order[start : start + batch_size] if seqs[i]]
        if idx:
            batch = pad_batch([seqs[i] for i in idx])
            out[idx] = run_batch(batch.input_ids, batch.attention_mask)
    if normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out
