"""Choose the Index's hybrid fusion weight on the retrieval dev sets, all of them together.

    python scripts/choose_hybrid_weight.py --model transformer --model lstm \
        ../shared/data/retrieval-dev/arxiv-title-abstract ../shared/data/retrieval-dev/nq-wikipedia

Each set is embedded once and scored by BM25 once (the Index's own lexical settings); every
weight w in 0, 0.05, ..., 1 fuses min-max normalised scores as w * dense + (1 - w) * lexical, and
reciprocal-rank fusion is shown beside them. Prints nDCG@10 x100 per set and the mean over every
(model, set); the weight with the best mean is the one to ship. Never trains on anything.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import fastlm
from fastlm.embedding.evaluate import judged_queries, read_beir, retrieval_metrics
from fastlm.fusion import fuse_rrf, fuse_weighted, top_k_scores
from fastlm.lexical import LexicalIndex

WEIGHTS = [round(w, 2) for w in np.arange(0.0, 1.0001, 0.05)]


def figures(scores: np.ndarray, qids, doc_ids, qrels) -> float:
    return retrieval_metrics(lambda rows: scores[rows], qids, doc_ids, qrels)["ndcg@10"]


def sweep(model, directory: str) -> dict:
    corpus, queries, qrels = read_beir(directory)
    qids = judged_queries(queries, qrels)
    doc_ids = list(corpus)
    texts, qtexts = [corpus[d] for d in doc_ids], [queries[q] for q in qids]
    dense = model.embed(qtexts, kind="query") @ model.embed(texts).T  # (n_q, n_docs)
    lexical = LexicalIndex().fit(texts).scores(qtexts)  # (n_q, n_docs)
    out = {w: figures(fuse_weighted(dense, lexical, w), qids, doc_ids, qrels) for w in WEIGHTS}
    ranks = [top_k_scores(s, 100)[0] for s in (dense, lexical)]
    out["rrf"] = figures(fuse_rrf(ranks, len(doc_ids)), qids, doc_ids, qrels)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sets", nargs="+")
    p.add_argument("--model", action="append", default=[])
    p.add_argument("--backend", default="auto")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    table = {}
    for name in args.model or ["transformer"]:
        model = fastlm.load(name, backend=args.backend)
        for d in args.sets:
            table[f"{name} {d.rstrip('/').split('/')[-1]}"] = sweep(model, d)
    keys = [*WEIGHTS, "rrf"]
    mean = {k: float(np.mean([row[k] for row in table.values()])) for k in keys}
    best = max(WEIGHTS, key=lambda w: mean[w])
    if args.json:
        print(json.dumps({"table": table, "mean": mean, "best_weight": best}, default=str))
        return
    print("weight " + " ".join(f"{k:>6}" for k in keys))
    for row_name, row in [*table.items(), ("mean", mean)]:
        print(f"{row_name}\n       " + " ".join(f"{row[k]:6.1f}" for k in keys))
    print(
        f"best weight on the mean: {best} ({mean[best]:.1f}; dense only {mean[1.0]:.1f}, "
        f"lexical only {mean[0.0]:.1f}, rrf {mean['rrf']:.1f})"
    )


if __name__ == "__main__":
    main()
