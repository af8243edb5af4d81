"""A token table taken from a sentence-embedding teacher, model2vec-style (training time only).

Each BPE piece is embedded by the teacher as a text of its own, the (V, Dt) vectors are centred
and projected on their first `dim` principal axes, and rows are scaled to the norm of the table
they replace, so the encoder above sees inputs of the size it was trained on. Pieces the teacher
cannot see (special tokens, bytes that are not valid UTF-8 on their own) keep their old rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def piece_texts(tokenizer) -> list[str]:
    """The text of every token id; "" for special tokens and lone partial UTF-8 bytes."""
    out = []
    for i in range(tokenizer.vocab_size):
        text = tokenizer.decode([i])
        out.append("" if "\ufffd" in text else text.strip())
    return out


def pca(vectors: np.ndarray, dim: int) -> np.ndarray:
    """(N, D) -> (N, dim): centred vectors on their first `dim` principal axes."""
    if dim > min(vectors.shape):
        raise ValueError(f"cannot keep {dim} axes of {vectors.shape} vectors")
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:dim].T


def teacher_token_table(
    tokenizer, encode: Callable[[list[str]], np.ndarray], old: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """(V, E) table from the teacher's vectors of each piece (see module docstring) and how many
    rows it replaced; `encode(texts) -> (n, Dt)` is the teacher, `old` (V, E) the current table."""
    texts = piece_texts(tokenizer)
    seen = [i for i, t in enumerate(texts) if t]
    projected = pca(np.asarray(encode([texts[i] for i in seen]), np.float64), old.shape[1])
    projected *= old[seen].norm(dim=1).mean().item() / np.linalg.norm(projected, axis=1).mean()
    table = old.detach().clone()
    table[seen] = torch.from_numpy(projected).to(table.dtype)
    return table, len(seen)


def init_tower_tokens(tower, tokenizer, teacher: str) -> int:
    """Replace the tower's token table (in place) by the teacher's, as above; returns the number
    of rows replaced. `teacher` names a sentence-transformers model (a training-time extra)."""
    from fastlm.embedding.teacher import load_teacher

    model = load_teacher(teacher)
    encode = lambda texts: model.encode(texts, batch_size=256, normalize_embeddings=True)  # noqa: E731
    table = tower.encoder.embedding.weight
    new, replaced = teacher_token_table(tokenizer, encode, table)
    with torch.no_grad():
        table.copy_(new)
    return replaced
