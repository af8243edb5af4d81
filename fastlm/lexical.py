"""Lexical (BM25) scoring over a corpus (its fusion with dense scores: fastlm/fusion.py).

`LexicalIndex` glues bm25s (sparse precomputed BM25 scores) and PyStemmer; it does not
re-implement BM25. Text is lower-cased, split on `\\b\\w\\w+\\b` (single characters are never
indexed), stopwords removed, then stemmed, so "running" and "runs" both become "run".

bm25s has no incremental add: an index that gains or loses documents calls `fit` again on the
whole corpus: 4-6 s for 100k texts of 8-20 words (about 40% of it tokenising) on a busy
2-core machine. Scoring is fast: 0.02-0.06 ms a query for 10k documents in a batch.

numpy, bm25s and PyStemmer only: importing this module needs neither torch nor the extra.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastlm.fusion import top_k_scores
from fastlm.io import fsync_file
from fastlm.validation import (
    ArgumentTypeError,
    ArgumentValueError,
    check_float,
    check_int,
    check_texts,
)

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
        import bm25s  # 0.16 s of imports (scipy): paid when an index is built, not at import
        import Stemmer
    except ImportError as err:
        raise ImportError(f"lexical search needs bm25s and PyStemmer: {INSTALL_HINT}") from err
    # bm25s sets its own logger to DEBUG, which prints a line per fit through any root handler
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    _without_tqdm()
    return bm25s, Stemmer


def _without_tqdm() -> None:
    """Point bm25s's modules at their own no-op `_faketqdm`. fastlm always passes
    show_progress=False, but a disabled tqdm still takes tqdm's process-shared lock on creation:
    a process killed (-9) while holding it left every later tqdm in its parent's process tree
    waiting forever (seen: an Index saving after forked savers were killed)."""
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "bm25s" and hasattr(module, "_faketqdm"):
            module.tqdm = module._faketqdm


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
            raise ArgumentValueError(
                f"method must be one of {', '.join(METHODS)}; got {self.method!r}", "method"
            )
        if self.stopwords is not None and self.stopwords not in STOPWORDS:
            raise ArgumentValueError(
                f"stopwords must be None or in {STOPWORDS}, not {self.stopwords!r}", "stopwords"
            )
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
            raise ArgumentValueError(
                f"lexical settings must be an object, got {type(data).__name__}"
            )
        unknown = sorted(set(data) - set(names), key=str)
        if unknown:
            raise ArgumentValueError(f"unknown lexical settings {unknown}; known: {names}")
        try:
            return cls(**data)
        except TypeError as err:
            raise ArgumentValueError(f"bad lexical settings: {err}") from None


def _check_stemmer(name: object) -> None:
    if not isinstance(name, str):
        raise ArgumentTypeError(
            f"stemmer must be None or a str, got {type(name).__name__}", "stemmer"
        )
    try:
        import Stemmer
    except ImportError:
        return  # checked again when a LexicalIndex needs PyStemmer (ImportError with the hint)
    if name not in Stemmer.algorithms():
        raise ArgumentValueError(
            f"stemmer must be one of {Stemmer.algorithms()}; got {name!r}", "stemmer"
        )


class LexicalIndex:
    """BM25 over a fixed list of documents; document i of `fit` is row/column i everywhere."""

    def __init__(self, settings: LexicalSettings | None = None):
        if settings is not None and not isinstance(settings, LexicalSettings):
            raise ArgumentTypeError(
                f"settings must be LexicalSettings, got {type(settings).__name__}", "settings"
            )
        self.settings = settings if settings is not None else LexicalSettings()
        _, stemmer = _import_backend()  # the settings checked the name against PyStemmer
        self._stemmer = stemmer.Stemmer(self.settings.stemmer) if self.settings.stemmer else None
        self._bm25 = None

    def __len__(self) -> int:
        return 0 if self._bm25 is None else int(self._bm25.scores["num_docs"])

    def fit(self, texts: Sequence[str]) -> LexicalIndex:
        """Index `texts`, replacing any previous corpus (there is no incremental add)."""
        bm25s, _ = _import_backend()
        texts = check_texts(texts)
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
        queries = check_texts(queries)
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
            fsync_file(directory / name)
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
            raise ArgumentValueError(
                f"{directory} holds a lexical index saved with {saved.to_dict()}, "
                f"not {settings.to_dict()}: fit it again with the new settings",
                directory,
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
        queries = check_texts(queries)
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
        raise ArgumentValueError(f"{file} is not valid JSON: {err}", file) from None


def _read_settings(file: Path) -> LexicalSettings:
    meta = _read_json(file)
    if not isinstance(meta, dict) or meta.get("format") != SETTINGS_FORMAT:
        raise ArgumentValueError(f"{file} is not a {SETTINGS_FORMAT} settings file", file)
    try:
        return LexicalSettings.from_dict(meta.get("settings"))
    except ValueError as err:
        raise ArgumentValueError(f"{file}: {err}") from None


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
