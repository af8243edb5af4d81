"""`fastlm evaluate`: embedding quality on the user's own data.

- STS: a TSV with a header and columns sentence1, sentence2, score -> Spearman x100 of the
  cosine of the two embeddings against the gold scores.
- Pairs: a TSV with a header and columns sentence1, sentence2, label (0/1; a `score` column
  of 0/1 is read as the label) -> average precision x100 of the cosine.
- Retrieval: a BEIR-layout directory (corpus.jsonl with _id/title/text, queries.jsonl with
  _id/text, qrels.tsv or qrels/test.tsv with query-id, corpus-id, score) -> nDCG@10 and
  Recall@100 (trec_eval definitions, fastlm/embedding/metrics.py) by exact cosine search.
  TREC qrels (`query-id 0 corpus-id relevance`, whitespace-separated, no header) are read too.
  Other modes than exact dense cosine (`modes`: lexical BM25, hybrid fusion) search an
  in-memory `fastlm.Index` over the corpus; the figures are the same metrics.

Anything that would silently change a figure is refused with a DataFileError (a ValueError)
naming the file and line: NaN/inf or non-numeric scores, a missing header, a row with another
column count, duplicate ids or judgments, a judgment of an id that the corpus or the queries do
not have. Blank lines are skipped, and queries without a relevant document are left out of the
means (as trec_eval does; `queries` counts the ones scored).

`model` is anything with `embed(list[str]) -> (n, D) L2-normalised numpy array`; a LanguageModel
embeds retrieval queries with `kind="query"`, as `Index.search` does. Each task is a
reader (files -> data, all checks) and a `*_figures(model, data)`, so the command can check
every file before it loads a model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path

import numpy as np

from fastlm.embedding.data import (
    DataFileError,
    finite_number,
    read_labelled_pairs_tsv,
    read_sick,
    read_sts_tsv,
    text_lines,
)
from fastlm.embedding.metrics import (
    average_precision,
    ndcg_at_k,
    recall_at_k,
    spearman,
    top_k_ids,
)
from fastlm.index import Index
from fastlm.language_model import embed_queries

Beir = tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]  # corpus, queries, qrels
Pairs = tuple[list[str], list[str], np.ndarray]  # sentence1s, sentence2s, (N,) scores or labels


class PrecomputedEmbedder:
    """`embed(texts, kind=...)` from rows computed beforehand ({text: (D,) vector}; queries from
    `query_rows` when given), for evaluating many variants of an embedding (weights, mixes)
    without embedding the dev texts again."""

    def __init__(
        self, rows: dict[str, np.ndarray], query_rows: dict[str, np.ndarray] | None = None
    ):
        self.rows = rows
        self.query_rows = rows if query_rows is None else query_rows
        self.embeds_queries = query_rows is not None

    def embed(self, texts, batch_size: int = 64, kind: str = "document", **_) -> np.ndarray:
        rows = self.query_rows if kind == "query" else self.rows
        return np.stack([rows[t] for t in texts])


def _cosines(model, s1: list[str], s2: list[str], batch_size: int) -> np.ndarray:
    """(N,) cosine of each pair (the embeddings are L2-normalised)."""
    u = model.embed(s1, batch_size=batch_size)
    v = model.embed(s2, batch_size=batch_size)
    return (u * v).sum(axis=1)


def sts_figures(model, data: Pairs, batch_size: int = 64) -> dict:
    s1, s2, gold = data
    cos = _cosines(model, s1, s2, batch_size)
    return {"spearman": 100 * spearman(cos, gold), "pairs": len(gold)}


def pair_figures(model, data: Pairs, batch_size: int = 64) -> dict:
    s1, s2, labels = data
    cos = _cosines(model, s1, s2, batch_size)
    ap = 100 * average_precision(cos, labels)
    return {"ap": ap, "pairs": len(labels), "positives": int(labels.sum())}


def evaluate_sts(model, path: str | Path, batch_size: int = 64) -> dict:
    return sts_figures(model, read_sts_tsv(path), batch_size)


def evaluate_pairs(model, path: str | Path, batch_size: int = 64) -> dict:
    return pair_figures(model, read_labelled_pairs_tsv(path), batch_size)


# ----------------------------------------------------------------------------- BEIR reading
def _json_object(path: Path, n: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataFileError(path, n, f"not JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise DataFileError(path, n, f"not a JSON object but a {type(row).__name__}")
    if "_id" not in row or "text" not in row:
        raise DataFileError(path, n, f"each line needs the keys ['_id', 'text'], got {list(row)}")
    return row


def _record(path: Path, n: int, row: dict, with_title: bool) -> tuple[str, str]:
    """(id, text) of one JSONL record. Ids are strings or integers (str(7) == "7" is what qrels
    write); a float or null id would never match a qrels line."""
    doc_id, text, title = row["_id"], row["text"], row.get("title") if with_title else None
    if isinstance(doc_id, bool) or not isinstance(doc_id, str | int) or doc_id == "":
        raise DataFileError(path, n, f"_id {doc_id!r} is not a non-empty string or an integer")
    for key, value in (("text", text), ("title", title)):
        if value is not None and not isinstance(value, str):
            raise DataFileError(path, n, f"{key} is a {type(value).__name__}, not a string")
    if text is None:
        raise DataFileError(path, n, "text is null, not a string")
    joined = f"{title} {text}".strip() if title else text
    try:
        joined.encode("utf-8")  # JSON escapes can spell lone surrogates
    except UnicodeEncodeError:
        raise DataFileError(path, n, "text holds a lone surrogate (\\ud800-\\udfff)") from None
    return str(doc_id), joined


def _read_jsonl(path: Path, what: str, with_title: bool) -> dict[str, str]:
    """{id: text} of a corpus.jsonl (title put before the text) or queries.jsonl."""
    texts: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for n, line in text_lines(path):
        if not line.strip():
            continue
        doc_id, text = _record(path, n, _json_object(path, n, line), with_title)
        if doc_id in first_line:
            raise DataFileError(
                path, n, f"duplicate _id {doc_id!r} (first on line {first_line[doc_id]})"
            )
        first_line[doc_id] = n
        texts[doc_id] = text
    if not texts:
        raise DataFileError(path, None, f"no {what} (empty file)")
    return texts


def _relevance(path: Path, n: int, text: str) -> int:
    value = finite_number(path, n, text, "relevance")
    if not value.is_integer():
        raise DataFileError(path, n, f"relevance {text!r} is not an integer")
    return int(value)


def _is_trec_line(text: str) -> bool:
    """`query-id iteration corpus-id relevance`: 4 whitespace-separated fields, the last an
    integer. A BEIR header has 3 tab-separated fields, the last a word, so neither is taken
    for the other (a headerless BEIR line, 3 fields ending in a number, is refused)."""
    parts = text.split()
    return len(parts) == 4 and len(text.split("\t")) != 3 and parts[3].lstrip("+-").isdigit()


def _qrels_rows(path: Path) -> Iterator[tuple[int, str, str, str]]:
    """(line, query-id, corpus-id, relevance text) of a BEIR or a TREC qrels file."""
    lines = ((n, text) for n, text in text_lines(path) if text.strip())
    first = next(lines, None)
    if first is None:
        raise DataFileError(
            path, None, "empty file (expected the header query-id, corpus-id, score)"
        )
    if _is_trec_line(first[1]):
        for n, text in chain([first], lines):
            parts = text.split()
            if len(parts) != 4:
                raise DataFileError(
                    path,
                    n,
                    f"{len(parts)} columns, TREC qrels have 4 columns (query-id 0 corpus-id rel)",
                )
            yield n, parts[0], parts[2], parts[3]
        return
    header = first[1].split("\t")
    if len(header) != 3 or _is_number(header[2]):
        raise DataFileError(
            path,
            first[0],
            f"expected the header query-id<TAB>corpus-id<TAB>score, got {first[1]!r} (a file of "
            "judgments needs that header; TREC qrels have 4 columns: query-id 0 corpus-id rel)",
        )
    for n, text in lines:
        row = text.split("\t")
        if len(row) != 3:
            raise DataFileError(
                path, n, f"{len(row)} columns, expected 3 columns (query-id, corpus-id, score)"
            )
        yield n, row[0], row[1], row[2]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_qrels(path: Path, queries: dict, corpus: dict) -> dict[str, dict[str, int]]:
    """{query-id: {corpus-id: relevance}}; every id must be in queries/corpus (a mismatch, e.g.
    "01" against "1", would otherwise count as an unretrievable relevant document)."""
    qrels: dict[str, dict[str, int]] = {}
    first_line: dict[tuple[str, str], int] = {}
    for n, qid, did, rel in _qrels_rows(path):
        if qid not in queries:
            raise DataFileError(path, n, f"query-id {qid!r} is not in queries.jsonl")
        if did not in corpus:
            raise DataFileError(path, n, f"corpus-id {did!r} is not in corpus.jsonl")
        if (qid, did) in first_line:
            raise DataFileError(
                path,
                n,
                f"duplicate judgment of ({qid!r}, {did!r}) (first on line {first_line[qid, did]})",
            )
        first_line[qid, did] = n
        qrels.setdefault(qid, {})[did] = _relevance(path, n, rel)
    if not qrels:
        raise DataFileError(path, None, "no judgments (only a header)")
    if not any(r > 0 for judged in qrels.values() for r in judged.values()):
        raise DataFileError(path, None, "no judgment has relevance > 0: nothing to retrieve")
    return qrels


def read_beir(directory: str | Path) -> Beir:
    """(corpus {id: text}, queries {id: text}, qrels {qid: {doc_id: relevance}})."""
    d = Path(directory)
    qrels_path = d / "qrels.tsv" if (d / "qrels.tsv").exists() else d / "qrels" / "test.tsv"
    for p in (d / "corpus.jsonl", d / "queries.jsonl", qrels_path):
        if not p.is_file():
            raise FileNotFoundError(f"retrieval set {d} has no {p.relative_to(d)}")
    corpus = _read_jsonl(d / "corpus.jsonl", "documents", with_title=True)
    queries = _read_jsonl(d / "queries.jsonl", "queries", with_title=False)
    return corpus, queries, _read_qrels(qrels_path, queries, corpus)


def retrieval_figures(model, data: Beir, batch_size: int = 64) -> dict:
    corpus, queries, qrels = data
    qids = judged_queries(queries, qrels)
    doc_ids = list(corpus)
    docs = model.embed([corpus[i] for i in doc_ids], batch_size=batch_size)
    qs = embed_queries(model, [queries[q] for q in qids], batch_size=batch_size)
    return retrieval_metrics(lambda rows: qs[rows] @ docs.T, qids, doc_ids, qrels)


def evaluate_retrieval(model, directory: str | Path, batch_size: int = 64) -> dict:
    return retrieval_figures(model, read_beir(directory), batch_size)


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


# ----------------------------------------------------------------------------- search modes
RETRIEVAL_MODES = ("dense", "lexical", "hybrid")  # fastlm.index.MODES
SEARCH_BLOCK = 256  # queries per Index.search call: bounds its (queries, documents) scores


def retrieval_figures_by_mode(
    model, data: Beir, modes: tuple[str, ...] = ("dense",), batch_size: int = 64
) -> dict:
    """Dense alone: retrieval_figures (exact cosine), as it was before modes. Otherwise the
    figures of the first mode, plus "mode" (its name) and "modes": {mode: {"ndcg@10",
    "recall@100"}} of every mode, all searched in an exact (no ANN) in-memory Index."""
    if not modes or any(m not in RETRIEVAL_MODES for m in modes):
        raise ValueError(f"modes must be some of {list(RETRIEVAL_MODES)}, got {list(modes)}")
    if tuple(modes) == ("dense",):
        return retrieval_figures(model, data, batch_size)
    corpus, queries, qrels = data
    qids = judged_queries(queries, qrels)
    by_mode = _index_rankings(model, data, qids, modes, batch_size)
    per_mode = {mode: _ranked_figures(ranked, qids, qrels) for mode, ranked in by_mode.items()}
    first = per_mode[modes[0]]
    counts = {"queries": len(qids), "documents": len(corpus)}
    return first | counts | {"mode": modes[0], "modes": per_mode}


def _index_rankings(model, data: Beir, qids: list[str], modes, batch_size: int) -> dict:
    """{mode: [the 100 best document ids of each query in qids]} from one Index over the
    corpus (a BM25 side only when a mode needs it)."""

    corpus, queries, _ = data
    empty = [q for q in qids if not queries[q].strip()]
    if empty:
        raise ValueError(f"query {empty[0]!r} has no text: lexical and hybrid search need one")
    index = Index(model, lexical=any(m != "dense" for m in modes), ann=False)
    doc_ids = list(corpus)
    index.add([corpus[i] for i in doc_ids], doc_ids, batch_size=batch_size, progress=False)
    texts, k = [queries[q] for q in qids], min(100, len(doc_ids))
    rankings = {}
    for mode in modes:
        ranked = []
        for start in range(0, len(texts), SEARCH_BLOCK):
            hits = index.search(texts[start : start + SEARCH_BLOCK], top_k=k, mode=mode)
            ranked.extend([h["id"] for h in row] for row in hits)
        rankings[mode] = ranked
    return rankings


def _ranked_figures(ranked: list[list[str]], qids: list[str], qrels: dict) -> dict:
    ndcg = [ndcg_at_k(r, qrels[q], 10) for q, r in zip(qids, ranked, strict=True)]
    recall = [recall_at_k(r, qrels[q], 100) for q, r in zip(qids, ranked, strict=True)]
    return {"ndcg@10": 100 * float(np.mean(ndcg)), "recall@100": 100 * float(np.mean(recall))}


class DevSets:
    """Named dev sets judged together: STS-style files (Spearman x100), SICK's trial rows, and
    BEIR directories (nDCG@10 x100), named by their folder (`sick-trial` for SICK)."""

    def __init__(
        self,
        sts: Sequence[str | Path] = (),
        sick: str | Path | None = None,
        retrieval: Sequence[str | Path] = (),
    ):
        self.sets: dict[str, tuple[str, object]] = {}
        for f in sts:
            self.sets[Path(f).parent.name] = ("sts", read_sts_tsv(f))
        if sick is not None:
            self.sets["sick-trial"] = ("sts", read_sick(sick, "trial"))
        for d in retrieval:
            self.sets[Path(d).name] = ("retrieval", read_beir(d))

    def texts(self) -> list[str]:
        """Every text of every set, sorted, once."""
        out: set[str] = set()
        for kind, data in self.sets.values():
            out.update(
                data[0] + data[1] if kind == "sts" else [*data[0].values(), *data[1].values()]
            )
        return sorted(out)

    def figures(self, model) -> dict[str, float]:
        """{set name: figure, rounded to 0.01} and their "mean", for anything with embed()."""
        out = {}
        for name, (kind, data) in self.sets.items():
            fig = (
                sts_figures(model, data)["spearman"]
                if kind == "sts"
                else retrieval_figures(model, data)["ndcg@10"]
            )
            out[name] = round(fig, 2)
        if out:
            out["mean"] = round(float(np.mean(list(out.values()))), 2)
        return out
