"""Lexical (BM25) scoring over a corpus, and the fusion of lexical with dense scores.

`LexicalIndex` glues bm25s (sparse precomputed BM25 scores) and PyStemmer; it does not
re-implement BM25. Text is lower-cased, split on `\\b\\w\\w+\\b` (single characters are never
indexed), stopwords removed, then stemmed, so "running" and "runs" both become "run".

bm25s has no incremental add: an index that gains or loses documents calls `fit` again on the
whole corpus: 4-6 s for 100k texts of 8-20 words (about 40% of it tokenising) on a busy
2-core machine. Scoring is fast: 0.02-0.06 ms a query for 10k documents in a batch.

Fusion helpers are pure numpy and work on `(n_queries, n_docs)` score matrices, which compose
with `top_k_scores`; `fuse_weighted_candidates` / `fuse_rrf_candidates` do the same when each
side only returned its top-N candidates (an ANN on the dense side).

numpy, bm25s and PyStemmer only: importing this module needs neither torch nor the extra.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastlm.tokenizer import _check_texts
from fastlm.validation import check_float, check_int

METHODS = ("robertson", "lucene", "atire", "bm25l", "bm25+")
# The names bm25s.tokenize accepts for its built-in stopword lists (None: keep every word).
STOPWORDS = (
    "en", "english", "en_plus", "english_plus", "de", "german", "nl", "dutch", "fr", "french",
    "es", "spanish", "pt", "portuguese", "it", "italian", "ru", "russian", "sv", "swedish",
    "no", "norwegian", "zh", "chinese", "tr", "turkish", "ko", "korean", "da", "danish",
)  # fmt: skip
INSTALL_HINT = 'pip install "fastlm[lexical]"'
SETTINGS_FILE = "bm25.settings.json"
SETTINGS_FORMAT = "fastlm-lexical/1"
# bm25s's own file names, prefixed so they can sit flat beside other files of an index version.
BM25_NAMES = {
    "data_name": "bm25.data.npy",
    "indices_name": "bm25.indices.npy",
    "indptr_name": "bm25.indptr.npy",
    "vocab_name": "bm25.vocab.json",
    "params_name": "bm25.params.json",
    "nnoc_name": "bm25.nonoccurrence.npy",  # written by bm25s for bm25l / bm25+ only
}
ALL_FILES = (SETTINGS_FILE, *BM25_NAMES.values())
QUERIES_PER_CHUNK = 64  # bounds the gathered posting lists of `scores` (memory), not its speed


def _import_backend():
    """(bm25s, Stemmer). Imported here, not at the top, so `import fastlm.lexical` works
    without the optional extra (and without bm25s's import time)."""
    try:
        import bm25s
        import Stemmer
    except ImportError as err:
        raise ImportError(f"lexical search needs bm25s and PyStemmer: {INSTALL_HINT}") from err
    return bm25s, Stemmer


@dataclass(frozen=True)
class LexicalSettings:
    """How documents and queries are tokenised and scored; saved with the index."""

    k1: float = 1.5  # term-frequency saturation (Lucene's default)
    b: float = 0.75  # document-length normalisation in [0, 1] (Lucene's default)
    stemmer: str | None = "english"  # a PyStemmer algorithm; None: no stemming
    stopwords: str | None = "en"  # a bm25s stopword list (STOPWORDS); None: keep every word
    method: str = "lucene"  # a bm25s BM25 variant (METHODS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "k1", check_float(self.k1, "k1", min=0))
        object.__setattr__(self, "b", check_float(self.b, "b", min=0, max=1))
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.stopwords is not None and self.stopwords not in STOPWORDS:
            raise ValueError(f"stopwords must be None or in {STOPWORDS}, not {self.stopwords!r}")
        if self.stemmer is not None:
            _check_stemmer(self.stemmer)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> LexicalSettings:
        """Settings from `to_dict()`'s output (e.g. read from a manifest): any defect is a
        ValueError, wrong types included, since the dictionary is data, not code."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, dict):
            raise ValueError(f"lexical settings must be an object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(names), key=str)
        if unknown:
            raise ValueError(f"unknown lexical settings {unknown}; known: {names}")
        try:
            return cls(**data)
        except TypeError as err:
            raise ValueError(f"bad lexical settings: {err}") from None


def _check_stemmer(name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"stemmer must be None or a str, got {type(name).__name__}")
    try:
        import Stemmer
    except ImportError:
        return  # checked again when a LexicalIndex needs PyStemmer (ImportError with the hint)
    if name not in Stemmer.algorithms():
        raise ValueError(f"stemmer must be one of {Stemmer.algorithms()}; got {name!r}")


class LexicalIndex:
    """BM25 over a fixed list of documents; document i of `fit` is row/column i everywhere."""

    def __init__(self, settings: LexicalSettings | None = None):
        if settings is not None and not isinstance(settings, LexicalSettings):
            raise TypeError(f"settings must be LexicalSettings, got {type(settings).__name__}")
        self.settings = settings if settings is not None else LexicalSettings()
        _, stemmer = _import_backend()  # the settings checked the name against PyStemmer
        self._stemmer = stemmer.Stemmer(self.settings.stemmer) if self.settings.stemmer else None
        self._bm25 = None

    def __len__(self) -> int:
        return 0 if self._bm25 is None else int(self._bm25.scores["num_docs"])

    def fit(self, texts: Sequence[str]) -> LexicalIndex:
        """Index `texts`, replacing any previous corpus (there is no incremental add)."""
        bm25s, _ = _import_backend()
        texts = _check_texts(texts)
        ids, vocab = self._tokenize(texts, return_ids=True)
        vocab = dict(vocab)
        vocab.setdefault("", len(vocab))  # bm25s needs a non-empty vocabulary ("" matches nothing)
        s = self.settings
        bm25 = bm25s.BM25(k1=s.k1, b=s.b, method=s.method, backend="numpy")
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            # no token at all (no documents, or only stopwords): bm25s averages an empty
            # length list; the result is unused since no score is computed from it
            warnings.simplefilter("ignore", RuntimeWarning)
            bm25.index((ids, vocab), show_progress=False)
        self._bm25 = bm25
        return self

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """(n_queries, n_docs) float32: the exact BM25 score of every document for each query.

        A query with no indexed token (empty, only stopwords or unknown words) scores 0
        everywhere. A repeated query word counts once per occurrence, as in bm25s.
        """
        query_ids = self._query_ids(queries)
        out = np.zeros((len(query_ids), len(self)), np.float32)
        for start in range(0, len(query_ids), QUERIES_PER_CHUNK):
            stop = start + QUERIES_PER_CHUNK
            self._add_scores(query_ids[start:stop], out[start:stop])
        return out

    def top_k(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n_q, min(k, n_docs)) int64, scores float32), best first, ties by lower id
        (a query with no indexed token: the first k documents, all scoring 0).

        `top_k_scores` over `scores`, a chunk of queries at a time, rather than bm25s's
        `retrieve`: the same scores, ties in a fixed order, and about ten times faster
        (retrieve's np.argpartition is slow on rows that are mostly zeros).
        """
        check_int(k, "k", min=1)
        self._check_fitted()
        queries = _check_texts(queries)
        width = min(k, len(self))
        ids = np.zeros((len(queries), width), np.int64)
        scores = np.zeros((len(queries), width), np.float32)
        for start in range(0, len(queries) if width else 0, QUERIES_PER_CHUNK):
            stop = start + QUERIES_PER_CHUNK
            ids[start:stop], scores[start:stop] = top_k_scores(self.scores(queries[start:stop]), k)
        return ids, scores

    def save(self, directory: str | os.PathLike) -> list[str]:
        """Write the index into `directory` (created if needed), every file fsynced; returns
        the file names written (relative, sorted) for the caller's manifest."""
        self._check_fitted()
        directory = Path(directory)
        self._bm25.save(directory, show_progress=False, **BM25_NAMES)
        meta = {"format": SETTINGS_FORMAT, "settings": self.settings.to_dict()}
        (directory / SETTINGS_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if self._bm25.nonoccurrence_array is None:  # an earlier bm25l / bm25+ save's is stale
            (directory / BM25_NAMES["nnoc_name"]).unlink(missing_ok=True)
        written = LexicalIndex.files(directory)
        for name in written:
            fd = os.open(directory / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return written

    @staticmethod
    def files(directory: str | os.PathLike) -> list[str]:
        """The lexical index files present in `directory` (relative names, sorted)."""
        return sorted(name for name in ALL_FILES if (Path(directory) / name).is_file())

    @classmethod
    def load(
        cls, directory: str | os.PathLike, settings: LexicalSettings | None = None
    ) -> LexicalIndex:
        """The index `save` wrote in `directory`. With `settings`, an index saved with other
        settings is refused (ValueError); a missing file is a FileNotFoundError, a defective one
        a ValueError naming it."""
        bm25s, _ = _import_backend()
        directory = Path(directory)
        saved = _read_settings(directory / SETTINGS_FILE)
        if settings is not None and settings != saved:
            raise ValueError(
                f"{directory} holds a lexical index saved with {saved.to_dict()}, "
                f"not {settings.to_dict()}: fit it again with the new settings"
            )
        _check_params(directory / BM25_NAMES["params_name"], saved)
        try:
            bm25 = bm25s.BM25.load(directory, mmap=False, backend="numpy", **BM25_NAMES)
        except (ValueError, TypeError, KeyError, AttributeError, EOFError) as err:
            # what a defective .npy / vocabulary raises inside bm25s (a missing file stays
            # a FileNotFoundError)
            raise ValueError(f"{directory}: the bm25s files cannot be read: {err}") from None
        _check_arrays(bm25, directory)
        index = cls(saved)
        index._bm25 = bm25
        return index

    def _tokenize(self, texts: list[str], return_ids: bool):
        bm25s, _ = _import_backend()
        return bm25s.tokenize(
            texts,
            stopwords=self.settings.stopwords,
            stemmer=self._stemmer,
            return_ids=return_ids,
            show_progress=False,
        )

    def _query_ids(self, queries: Sequence[str]) -> list[list[int]]:
        """Vocabulary ids of each query's tokens, unknown tokens dropped, repeats kept."""
        self._check_fitted()
        queries = _check_texts(queries)
        vocab = self._bm25.vocab_dict
        tokens = self._tokenize(queries, return_ids=False) if queries else []
        return [[vocab[t] for t in q if t and t in vocab] for q in tokens]

    def _add_scores(self, query_ids: list[list[int]], out: np.ndarray) -> None:
        """Add to `out` (len(query_ids), n_docs) the posting list of every query token, once per
        occurrence, in one np.add.at (bm25s's matrix is CSC: token id -> (doc ids, scores))."""
        scores, n_docs = self._bm25.scores, len(self)
        rows = np.repeat(np.arange(len(query_ids)), [len(q) for q in query_ids])
        tokens = np.fromiter((t for q in query_ids for t in q), np.int64, len(rows))
        starts = scores["indptr"][tokens]
        lengths = scores["indptr"][tokens + 1] - starts
        first = np.cumsum(lengths) - lengths  # where each token's postings start in the gather
        positions = np.repeat(starts - first, lengths) + np.arange(lengths.sum())
        cells = np.repeat(rows * n_docs, lengths) + scores["indices"][positions]
        weights = scores["data"][positions]
        assert out.flags.c_contiguous  # so that reshape(-1) is a view of it, not a copy
        np.add.at(out.reshape(-1), cells, weights)
        nonoccurrence = self._bm25.nonoccurrence_array  # bm25l / bm25+: a score for absence
        if nonoccurrence is not None:
            out += np.bincount(rows, nonoccurrence[tokens], len(query_ids))[:, None]

    def _check_fitted(self) -> None:
        if self._bm25 is None:
            raise ValueError("the lexical index is empty: call fit(texts) or load(directory) first")


def _read_json(file: Path, max_bytes: int = 1 << 16) -> object:
    with open(file, "rb") as f:  # a missing file: FileNotFoundError naming it
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise ValueError(f"{file} is larger than {max_bytes} bytes: not a lexical index file")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from None


def _read_settings(file: Path) -> LexicalSettings:
    meta = _read_json(file)
    if not isinstance(meta, dict) or meta.get("format") != SETTINGS_FORMAT:
        raise ValueError(f"{file} is not a {SETTINGS_FORMAT} settings file")
    try:
        return LexicalSettings.from_dict(meta.get("settings"))
    except ValueError as err:
        raise ValueError(f"{file}: {err}") from None


def _check_params(file: Path, settings: LexicalSettings) -> None:
    """bm25s's parameter file agrees with the settings and holds nothing bm25s would choke on."""
    params = _read_json(file)
    known = {"k1", "b", "delta", "method", "idf_method", "dtype", "int_dtype", "num_docs"}
    known |= {"version", "backend"}
    ok = isinstance(params, dict) and set(params) <= known
    ok = ok and all(params.get(n) == getattr(settings, n) for n in ("k1", "b", "method"))
    ok = ok and params.get("idf_method") == settings.method and params.get("dtype") == "float32"
    num_docs = params.get("num_docs") if ok else None
    if not isinstance(num_docs, int) or isinstance(num_docs, bool) or num_docs < 0:
        raise ValueError(f"{file} does not match {settings.to_dict()} or is not a bm25s file")


def _check_arrays(bm25, directory: Path) -> None:
    """The loaded sparse score matrix is consistent, so no query can index outside it."""
    s, vocab = bm25.scores, bm25.vocab_dict
    data, indices, indptr = s["data"], s["indices"], s["indptr"]
    n_vocab = len(vocab)
    problems = {
        "data": data.ndim != 1 or data.dtype != np.float32 or not np.isfinite(data).all(),
        "indices": indices.ndim != 1
        or indices.shape != data.shape
        or indices.dtype.kind not in "iu"
        or (indices.size > 0 and not 0 <= indices.min() <= indices.max() < s["num_docs"]),
        "indptr": indptr.ndim != 1
        or indptr.dtype.kind not in "iu"
        or indptr.shape != (n_vocab + 1,)
        or indptr[0] != 0
        or indptr[-1] != data.size
        or bool((np.diff(indptr) < 0).any()),
        "vocab": "" not in vocab or set(vocab.values()) != set(range(n_vocab)),
        "params": bm25.nonoccurrence_array is not None
        and bm25.nonoccurrence_array.shape != (n_vocab,),
    }
    for part, bad in problems.items():
        if bad:
            name = BM25_NAMES["nnoc_name" if part == "params" else f"{part}_name"]
            raise ValueError(f"{directory / name} is inconsistent with the other lexical files")


# ---- fusion (pure numpy) ------------------------------------------------------------------


def _check_scores(scores: object, name: str) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a (n_queries, n_docs) array of numbers: {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} holds NaN or infinite scores")
    return scores if scores.dtype.kind == "f" else scores.astype(np.float64)  # -x of a uint wraps


def minmax_normalise(scores: np.ndarray) -> np.ndarray:
    """(n_q, n_docs) float32 scaled to [0, 1] per query; a constant row becomes zeros."""
    scores = _check_scores(scores, "scores").astype(np.float64)
    low = scores.min(axis=1, keepdims=True, initial=np.inf)
    span = scores.max(axis=1, keepdims=True, initial=-np.inf) - low
    safe = np.where(span > 0, span, 1.0)  # a constant row: (x - low) is 0, divide by 1
    return ((scores - low) / safe).astype(np.float32)


def fuse_weighted(dense: np.ndarray, lexical: np.ndarray, weight: float) -> np.ndarray:
    """(n_q, n_docs) float32: weight * norm(dense) + (1 - weight) * norm(lexical), each side
    min-max normalised per query; weight 1 ranks as dense alone, 0 as lexical alone."""
    weight = check_float(weight, "weight", min=0, max=1)
    dense, lexical = _check_scores(dense, "dense"), _check_scores(lexical, "lexical")
    if dense.shape != lexical.shape:
        raise ValueError(f"dense {dense.shape} and lexical {lexical.shape} shapes differ")
    fused = weight * minmax_normalise(dense) + (1 - weight) * minmax_normalise(lexical)
    return fused.astype(np.float32)


def _check_rankings(rankings: Sequence[np.ndarray], upper: int | None) -> list[np.ndarray]:
    """Each ranking (n_q, r) int64 of doc ids best first; -1 pads a row with fewer results."""
    if isinstance(rankings, np.ndarray) or not rankings:
        raise ValueError("rankings must be a non-empty list of (n_queries, r) id arrays")
    out = [np.asarray(r) for r in rankings]
    for i, r in enumerate(out):
        if r.ndim != 2 or r.dtype.kind not in "iu" or r.shape[0] != out[0].shape[0]:
            raise ValueError(f"rankings[{i}] must be (n_queries, r) ints, got {r.shape} {r.dtype}")
        if r.size and (r.min() < -1 or (upper is not None and r.max() >= upper)):
            raise ValueError(f"rankings[{i}] holds an id outside [0, {upper}) (or -1 padding)")
        ordered = np.sort(r, axis=1)
        if ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any():
            raise ValueError(f"rankings[{i}] lists a document twice for one query")
    return [r.astype(np.int64) for r in out]


def _rrf_terms(ranking: np.ndarray, k: float) -> np.ndarray:
    """1 / (k + rank) for each cell of a ranking, rank 1 first; 0 for -1 padding."""
    ranks = np.arange(1, ranking.shape[1] + 1, dtype=np.float64)
    return np.where(ranking >= 0, 1.0 / (k + ranks), 0.0)


def fuse_rrf(rankings: Sequence[np.ndarray], n_docs: int, k: float = 60) -> np.ndarray:
    """Reciprocal-rank fusion as (n_q, n_docs) float32 scores (use `top_k_scores` to rank).

    Document d of query q scores sum over rankings of 1 / (k + rank of d), rank 1 being the
    best; a ranking that does not list d adds 0. Each ranking is (n_q, r) doc ids best first,
    -1 padding a shorter row. Scores rather than ids, so it composes like the other fusions.
    """
    n_docs = check_int(n_docs, "n_docs", min=0)
    k = check_float(k, "k", min=0)
    rankings = _check_rankings(rankings, n_docs)
    n_q = rankings[0].shape[0]
    out = np.zeros((n_q, n_docs), np.float64)
    for ranking in rankings:
        rows, ranks = np.nonzero(ranking >= 0)  # a row lists a document once (checked)
        out[rows, ranking[rows, ranks]] += _rrf_terms(ranking, k)[rows, ranks]
    return out.astype(np.float32)


def top_k_scores(scores: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n_q, min(top_k, n_docs)) int64, scores float32) best first, ties by lower id.

    O(n_docs) a row: the k-th best score by partition, then every document above it and the
    lowest-id documents equal to it, so which of tied documents make the cut is fixed too.
    """
    scores = _check_scores(scores, "scores")
    n_q, n_docs = scores.shape
    top_k = min(check_int(top_k, "top_k", min=1), n_docs)
    ids = np.zeros((n_q, top_k), np.int64)
    if top_k == 0:
        return ids, np.zeros((n_q, 0), np.float32)
    kth = -np.partition(-scores, top_k - 1, axis=1)[:, top_k - 1]  # (n_q,)
    for row, (values, cut) in enumerate(zip(scores, kth)):
        above = np.flatnonzero(values > cut)
        ids[row, : above.size] = above
        ids[row, above.size :] = np.flatnonzero(values == cut)[: top_k - above.size]
    picked = np.take_along_axis(scores, ids, 1).astype(np.float32)
    order = np.lexsort((ids, -picked), axis=1)  # by score, then by id
    return np.take_along_axis(ids, order, 1), np.take_along_axis(picked, order, 1)


def _check_candidates(ids: object, scores: object, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64, scores float64), both (n_q, N); scores under -1 padding are ignored."""
    (ids,) = _check_rankings([ids], None)
    scores = np.asarray(scores)
    if scores.shape != ids.shape or scores.dtype.kind not in "iuf":
        raise ValueError(f"{name} scores {scores.shape} must be numbers shaped like its ids")
    scores = np.where(ids >= 0, scores, 0.0)
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} scores hold NaN or infinite values")
    return ids, scores.astype(np.float64)


def _side_over(candidates: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """One side's scores at `candidates` (sorted ids), min-max normalised; a candidate this
    side did not return takes this side's lowest score, so it normalises to 0."""
    keep = ids >= 0
    ids, scores = ids[keep], scores[keep]
    if ids.size == 0:
        return np.zeros(candidates.size)
    order = np.argsort(ids)
    ids, scores = ids[order], scores[order]
    at = np.minimum(np.searchsorted(ids, candidates), ids.size - 1)
    values = np.where(ids[at] == candidates, scores[at], scores.min())
    return minmax_normalise(values[None, :])[0].astype(np.float64)


def _best(per_query: list[tuple[np.ndarray, np.ndarray]], top_k: int):
    """(ids (n_q, top_k) int64, scores float32) of (candidate ids, fused) rows, best first,
    ties by lower id; a row with fewer than top_k candidates is padded with -1 / -inf."""
    ids = np.full((len(per_query), top_k), -1, np.int64)
    scores = np.full((len(per_query), top_k), -np.inf, np.float32)
    for row, (candidates, fused) in enumerate(per_query):
        order = np.lexsort((candidates, -fused))[:top_k]
        ids[row, : order.size], scores[row, : order.size] = candidates[order], fused[order]
    return ids, scores


def fuse_weighted_candidates(
    dense_ids: np.ndarray,
    dense_scores: np.ndarray,
    lexical_ids: np.ndarray,
    lexical_scores: np.ndarray,
    weight: float,
    top_k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted fusion when each side only returned its top-N: (ids, scores) (n_q, top_k).

    Inputs are (n_q, N_side) doc ids (best first or not, -1 padding) with their raw scores.
    Per query the candidates are the union of both sides' ids; a candidate one side did not
    return gets that side's lowest returned score (so 0 after min-max normalisation over the
    candidates); then weight * dense + (1 - weight) * lexical as in `fuse_weighted`.
    """
    weight = check_float(weight, "weight", min=0, max=1)
    top_k = check_int(top_k, "top_k", min=1)
    dense_ids, dense_scores = _check_candidates(dense_ids, dense_scores, "dense")
    lexical_ids, lexical_scores = _check_candidates(lexical_ids, lexical_scores, "lexical")
    if dense_ids.shape[0] != lexical_ids.shape[0]:
        raise ValueError(f"dense has {dense_ids.shape[0]} queries, lexical {lexical_ids.shape[0]}")
    rows = []
    for d_ids, d_sc, l_ids, l_sc in zip(dense_ids, dense_scores, lexical_ids, lexical_scores):
        candidates = np.union1d(d_ids[d_ids >= 0], l_ids[l_ids >= 0])
        dense = _side_over(candidates, d_ids, d_sc)
        lexical = _side_over(candidates, l_ids, l_sc)
        rows.append((candidates, weight * dense + (1 - weight) * lexical))
    return _best(rows, top_k)


def fuse_rrf_candidates(
    rankings: Sequence[np.ndarray], top_k: int, k: float = 60
) -> tuple[np.ndarray, np.ndarray]:
    """`fuse_rrf` without a (n_q, n_docs) matrix: (ids, scores) (n_q, top_k) over the union
    of the rankings' ids, padded with -1 / -inf; same scores as `fuse_rrf` for those ids."""
    top_k = check_int(top_k, "top_k", min=1)
    k = check_float(k, "k", min=0)
    rankings = _check_rankings(rankings, None)
    ids = np.concatenate(rankings, axis=1)
    terms = np.concatenate([_rrf_terms(r, k) for r in rankings], axis=1)
    rows = []
    for row_ids, row_terms in zip(ids, terms):
        keep = row_ids >= 0
        candidates, where = np.unique(row_ids[keep], return_inverse=True)
        rows.append((candidates, np.bincount(where, row_terms[keep], candidates.size)))
    return _best(rows, top_k)
