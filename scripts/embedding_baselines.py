"""Reference figures for the embedding quality table: the teacher, a lexical baseline and the
LM's own mean pooling, on the same STS file and retrieval sets `fastlm evaluate` reads.

    python scripts/embedding_baselines.py --sts ../shared/data/stsb-dev/sts-dev.tsv \
        --retrieval runs/ict-valid --json runs/baselines.json

Needs the distill extra (teacher) and scikit-learn (TF-IDF over character 3-5-grams, fitted on
the texts being embedded: the classic unsupervised lexical baseline).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fastlm.embedding.data import read_sts_tsv
from fastlm.embedding.evaluate import (
    evaluate_retrieval,
    evaluate_sts,
    judged_queries,
    read_beir,
    retrieval_metrics,
)
from fastlm.embedding.metrics import spearman


class TeacherModel:
    def __init__(self, name: str):
        from fastlm.embedding.teacher import load_teacher

        self.model = load_teacher(name)

    def embed(self, texts, batch_size=64):
        return self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True)


class CharTfidf:
    """TF-IDF over character 3-5-grams (within word boundaries), fitted on `fit_texts`. Rows are
    L2-normalised scipy sparse matrices (dense ones would take GBs): scored here, with the same
    metrics `fastlm evaluate` uses."""

    def __init__(self, fit_texts):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)
        self.vec.fit(fit_texts)

    def sts(self, path: Path) -> float:
        s1, s2, gold = read_sts_tsv(path)
        u, v = self.vec.transform(s1), self.vec.transform(s2)
        return 100 * spearman(np.asarray(u.multiply(v).sum(axis=1)).ravel(), gold)

    def retrieval(self, directory: Path) -> dict:
        corpus, queries, qrels = read_beir(directory)
        doc_ids, qids = list(corpus), judged_queries(queries, qrels)
        d = self.vec.transform([corpus[i] for i in doc_ids])
        q = self.vec.transform([queries[i] for i in qids])
        return retrieval_metrics(lambda rows: (q[rows] @ d.T).toarray(), qids, doc_ids, qrels)


class LmMeanPool:
    """The LM's own top-layer mean, no tower (what `embed` computes for a checkpoint without
    embedder.safetensors)."""

    def __init__(self, name: str):
        import fastlm
        from fastlm.models.embedder import EmbeddingTower

        self.lm = fastlm.load(name, backend="eager")
        self.lm.backend.embedder = EmbeddingTower(self.lm.backend.model)

    def embed(self, texts, batch_size=64):
        return self.lm.embed(list(texts), batch_size=batch_size, show_progress_bar=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sts", type=Path, required=True)
    ap.add_argument("--retrieval", type=Path, nargs="*", default=[])
    ap.add_argument("--teacher", default="all-MiniLM-L6-v2")
    ap.add_argument("--which", nargs="+", default=["teacher", "tfidf", "lm-transformer", "lm-lstm"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = {}
    for which in args.which:
        row = {}
        if which == "tfidf":
            s1, s2, _ = read_sts_tsv(args.sts)
            row["sts"] = CharTfidf(s1 + s2).sts(args.sts)
            for d in args.retrieval:
                corpus, _, _ = read_beir(d)
                row[f"retrieval:{d.name}"] = CharTfidf(list(corpus.values())).retrieval(d)
        else:
            m = TeacherModel(args.teacher) if which == "teacher" else LmMeanPool(which[3:])
            row["sts"] = evaluate_sts(m, args.sts)["spearman"]
            for d in args.retrieval:
                row[f"retrieval:{d.name}"] = evaluate_retrieval(m, d)
        results[which] = row
        print(which, json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
