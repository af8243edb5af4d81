"""Token-budget batching and windowed embeddings, shared by the torch engine and the runtime.

numpy only (no torch), so `fastlm.runtime` can use it on machines without PyTorch.

Why windows: the models were trained on windows of a few hundred tokens (the Transformer on
256); positions beyond that were never seen in training, and a full-length pass costs
O(T^2) attention and O(T) activation memory per text. So a text longer than the model's
embedding window (its architecture's `embed_window`) is split into near-equal windows, each
window runs through the backend's `embed_batch` like any short text, and the text's vector is
the token-weighted mean of its window vectors, taken *before* normalisation. For mean-pooled
features that mean equals the mean over all the text's tokens (each window pooled in its own
context).

Why a token budget: a batch is bounded by padded tokens (B x T), and optionally by attention
cells (B x T^2, for backends whose graphs materialise attention scores), not by a count of
texts alone, so memory per batch is bounded whatever the length mix; a single text (or window)
longer than the budget runs alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from fastlm.tokenizer import pad_batch
from fastlm.validation import check_positive_int

# run_batch(input_ids (B, T) int64, attention_mask (B, T) int64) -> (B, D) float32
RunBatch = Callable[[np.ndarray, np.ndarray], np.ndarray]

DEFAULT_BATCH_SIZE = 64  # windows (or texts) per batch at most
DEFAULT_TOKEN_BUDGET = 16_384  # padded tokens per batch: 64 windows of 256


class BatchMemoryError(MemoryError):
    """A batch could not be allocated even after token-budget batching."""


def check_size(value: object, name: str) -> int:
    """`value` as a positive int (bools are not sizes), else a typed error naming `name`."""
    return check_positive_int(value, name)


def truncate(seqs: list[list[int]], max_length: int | None) -> list[list[int]]:
    """Cut token lists to an explicit `max_length` (None: keep every token)."""
    if max_length is None:
        return seqs
    limit = check_size(max_length, "max_length")
    return [s[:limit] for s in seqs]


def plan_batches(
    lengths: Sequence[int],
    batch_size: int = DEFAULT_BATCH_SIZE,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    max_cells: int | None = None,
) -> list[list[int]]:
    """Indices of non-empty items grouped into batches, longest first.

    A batch holds at most `batch_size` items, at most `token_budget` padded tokens
    (items x its longest length) and, with `max_cells`, at most that many attention cells
    (items x longest^2). An item over a budget on its own forms a batch of one.
    """
    batch_size = check_size(batch_size, "batch_size")
    token_budget = check_size(token_budget, "token_budget")
    order = sorted((i for i in range(len(lengths)) if lengths[i] > 0), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0  # the longest (first) length of the current batch: sorted descending
    for i in order:
        rows = len(current) + 1
        fits = (
            current
            and rows <= batch_size
            and rows * width <= token_budget
            and (max_cells is None or rows * width * width <= max_cells)
        )
        if fits:
            current.append(i)
            continue
        if current:
            batches.append(current)
        current, width = [i], lengths[i]
    if current:
        batches.append(current)
    return batches


def split_windows(seq: list[int], window: int) -> list[list[int]]:
    """`seq` cut into ceil(len / window) consecutive windows of near-equal length (they differ
    by at most one token), so no window is a short tail with little context."""
    n = len(seq)
    if n <= window:
        return [seq]
    pieces = math.ceil(n / window)
    bounds = [round(k * n / pieces) for k in range(pieces + 1)]
    return [seq[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def embed_windowed(
    seqs: list[list[int]],
    dim: int,
    run_batch: RunBatch,
    window: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    progress: Callable[[Iterable], Iterable] = iter,
) -> np.ndarray:
    """(n, dim) float32 pooled features in the caller's order, NOT normalised.

    Each text is split into windows (`split_windows`); windows of all texts are batched by
    length under the token budget and run through `run_batch`; a text's row is the
    token-weighted mean of its windows' rows. Texts with no tokens keep a zero row.
    """
    window = check_size(window, "window")
    pieces: list[list[int]] = []
    owner: list[int] = []
    for i, seq in enumerate(seqs):
        for piece in split_windows(seq, window) if seq else ():
            pieces.append(piece)
            owner.append(i)
    owners = np.asarray(owner, dtype=np.int64)
    weights = np.asarray([len(p) for p in pieces], dtype=np.float64)
    total = np.zeros((len(seqs), dim), dtype=np.float64)
    for idx in progress(plan_batches(weights.astype(int).tolist(), batch_size, token_budget)):
        batch = pad_batch([pieces[j] for j in idx])
        first = int(owners[idx[0]])
        rows = _run_guarded(run_batch, batch.input_ids, batch.attention_mask, first, seqs[first])
        np.add.at(total, owners[idx], rows.astype(np.float64) * weights[idx, None])
    counts = np.bincount(owners, weights=weights, minlength=len(seqs))[:, None]
    return (total / np.maximum(counts, 1.0)).astype(np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; zero rows stay zero (never NaN)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _run_guarded(run_batch: RunBatch, ids: np.ndarray, mask: np.ndarray, text: int, seq: list):
    """run_batch, with an allocation failure turned into BatchMemoryError naming the batch's
    first (longest) text."""
    try:
        return run_batch(ids, mask)
    except (MemoryError, RuntimeError) as err:
        if not _is_allocation_failure(err):
            raise
        raise BatchMemoryError(
            f"could not allocate a batch of {ids.shape[0]} x {ids.shape[1]} tokens "
            f"(longest: texts[{text}], {len(seq)} tokens); lower token_budget or batch_size "
            f"[{type(err).__name__}: {_first_line(err)}]"
        ) from err


def _is_allocation_failure(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return any(k in text for k in ("alloc", "out of memory", "bad_alloc"))


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else ""
