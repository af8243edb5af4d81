"""Hashed character n-grams: the lexical branch of `embed()`. numpy only (no torch), so every
backend and the torch-free runtime compute it the same way.

A text is NFKC-normalised, lower-cased and cut into words (runs of letters and digits); each word
is padded with one space on each side and its character n-grams (sizes `NGRAM_SIZES`) are hashed
into `buckets` slots. The text's branch vector is the sum over its distinct slots of
`(1 + log count) * table[slot]`, where `table` (buckets, dim) is learned: it holds what an IDF
weight and a projection to the embedding's width would hold, trained for ranking
(fastlm/embedding/lexical_training.py). Random or PCA projections of the same features rank far
worse (see docs/embeddings.md).

The hash is a fixed 64-bit polynomial hash of the code points with a splitmix64 finaliser, so the
slot of an n-gram is the same on every machine and in every process (Python's `hash` is not).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

NGRAM_SIZES = (3, 4, 5)
_NON_WORD = re.compile(r"[\W_]+")
_SPACE = 32
_PRIME = np.uint64(0x100000001B3)
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# Rows of `table` gathered at once when projecting: bounds the temporary (rows x dim floats).
_ROWS_PER_CHUNK = 1 << 16


def normalize_text(text: str) -> str:
    """The words of `text`, lower-cased and joined by single spaces, with one space before and
    after: the string whose n-grams are hashed."""
    words = _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).split()
    return " " + " ".join(words) + " " if words else ""


def _splitmix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@dataclass(frozen=True)
class NgramCounts:
    """Texts as sparse rows (CSR): text i holds slots[indptr[i]:indptr[i+1]] (sorted, distinct)
    with weights (1 + log count) in `weights` (float32)."""

    indptr: np.ndarray  # (n + 1,) int64
    slots: np.ndarray  # (nnz,) int64
    weights: np.ndarray  # (nnz,) float32

    def __len__(self) -> int:
        return len(self.indptr) - 1


def count_ngrams(
    texts: Sequence[str], buckets: int, sizes: Sequence[int] = NGRAM_SIZES
) -> NgramCounts:
    """The hashed n-gram counts of each text. `buckets` must be a power of two."""
    if buckets < 1 or buckets & (buckets - 1):
        raise ValueError(f"buckets must be a positive power of two, got {buckets}")
    norm = [normalize_text(t) for t in texts]
    lengths = np.fromiter((len(t) for t in norm), dtype=np.int64, count=len(norm))
    starts = np.concatenate([[0], np.cumsum(lengths)])
    if starts[-1] == 0:
        return NgramCounts(
            np.zeros(len(norm) + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        )
    codes = np.frombuffer("".join(norm).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    # spaces[k] = number of spaces among codes[:k]: an n-gram is kept when no space lies
    # strictly inside it (it stays within one padded word; texts never share one).
    spaces = np.concatenate([[0], np.cumsum(codes == _SPACE)])
    keys = []
    for n in sizes:
        count = len(codes) - n + 1
        if count <= 0:
            continue
        h = np.zeros(count, dtype=np.uint64)
        for k in range(n):
            h = h * _PRIME + codes[k : k + count]
        first = np.arange(count)
        inside = spaces[first + n - 1] - spaces[first + 1]
        keep = inside == 0
        salt = np.uint64((n * _GOLDEN) % (1 << 64))
        slot = _splitmix(h[keep] ^ salt) & np.uint64(buckets - 1)
        doc = np.searchsorted(starts, first[keep], side="right") - 1
        keys.append(doc * buckets + slot.astype(np.int64))
    key, count = np.unique(np.concatenate(keys), return_counts=True)
    doc, slot = np.divmod(key, buckets)
    indptr = np.searchsorted(doc, np.arange(len(norm) + 1), side="left").astype(np.int64)
    weights = (1.0 + np.log(count)).astype(np.float32)
    return NgramCounts(indptr, slot, weights)


def project(counts: NgramCounts, table: np.ndarray) -> np.ndarray:
    """(n, dim) float32: row i = sum of weights * table[slots] over text i's n-grams (zero for
    a text with none). One gather and one BLAS product per text (measured 3-8x faster than
    batched gathers with np.add.reduceat); a text gathers at most `_ROWS_PER_CHUNK` rows at a
    time, so memory stays bounded however long it is."""
    out = np.zeros((len(counts), table.shape[1]), dtype=np.float32)
    ip, slots, weights = counts.indptr, counts.slots, counts.weights
    for i in range(len(counts)):
        for a in range(int(ip[i]), int(ip[i + 1]), _ROWS_PER_CHUNK):
            b = min(a + _ROWS_PER_CHUNK, int(ip[i + 1]))
            out[i] += weights[a:b] @ table[slots[a:b]]
    return out


LEXICAL_FILE = "lexical.safetensors"


class LexicalBranchError(ValueError):
    """A lexical.safetensors file that is not a table this module can use."""


class LexicalBranch:
    """The learned table and its weights in the embedding: a text's embedding is
    `normalize(normalize(tower) + w * normalize(branch))` (`mix`), with w = `weight` for
    documents (the default kind, and both sides of a similarity) and `query_weight` for the
    queries of a search (`kind="query"`): a query leans more on its words than a document does.

    `table` (buckets, dim) float32; weights >= 0 (0 leaves the tower's vector unchanged);
    `query_weight` None: the same as `weight`.
    """

    def __init__(
        self,
        table: np.ndarray,
        weight: float,
        sizes: Sequence[int] = NGRAM_SIZES,
        query_weight: float | None = None,
    ):
        table = np.asarray(table)
        buckets = table.shape[0] if table.ndim == 2 else 0
        if table.ndim != 2 or buckets < 1 or buckets & (buckets - 1):
            raise LexicalBranchError(
                f"table must be (buckets, dim) with buckets a power of two, got {table.shape}"
            )
        query_weight = weight if query_weight is None else query_weight
        for name, w in (("weight", weight), ("query_weight", query_weight)):
            if not np.isfinite(w) or w < 0:
                raise LexicalBranchError(f"{name} must be a finite number >= 0, got {w}")
        self.table = np.ascontiguousarray(table, dtype=np.float32)
        self.weight = float(weight)
        self.query_weight = float(query_weight)
        self.sizes = tuple(int(n) for n in sizes)

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 unit rows (zero for a text without letters or digits)."""
        v = project(count_ngrams(texts, self.table.shape[0], self.sizes), self.table)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    def mix(self, tower: np.ndarray, texts: Sequence[str], kind: str = "document") -> np.ndarray:
        """(n, dim) float32, not normalised: the tower's unit rows plus w times the branch's
        (w of `kind`, "document" or "query"). `tower` (n, dim) is the tower's output (any
        scale; zero rows stay zero)."""
        return self.mix_vectors(tower, self.vectors(texts), kind)

    def mix_vectors(
        self, tower: np.ndarray, vectors: np.ndarray, kind: str = "document"
    ) -> np.ndarray:
        """`mix` with the branch's unit rows (n, dim) already computed (`vectors`)."""
        w = self.query_weight if kind == "query" else self.weight
        unit = tower / np.maximum(np.linalg.norm(tower, axis=1, keepdims=True), 1e-12)
        return (unit + w * vectors).astype(np.float32)

    def save(self, path, extra: dict[str, str] | None = None) -> None:
        """Write `path` (safetensors): the table as int8 rows with one float32 scale each (a
        quarter of float32's size; ranking unchanged, measured in docs/embeddings.md), the
        weight and n-gram sizes in the metadata."""

        scale = np.abs(self.table).max(axis=1) / 127.0
        q = np.round(self.table / np.maximum(scale, 1e-30)[:, None]).astype(np.int8)
        meta = {
            "weight": repr(self.weight),
            "query_weight": repr(self.query_weight),
            "ngram_sizes": ",".join(map(str, self.sizes)),
            **(extra or {}),
        }
        save_file(
            {"table_int8": q, "row_scale": scale.astype(np.float32)}, str(path), metadata=meta
        )

    @classmethod
    def load(cls, path) -> LexicalBranch:

        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                q, scale = f.get_tensor("table_int8"), f.get_tensor("row_scale")
            if q.ndim != 2 or scale.shape != (q.shape[0],):
                raise ValueError(f"table {q.shape} and row scales {scale.shape} do not match")
            table = q.astype(np.float32) * scale.astype(np.float32)[:, None]
            weight = float(meta["weight"])
            query_weight = float(meta.get("query_weight", weight))  # older files: one weight
            sizes = tuple(int(n) for n in meta.get("ngram_sizes", "3,4,5").split(","))
        except (SafetensorError, KeyError, ValueError, OSError) as err:
            raise LexicalBranchError(f"{path} is not a lexical branch file: {err}") from None
        return cls(table, weight, sizes, query_weight)
