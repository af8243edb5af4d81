"""Contrastive loss over batches larger than memory allows at once (GradCache, Gao et al. 2021).

In-batch InfoNCE gets better with more negatives per query, but a batch of 1,024 pairs through
the tower at once holds every activation of 2,048 texts. GradCache splits the step in three:
1. embed every text in chunks without building a graph -> representations (n, D);
2. compute the loss on those representations (a leaf tensor) and its gradient with respect to
   each representation;
3. embed each chunk again with a graph and back-propagate that chunk's representation gradient.
The parameter gradients equal those of the one-shot batch at ~1.3x the compute, with activations
of one chunk at a time. A tower with dropout draws its masks from torch's generator: each chunk's
generator state is kept in step 1 and put back for that chunk in step 3, so both passes drop the
same units (the gradients are those of the loss on step 1's representations), and the generator
ends where one pass over the batch leaves it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Embed = Callable[[Sequence], torch.Tensor]  # a slice of texts (token lists, ids) -> (n, D)


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


def _embed_chunks(
    embed: Embed, seqs: Sequence, chunk: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Representations (n, D) without a graph, and the generator state each chunk started from."""
    reps, states = [], []
    with torch.no_grad():
        for i in range(0, len(seqs), chunk):
            states.append(torch.get_rng_state())
            reps.append(embed(seqs[i : i + chunk]))
    return torch.cat(reps), states


def cached_pair_infonce(
    embed: Embed,
    queries: Sequence,
    docs: Sequence,
    negatives: Sequence = (),
    temperature: float = 0.05,
    chunk: int = 128,
    weight: float = 1.0,
    embed_queries: Embed | None = None,
) -> float:
    """Accumulate into the parameters' .grad the gradient of `weight * pair_infonce` over the
    whole batch, `chunk` texts at a time; returns the loss value. Call zero_grad before.
    `embed` maps a slice of docs or negatives (and of queries, unless `embed_queries` is given)
    to (n, D) with a graph: the items may be token lists or anything `embed` understands."""
    groups = [queries, docs, negatives]
    embeds = [embed_queries or embed, embed, embed]
    passes = [_embed_chunks(f, g, chunk) if len(g) else (None, []) for f, g in zip(embeds, groups)]
    after = torch.get_rng_state()
    leaves = [r.requires_grad_() if r is not None else None for r, _ in passes]
    loss = pair_infonce(leaves[0], leaves[1], temperature, leaves[2])
    (weight * loss).backward()
    for f, seqs, leaf, (_, states) in zip(embeds, groups, leaves, passes):
        for i, state in zip(range(0, len(seqs), chunk), states):
            torch.set_rng_state(state)
            out = f(seqs[i : i + chunk])
            out.backward(leaf.grad[i : i + chunk])
    torch.set_rng_state(after)
    return loss.item()
