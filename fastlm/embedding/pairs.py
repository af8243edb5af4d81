"""Weak (query, positive[, negative]) pairs for contrastive training of the embedding tower.

The files are tab-separated with a header row naming at least `query` (or `anchor`, as NLI triple
files name it) and `positive` (an optional `negative` column is a hard negative; other columns,
e.g. `title`, are ignored), read with quoting off (texts contain `"`). A row with too few
columns, or with a column the header does not have, is an error naming the file and line; a row
whose query or positive is empty is skipped and counted, since weak pairs mined from the web
have such rows and dropping them changes nothing.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fastlm.embedding.data import DataFileError
from fastlm.lexical import LexicalIndex

# one error type for every malformed training or evaluation file
PairFileError = DataFileError


@dataclass
class PairSet:
    queries: list[str] = field(default_factory=list)
    positives: list[str] = field(default_factory=list)
    negatives: list[str | None] = field(default_factory=list)  # None where a row has none
    skipped_empty: int = 0

    def __len__(self) -> int:
        return len(self.queries)

    def extend(self, other: PairSet) -> PairSet:
        self.queries += other.queries
        self.positives += other.positives
        self.negatives += other.negatives
        self.skipped_empty += other.skipped_empty
        return self


def read_pairs_tsv(path: str | Path) -> PairSet:
    """The pairs of one file (see the module docstring for the format and what is refused)."""
    out = PairSet()
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise PairFileError(path, None, "empty file (expected a header with query, positive)")
        query_col = "query" if "query" in header or "anchor" not in header else "anchor"
        missing = {query_col, "positive"} - set(header)
        if missing:
            raise PairFileError(path, 1, f"header {header} lacks column(s) {sorted(missing)}")
        q, p = header.index(query_col), header.index("positive")
        neg = header.index("negative") if "negative" in header else None
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise PairFileError(path, line, f"{len(row)} columns, the header has {len(header)}")
            query, positive = row[q].strip(), row[p].strip()
            if not query or not positive:
                out.skipped_empty += 1
                continue
            out.queries.append(query)
            out.positives.append(positive)
            out.negatives.append((row[neg].strip() or None) if neg is not None else None)
    return out


def read_pair_files(paths: Iterable[str | Path]) -> PairSet:
    """Every pair of every file, in order."""
    out = PairSet()
    for path in paths:
        out.extend(read_pairs_tsv(path))
    return out


def mine_negatives(queries: list[str], positives: list[str], depth: int) -> list[str | None]:
    """For each query, the best BM25 hit among the file's other positives (None when the top
    `depth` hold only its own positive or copies of it): a hard negative for InfoNCE."""
    index = LexicalIndex().fit(positives)
    ids, _ = index.top_k(queries, depth)
    out = []
    for i, row in enumerate(ids):
        hit = next((j for j in row if j != i and positives[j] != positives[i]), None)
        out.append(None if hit is None else positives[hit])
    return out


def training_pairs(
    path: str | Path, fresh: Callable[..., bool], mine_depth: int = 0
) -> tuple[PairSet, int, int]:
    """(pairs, rows dropped, negatives mined) of one file for training: the rows whose query and
    positive pass `fresh` (e.g. share no text with a dev set); their negatives the file's own,
    or with mine_depth > 0 and none in the file, mined by BM25 (`mine_negatives`); a negative
    that fails `fresh` becomes None."""
    ps = read_pairs_tsv(path)
    keep = [i for i in range(len(ps)) if fresh(ps.queries[i], ps.positives[i])]
    queries, positives = [ps.queries[i] for i in keep], [ps.positives[i] for i in keep]
    negatives = [ps.negatives[i] for i in keep]
    mined = 0
    if mine_depth and all(n is None for n in negatives):
        negatives = mine_negatives(queries, positives, mine_depth)
        mined = sum(n is not None for n in negatives)
    negatives = [n if n is not None and fresh(n) else None for n in negatives]
    return PairSet(queries, positives, negatives), len(ps) - len(keep), mined
