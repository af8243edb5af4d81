"""Reference figures for the embedding quality table: the teacher, a lexical baseline and the
LM's own mean pooling, on the same STS file and retrieval sets `fastlm evaluate` reads.

    python scripts/embedding_baselines.py --sts ../shared/data/stsb-dev/sts-dev.tsv \
        --retrieval runs/ict-valid --json docs/embedding_baselines.json

Needs the distill extra (teacher) and scikit-learn (TF-IDF over character 3-5-grams, fitted on
the texts being embedded: the classic unsupervised lexical baseline).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fastlm.embedding.data import read_sts_tsv
from fastlm.embedding.evaluate import evaluate_retrieval, evaluate_sts, read_beir


class TeacherModel:
    def __init__(self, name: str):
        from fastlm.embedding.teacher import load_teacher

        self.model = load_teacher(name)

    def embed(self, texts, batch_size=64):
        return self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True)


class CharTfidf:
    """TF-IDF over character 3-5-grams (within word boundaries), fitted on `fit_texts`."""

    def __init__(self, fit_texts):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)
        self.vec.fit(fit_texts)

    def embed(self, texts, batch_size=64):
        x = self.vec.transform(list(texts))  # rows L2-normalised already
        return _Sparse(x)


class _Sparse:
    """Just enough of an array for evaluate_*: row products and (Q, N) scores as dense."""

    def __init__(self, x):
        self.x = x

    def __mul__(self, other):
        return _RowDot(self.x.multiply(other.x).sum(axis=1))

    def __getitem__(self, s):
        return _Sparse(self.x[s])

    def __matmul__(self, other):
        return np.asarray((self.x @ other.x).todense())

    @property
    def T(self):
        return _Sparse(self.x.T)


class _RowDot:
    def __init__(self, m):
        self.v = np.asarray(m).ravel()

    def sum(self, axis=None):
        return self.v


class LmMeanPool:
    """The LM's own top-layer mean (what `embed` returned before the trained tower)."""

    def __init__(self, name: str):
        import fastlm
        from fastlm.checkpoint import load_checkpoint
        from fastlm.hub import resolve_checkpoint
        from fastlm.models.embedder import EmbeddingTower

        ck = load_checkpoint(resolve_checkpoint(name))
        ck.embedder = EmbeddingTower(ck.model)
        from fastlm.engine.backends import TorchBackend
        from fastlm.engine.model import LanguageModel

        self.lm = LanguageModel(name, TorchBackend(ck, __import__("torch").device("cpu"), None))
        del fastlm

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
    s1, s2, _ = read_sts_tsv(args.sts)
    results = {}
    for which in args.which:
        row = {}
        if which == "tfidf":
            row["sts"] = evaluate_sts(CharTfidf(s1 + s2), args.sts)["spearman"]
            for d in args.retrieval:
                corpus, queries, _ = read_beir(d)
                m = CharTfidf(list(corpus.values()))
                row[f"retrieval:{d.name}"] = evaluate_retrieval(m, d)
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
