"""Build an inverse-cloze retrieval set (BEIR layout) from a plain-text corpus.

    python scripts/make_ict_retrieval.py ../shared/data/gutenberg_en/valid.txt --out runs/ict-valid

A query is one sentence taken out of a paragraph; its one relevant document is that paragraph
without the sentence. The corpus is those paragraphs plus unrelated paragraphs of the same text
(5,000 documents, 1,000 queries by default). Deterministic for a given --seed.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from fastlm.embedding.corpus import paragraphs, split_sentences


def build(paras: list[str], n_queries: int, n_docs: int, seed: int):
    """Queries come from paragraphs with >= 3 sentences (30-250 words); the other documents are
    paragraphs of 20-250 words."""
    rng = random.Random(seed)
    docs = [p for p in dict.fromkeys(paras) if 20 <= len(p.split()) <= 250]
    with_query = [p for p in docs if len(p.split()) >= 30 and len(split_sentences(p)) >= 3]
    if len(with_query) < n_queries or len(docs) < n_docs:
        raise ValueError(
            f"{len(with_query)}/{len(docs)} usable paragraphs, need {n_queries}/{n_docs}"
        )
    sources = rng.sample(with_query, n_queries)
    taken = set(sources)
    others = rng.sample([p for p in docs if p not in taken], n_docs - n_queries)
    corpus, queries, qrels = [], [], []
    for i, p in enumerate(sources):
        sents = split_sentences(p)
        j = rng.choice([k for k, s in enumerate(sents) if len(s.split()) >= 5] or [0])
        queries.append({"_id": f"q{i}", "text": sents[j]})
        corpus.append({"_id": f"d{i}", "title": "", "text": " ".join(sents[:j] + sents[j + 1 :])})
        qrels.append((f"q{i}", f"d{i}"))
    corpus += [{"_id": f"d{n_queries + i}", "title": "", "text": p} for i, p in enumerate(others)]
    rng.shuffle(corpus)
    return corpus, queries, qrels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("text", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with open(args.text, encoding="utf-8", errors="replace") as f:
        paras = list(paragraphs(f))
    corpus, queries, qrels = build(paras, args.queries, args.docs, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    dump = lambda rows: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)  # noqa: E731
    (args.out / "corpus.jsonl").write_text(dump(corpus), encoding="utf-8")
    (args.out / "queries.jsonl").write_text(dump(queries), encoding="utf-8")
    (args.out / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in qrels)
    )
    print(f"{len(queries)} queries, {len(corpus)} documents -> {args.out}")


if __name__ == "__main__":
    main()
