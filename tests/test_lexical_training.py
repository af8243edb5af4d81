"""Training the lexical branch's table: the torch forward equals the numpy one that ships, and
a few steps on separable pairs learn them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastlm.char_ngrams import LexicalBranch, count_ngrams
from fastlm.embedding.lexical_training import (
    LexicalConfig,
    LexicalData,
    LexicalTrainer,
    NgramBag,
    TextTable,
    idf_scaled_table,
    take,
)

TEXTS = ["alpha beta", "", "gamma delta epsilon", "?!", "zeta", "eta theta iota kappa"]


def test_take_selects_rows_in_order():
    counts = count_ngrams(TEXTS, 256)
    idx = np.array([5, 0, 1, 5, 2])
    sub = take(counts, idx)
    want = count_ngrams([TEXTS[i] for i in idx], 256)
    for a, b in zip((sub.indptr, sub.slots, sub.weights), (want.indptr, want.slots, want.weights)):
        np.testing.assert_array_equal(a, b)


def test_the_training_forward_equals_the_shipped_numpy_branch():
    counts = count_ngrams(TEXTS, 512)
    table = idf_scaled_table(counts, 512, 16, seed=0)
    with torch.no_grad():
        got = NgramBag(table)(counts).numpy()
    want = LexicalBranch(table, 1.0).vectors(TEXTS)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_text_table_counts_each_distinct_text_once():
    table = TextTable()
    a = table.ids(["x y", "z", "x y"])
    b = table.ids(["z", "w"])
    assert a.tolist() == [0, 1, 0] and b.tolist() == [1, 2]
    assert len(table.count(64, chunk=2)) == 3


def test_steps_on_pairs_learn_them():
    """Queries share no n-gram with their documents: only training can pair them."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 7)) for _ in range(400)]
    queries = [f"{words[i]} {words[i + 1]}" for i in range(0, 200, 2)]
    docs = [f"{words[200 + i]} {words[201 + i]}" for i in range(0, 200, 2)]
    table = TextTable()
    q, d = table.ids(queries), table.ids(docs)
    counts = table.count(1 << 12)
    data = LexicalData(
        counts,
        pair_query=q,
        pair_positive=d,
        pair_negative=np.full(len(q), -1),
        pair_source=np.zeros(len(q), np.int64),
    )
    bag = NgramBag(idf_scaled_table(counts, 1 << 12, 32, seed=0))
    cfg = LexicalConfig(steps=60, lr=2e-2, pair_batch=64, distill_weight=0, scored_weight=0)
    trainer = LexicalTrainer(bag, data, cfg)

    def accuracy():
        with torch.no_grad():
            sims = bag(take(counts, q)) @ bag(take(counts, d)).T
        return float((sims.argmax(1) == torch.arange(len(q))).float().mean())

    before = accuracy()
    losses = [trainer.step()["pairs"] for _ in range(cfg.steps)]
    assert before < 0.2 and accuracy() > 0.9
    assert losses[-1] < losses[0]


def test_zero_weights_switch_losses_off():
    table = TextTable()
    a, b = table.ids(["one two", "three four"]), table.ids(["one too", "three fore"])
    counts = table.count(256)
    data = LexicalData(counts, scored_a=a, scored_b=b, scored_gold=np.array([1.0, 0.0], np.float32))
    bag = NgramBag(idf_scaled_table(counts, 256, 8, 0))
    assert "scored" in LexicalTrainer(bag, data, LexicalConfig(steps=2)).step()
    off = LexicalTrainer(bag, data, LexicalConfig(steps=2, scored_weight=0.0))
    with pytest.raises(ValueError, match="no loss"):
        off.step()
