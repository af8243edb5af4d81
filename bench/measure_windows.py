"""Which embedding window ranks long documents best? (docs/benchmarks.md, "Long documents")

    PYTHONPATH=. python bench/measure_windows.py --docs 300 --threads 1

Task (excerpt retrieval): documents of >= 600 tokens from the long-document corpus; for each,
the query is a ~400-byte excerpt from a random place inside it. Every document is embedded
with windows of W tokens (fastlm.batching.embed_windowed, token-weighted mean of windows, then
L2-normalised; "full" = one window for the whole text, the LSTM carrying its state throughout)
and the documents are ranked by cosine to each query: MRR and recall@1 per (model, window).
Also reported: the mean cosine between each window's document vector and the "full" one.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
from long_docs import build_corpus

import fastlm
from fastlm.batching import embed_windowed, l2_normalize

WINDOWS = {"transformer": [128, 256, 512, None], "lstm": [128, 256, 1024, None]}


def excerpt(doc: str, rng: random.Random, size: int = 400) -> str:
    start = rng.randrange(max(1, len(doc) - size))
    return doc[start : start + size]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    for arch, windows in WINDOWS.items():
        m = fastlm.load(arch, backend="eager", threads=args.threads)
        corpus = build_corpus(args.docs, seed=7, tokenizer=m.tokenizer)
        seqs = m.tokenizer.encode_many(corpus.texts)
        keep = [i for i, s in enumerate(seqs) if len(s) >= 600]
        docs = [seqs[i] for i in keep]
        rng = random.Random(0)
        queries = m.embed([excerpt(corpus.texts[i], rng) for i in keep])
        full = None
        for w in reversed(windows):  # "full" first: the reference for the cosine column
            win = w or max(len(s) for s in docs)
            vecs = l2_normalize(embed_windowed(docs, m.embedding_dim, m.backend.embed_batch, win))
            full = vecs if full is None else full
            ranks = _ranks(queries @ vecs.T)
            print(
                f"{arch:<12} window {str(w or 'full'):>5}: docs {len(docs)} "
                f"MRR {np.mean(1 / ranks):.3f} R@1 {np.mean(ranks == 1):.3f} "
                f"cos to full {np.mean((vecs * full).sum(1)):.4f}",
                flush=True,
            )


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of the right document (the diagonal) for each query row."""
    right = np.diag(scores)[:, None]
    return (scores > right).sum(1) + 1


if __name__ == "__main__":
    main()
