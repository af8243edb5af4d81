"""`fastlm evaluate`: embedding quality on the user's own data.

- STS: a TSV with a header and columns sentence1, sentence2, score -> Spearman x100 of the
  cosine of the two embeddings against the gold scores.
- Retrieval: a BEIR-layout directory (corpus.jsonl with _id/title/text, queries.jsonl with
  _id/text, qrels.tsv or qrels/test.tsv with query-id, corpus-id, score) -> nDCG@10 and
  Recall@100 (trec_eval definitions, fastlm/embedding/metrics.py) by exact cosine search.

`model` is anything with `embed(list[str]) -> (n, D) L2-normalised numpy array`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from fastlm.embedding.data import read_sts_tsv
from fastlm.embedding.metrics import ndcg_at_k, recall_at_k, spearman, top_k_ids


def evaluate_sts(model, path: str | Path, batch_size: int = 64) -> dict:
    s1, s2, gold = read_sts_tsv(path)
    if len(gold) < 2:
        raise ValueError(f"{path}: need at least 2 scored pairs, found {len(gold)}")
    u = model.embed(s1, batch_size=batch_size)
    v = model.embed(s2, batch_size=batch_size)
    return {"spearman": 100 * spearman((u * v).sum(axis=1), gold), "pairs": len(gold)}


def _read_jsonl(path: Path, fields: tuple[str, ...]) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or any(k not in row for k in fields):
                raise ValueError(f"{path}:{n}: each line needs the keys {list(fields)}")
            rows.append(row)
    return rows


def read_beir(directory: str | Path) -> tuple[dict, dict, dict]:
    """(corpus {id: text}, queries {id: text}, qrels {qid: {doc_id: relevance}})."""
    d = Path(directory)
    qrels_path = d / "qrels.tsv" if (d / "qrels.tsv").exists() else d / "qrels" / "test.tsv"
    for p in (d / "corpus.jsonl", d / "queries.jsonl", qrels_path):
        if not p.is_file():
            raise FileNotFoundError(f"retrieval set {d} has no {p.relative_to(d)}")
    corpus = {}
    for row in _read_jsonl(d / "corpus.jsonl", ("_id", "text")):
        title = row.get("title") or ""
        corpus[str(row["_id"])] = f"{title} {row['text']}".strip() if title else row["text"]
    queries = {str(r["_id"]): r["text"] for r in _read_jsonl(d / "queries.jsonl", ("_id", "text"))}
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or len(header) < 3:
            raise ValueError(f"{qrels_path}: expected a header query-id, corpus-id, score")
        for n, row in enumerate(reader, start=2):
            if len(row) < 3:
                raise ValueError(f"{qrels_path}:{n}: expected 3 columns")
            try:
                qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
            except ValueError:
                raise ValueError(f"{qrels_path}:{n}: score {row[2]!r} is not a number") from None
    return corpus, queries, qrels


def evaluate_retrieval(model, directory: str | Path, batch_size: int = 64) -> dict:
    corpus, queries, qrels = read_beir(directory)
    qids = judged_queries(queries, qrels)
    if not qids or not corpus:
        raise ValueError(f"{directory}: no query with a relevant document, or an empty corpus")
    doc_ids = list(corpus)
    docs = model.embed([corpus[i] for i in doc_ids], batch_size=batch_size)
    qs = model.embed([queries[q] for q in qids], batch_size=batch_size)
    return retrieval_metrics(lambda rows: qs[rows] @ docs.T, qids, doc_ids, qrels)


def judged_queries(queries: dict, qrels: dict) -> list[str]:
    """Query ids with at least one relevant document (the others are skipped, as trec_eval)."""
    return [q for q in queries if any(r > 0 for r in qrels.get(q, {}).values())]


def retrieval_metrics(scores, qids: list[str], doc_ids: list[str], qrels: dict) -> dict:
    """nDCG@10 and Recall@100 x100. scores(rows: slice) -> (len(rows), N) dense similarities of
    those queries to every document, asked for 256 queries at a time (bounded memory)."""
    ndcg, recall = [], []
    for start in range(0, len(qids), 256):
        block = slice(start, start + 256)
        for q, ranked in zip(qids[block], top_k_ids(scores(block), doc_ids, 100)):
            ndcg.append(ndcg_at_k(ranked, qrels[q], 10))
            recall.append(recall_at_k(ranked, qrels[q], 100))
    return {
        "ndcg@10": 100 * float(np.mean(ndcg)),
        "recall@100": 100 * float(np.mean(recall)),
        "queries": len(qids),
        "documents": len(doc_ids),
    }
