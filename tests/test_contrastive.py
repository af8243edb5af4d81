"""GradCache contrastive step: same loss and parameter gradients as the one-shot batch."""

from __future__ import annotations

import pytest
import torch

from fastlm.embedding.contrastive import cached_pair_infonce, pair_infonce


class BagOfTokens(torch.nn.Module):
    """A deterministic stand-in tower: mean of token rows, then a linear map."""

    def __init__(self, vocab=50, dim=8):
        super().__init__()
        self.table = torch.nn.Embedding(vocab, dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, seqs):
        return torch.stack([self.proj(self.table(torch.tensor(s)).mean(0)) for s in seqs])


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("with_negatives", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_cached_step_matches_one_shot(with_negatives, chunk):
    torch.manual_seed(0)
    model = BagOfTokens()
    g = torch.Generator().manual_seed(1)
    seqs = lambda n: [  # noqa: E731
        torch.randint(0, 50, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]
    q, d = seqs(7), seqs(7)
    neg = seqs(5) if with_negatives else []

    model.zero_grad()
    ref = pair_infonce(model(q), model(d), 0.1, model(neg) if neg else None)
    (2.0 * ref).backward()
    expected = grads(model)

    model.zero_grad()
    got = cached_pair_infonce(model, q, d, neg, temperature=0.1, chunk=chunk, weight=2.0)
    assert got == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(grads(model), expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_hard_negatives_raise_the_loss_when_they_look_like_positives():
    q = torch.eye(4)
    d = torch.eye(4)
    easy = pair_infonce(q, d, 0.1, -torch.eye(4))
    hard = pair_infonce(q, d, 0.1, torch.eye(4) + 0.01)
    assert hard > easy


class DroppedBag(BagOfTokens):
    """A stand-in tower with dropout: its two GradCache passes must drop the same units."""

    def __init__(self):
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, seqs):
        return self.drop(super().forward(seqs))


def test_dropout_masks_are_replayed_so_gradients_match_the_first_pass():
    torch.manual_seed(0)
    model = DroppedBag().train()
    q = [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10], [11, 12]]
    d = [[13, 14], [15], [16, 17, 18], [19], [20, 21]]
    chunk = 2
    # the reference: the same chunks, embedded once with a graph, in the order GradCache draws
    torch.manual_seed(5)
    reps = [torch.cat([model(g[i : i + chunk]) for i in range(0, len(g), chunk)]) for g in (q, d)]
    model.zero_grad()
    ref = pair_infonce(reps[0], reps[1], 0.1, None)
    ref.backward()
    expected, after_ref = grads(model), torch.get_rng_state()

    torch.manual_seed(5)
    model.zero_grad()
    got = cached_pair_infonce(model, q, d, temperature=0.1, chunk=chunk)
    assert got == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(grads(model), expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert torch.equal(torch.get_rng_state(), after_ref)  # the generator moved as one pass moves it


def test_queries_can_have_their_own_embedding():
    torch.manual_seed(0)
    model, query_side = BagOfTokens(), torch.nn.Linear(8, 8)
    q, d, neg = [[1, 2], [3], [4, 5, 6]], [[7], [8, 9], [10]], [[11, 12]]
    model.zero_grad(), query_side.zero_grad()
    ref = pair_infonce(query_side(model(q)), model(d), 0.1, model(neg))
    ref.backward()
    expected = grads(model) + grads(query_side)

    model.zero_grad(), query_side.zero_grad()
    got = cached_pair_infonce(
        model, q, d, neg, temperature=0.1, chunk=2, embed_queries=lambda s: query_side(model(s))
    )
    assert got == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(grads(model) + grads(query_side), expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
