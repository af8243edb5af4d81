"""Teacher-initialised token table: PCA, norms and untouched special rows."""

from __future__ import annotations

import numpy as np
import torch

from fastlm.embedding.token_init import pca, piece_texts, teacher_token_table


def test_pca_keeps_the_largest_directions():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(200, 1)) * 10.0
    x = np.concatenate([signal, rng.normal(size=(200, 3)) * 0.1], axis=1)
    y = pca(x, 1)
    assert y.shape == (200, 1)
    assert abs(np.corrcoef(y[:, 0], signal[:, 0])[0, 1]) > 0.999


def test_special_pieces_keep_their_rows_and_norms_match(tiny_tokenizer):
    vocab = tiny_tokenizer.vocab_size
    old = torch.randn(vocab, 8)
    rng = np.random.default_rng(1)
    table, replaced = teacher_token_table(
        tiny_tokenizer, lambda texts: rng.normal(size=(len(texts), 16)), old
    )
    texts = piece_texts(tiny_tokenizer)
    assert texts[0] == "" and texts[1] == ""  # <pad>, <|endoftext|>
    assert replaced == sum(1 for t in texts if t) < vocab
    assert torch.equal(table[0], old[0]) and torch.equal(table[1], old[1])
    seen = [i for i, t in enumerate(texts) if t]
    assert not torch.equal(table[seen], old[seen])
    ratio = table[seen].norm(dim=1).mean() / old[seen].norm(dim=1).mean()
    assert abs(ratio.item() - 1.0) < 1e-5
