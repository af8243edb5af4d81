"""Contrastive loss over batches larger than memory allows at once (GradCache, Gao et al. 2021).

In-batch InfoNCE gets better with more negatives per query, but a batch of 1,024 pairs through
the tower at once holds every activation of 2,048 texts. GradCache splits the step in three:
1. embed every text in chunks without building a graph -> representations (n, D);
2. compute the loss on those representations (a leaf tensor) and its gradient with respect to
   each representation;
3. embed each chunk again with a graph and back-propagate that chunk's representation gradient.
The parameter gradients equal those of the one-shot batch (the tower must be deterministic: no
dropout) at ~1.3x the compute, with activations of one chunk at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Embed = Callable[[Sequence[Sequence[int]]], torch.Tensor]  # token lists -> (n, D) with grad


def pair_infonce(
    queries: torch.Tensor, docs: torch.Tensor, temperature: float, negatives: torch.Tensor | None
) -> torch.Tensor:
    """Symmetric InfoNCE: query i (B, D) belongs with doc i (B, D). Each query also competes
    against hard negatives (H, D); each doc picks its query among the B queries."""
    q, d = F.normalize(queries, dim=1), F.normalize(docs, dim=1)
    candidates = d if negatives is None else torch.cat([d, F.normalize(negatives, dim=1)])
    labels = torch.arange(len(q), device=q.device)
    q_to_d = F.cross_entropy(q @ candidates.T / temperature, labels)  # (B, B + H)
    d_to_q = F.cross_entropy(d @ q.T / temperature, labels)  # (B, B)
    return 0.5 * (q_to_d + d_to_q)


def _embed_chunks(embed: Embed, seqs: Sequence[Sequence[int]], chunk: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([embed(seqs[i : i + chunk]) for i in range(0, len(seqs), chunk)])


def cached_pair_infonce(
    embed: Embed,
    queries: Sequence[Sequence[int]],
    docs: Sequence[Sequence[int]],
    negatives: Sequence[Sequence[int]] = (),
    temperature: float = 0.05,
    chunk: int = 128,
    weight: float = 1.0,
) -> float:
    """Accumulate into the parameters' .grad the gradient of `weight * pair_infonce` over the
    whole batch, `chunk` texts at a time; returns the loss value. Call zero_grad before."""
    groups = [list(queries), list(docs), list(negatives)]
    reps = [_embed_chunks(embed, g, chunk) if g else None for g in groups]
    leaves = [r.requires_grad_() if r is not None else None for r in reps]
    loss = pair_infonce(leaves[0], leaves[1], temperature, leaves[2])
    (weight * loss).backward()
    for seqs, leaf in zip(groups, leaves):
        for i in range(0, len(seqs), chunk):
            out = embed(seqs[i : i + chunk])
            out.backward(leaf.grad[i : i + chunk])
    return loss.item()
