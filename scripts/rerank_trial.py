"""Does the language model rerank the Index's top documents? A measurement, not a feature.

    python scripts/rerank_trial.py --model transformer --queries 200 --depth 10 \
        ../shared/data/retrieval-dev/arxiv-title-abstract ../shared/data/retrieval-dev/nq-wikipedia

First stage: the Index's default hybrid search. Rerank signal: the LM's query likelihood given the
document, log p(query | document) = score(document + "\\n" + query) - score(document), per query
token. Printed per set: nDCG@10 of the first stage, of the query likelihood alone over the top
`depth`, and of their fusion (min-max normalised within each query's candidates) at several LM
weights. The first `--queries` judged queries of each set (in file order) are used.
"""

from __future__ import annotations

import argparse

import numpy as np

import fastlm
from fastlm.embedding.evaluate import judged_queries, read_beir
from fastlm.embedding.metrics import ndcg_at_k
from fastlm.index import Index

LM_WEIGHTS = (0.1, 0.2, 0.3, 0.5)
MAX_DOC_CHARS = 1500  # bounds the cost of scoring; abstracts and passages mostly fit


def minmax(x: np.ndarray) -> np.ndarray:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def query_likelihood(model, query: str, docs: list[str]) -> np.ndarray:
    """(len(docs),) log p(query | doc) per query token."""
    docs = [d[:MAX_DOC_CHARS] for d in docs]
    joint = model.score([f"{d}\n{query}" for d in docs])
    alone = model.score(docs)
    n_query = max(len(model.tokenizer.encode("\n" + query)), 1)
    return np.array([(j.log_likelihood - a.log_likelihood) / n_query for j, a in zip(joint, alone)])


def trial(model, directory: str, n_queries: int, depth: int) -> dict:
    corpus, queries, qrels = read_beir(directory)
    qids = judged_queries(queries, qrels)[:n_queries]
    index = Index(model, ann=False)
    index.add([corpus[d] for d in corpus], ids=list(corpus), progress=False)
    hits = index.search([queries[q] for q in qids], top_k=depth)
    out = {"first stage": [], "LM alone": [], **{f"fused {w}": [] for w in LM_WEIGHTS}}
    for q, found in zip(qids, hits):
        ids = np.array([h["id"] for h in found])
        first = np.array([h["score"] for h in found])
        lm = query_likelihood(model, queries[q], [h["text"] for h in found])
        out["first stage"].append(ndcg_at_k(list(ids), qrels[q], 10))
        out["LM alone"].append(ndcg_at_k(list(ids[np.argsort(-lm, kind="stable")]), qrels[q], 10))
        for w in LM_WEIGHTS:
            fused = (1 - w) * minmax(first) + w * minmax(lm)
            order = ids[np.argsort(-fused, kind="stable")]
            out[f"fused {w}"].append(ndcg_at_k(list(order), qrels[q], 10))
    return {k: 100 * float(np.mean(v)) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sets", nargs="+")
    p.add_argument("--model", default="transformer")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--depth", type=int, default=10)
    args = p.parse_args()
    model = fastlm.load(args.model)
    for d in args.sets:
        row = trial(model, d, args.queries, args.depth)
        print(d.rstrip("/").split("/")[-1], "  ".join(f"{k}: {v:.1f}" for k, v in row.items()))


if __name__ == "__main__":
    main()
