"""Approximate nearest neighbours over unit vectors: an HNSW graph (usearch) keyed by row number.

`AnnIndex` glues usearch; it does not re-implement HNSW. Vectors are L2-normalised float32
embeddings (n, d); each carries the int64 row number of its document, and a search returns row
numbers and inner products (cosine, for unit queries), best first.

    ann = AnnIndex.build(vectors, rows=np.arange(len(vectors)))
    rows, scores = ann.search(queries, k=10)  # (q, 10) int64, (q, 10) float32

A saved index is one usearch file, written atomically; `load(path, view=True)` memory-maps it,
so opening costs milliseconds and the pages are read on demand. A view is read-only: `add` and
`remove` on it raise `ValueError` (load with view=False to edit).

Why usearch and not faiss-cpu (docs/benchmarks.md, "Approximate neighbours: usearch vs
faiss-cpu (choice)"): on 100k clustered 256-d vectors both reach recall@10 >= 0.98, and faiss is
faster (0.08 vs 0.26 ms per query at batch 1, half the build CPU); but faiss's HNSW cannot remove
a vector, its plain IO_FLAG_MMAP load copies the whole file, and adding to a truly mapped one
(IO_FLAG_MMAP_IFC) aborts the process. usearch removes, keys vectors by our row numbers, and its
read-only view raises a catchable error; a fraction of a millisecond per query is small next to
embedding the query.

numpy and usearch only (never torch): importing this module needs neither; the library is
imported on first use and its absence raises ImportError naming the extra.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import asdict, dataclass, replace

import numpy as np

from fastlm.io import atomic_write
from fastlm.validation import check_int

INSTALL_HINT = 'pip install "fastlm[ann]"'
METRIC = "ip"  # inner product: the cosine of unit vectors; usearch reports 1 - dot as distance
DTYPES = ("f32", "f16")  # how the graph stores vectors: f16 halves their bytes, rounds scores
NORM_TOLERANCE = 1e-3  # |norm - 1| above this is not an L2-normalised vector
# `add` re-inserts a new row that a search for its own vector (top 4 at efSearch 32) misses
REACH_CHECK_K, REACH_CHECK_EF = 4, 32
REACH_DUPLICATE = 1e-3  # 1 - cosine below which the hit is a duplicate of the row (f16 rounds)

# Below this many vectors an Index searches exactly (numpy `vectors @ q`, argpartition) instead
# of through the graph. Measured with bench/ann_choice.py (docs/benchmarks.md), batch 1, d=256,
# one BLAS thread: exact costs ~0.08 us per row (0.05 ms at 1,000 rows, 0.39 ms at 5,000), a
# graph query ~0.06-0.07 ms at 1,000-10,000 rows; the latencies cross near 1,000 rows. But a
# search also embeds its query (~2-5 ms on a CPU), so the graph saves a user anything only once
# exact search costs as much: ~50,000 rows (~4 ms). Below that, exact is perfectly accurate and
# has no graph to build, store or keep in step with removals.
EXACT_BELOW = 50_000


def _import_usearch():
    """usearch.index. Imported here, not at the top, so `import fastlm.ann` works without it."""
    try:
        from usearch import index  # optional extra
    except ImportError as err:
        raise ImportError(f"approximate neighbours need usearch: {INSTALL_HINT}") from err
    return index


@dataclass(frozen=True)
class AnnSettings:
    """How the HNSW graph is built and searched; `describe()` reports them for a manifest."""

    # Measured at 1M clustered 256-d vectors (f16 graph, queries = noisy held-out rows; exact
    # numpy 72 ms a query): M 16 reaches recall@10 0.863 / 0.954 / 0.966 / 0.976 at efSearch
    # 64 / 128 / 256 / 512; M 32 reaches 0.955 / 0.986 / 0.993 at 64 / 128 / 256 (0.9 ms a query
    # at 128, a 20% longer build). At 100k rows M 16 / ef 64 already gave 0.995.
    connectivity: int = 32  # M: edges per node
    expansion_add: int = 64  # efConstruction: a wider build search makes a better graph
    expansion_search: int = 128  # efSearch: recall@10 >= 0.98 at 1M rows with M 32
    metric: str = METRIC
    dtype: str = "f32"

    def __post_init__(self) -> None:
        for name in ("connectivity", "expansion_add", "expansion_search"):
            check_int(getattr(self, name), name, min=2, max=4096)
        if self.metric != METRIC:
            raise ValueError(f"metric must be {METRIC!r} (inner product), got {self.metric!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")


class AnnIndex:
    """An HNSW graph over unit vectors (n, d), each keyed by its int64 row number (>= 0)."""

    def __init__(self, index, settings: AnnSettings, view: bool = False):
        self._index = index  # a usearch.index.Index
        self.settings = settings
        self.view = view  # memory-mapped read-only file: no add / remove

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        rows: np.ndarray,
        settings: AnnSettings | None = None,
        threads: int = 0,
    ) -> AnnIndex:
        """A new index of `vectors` (n, d) float32, unit rows, keyed by `rows` (n,) int64.

        threads: build threads (0: all cores)."""
        settings = settings or AnnSettings()
        vectors = _check_vectors(vectors, "vectors", dim=None)
        usearch = _import_usearch()
        index = usearch.Index(
            ndim=vectors.shape[1],
            metric=settings.metric,
            dtype=settings.dtype,
            connectivity=settings.connectivity,
            expansion_add=settings.expansion_add,
            expansion_search=settings.expansion_search,
        )
        return cls(index, settings).add(vectors, rows, threads=threads)

    def add(self, vectors: np.ndarray, rows: np.ndarray, threads: int = 0) -> AnnIndex:
        """Insert `vectors` (m, d) keyed by new `rows` (m,); returns self."""
        self._check_writable("add")
        vectors = _check_vectors(vectors, "vectors", dim=self.dim)
        rows = _check_rows(rows, len(vectors))
        present = rows[self._index.contains(rows.astype(np.uint64))] if len(rows) else rows
        if len(present):
            raise ValueError(f"rows already in the index: {_preview(present)}; remove them first")
        if len(rows):
            threads = check_int(threads, "threads", min=0)
            self._index.add(rows.astype(np.uint64), vectors, threads=threads)
            if threads != 1 and len(rows) > 1:
                self._reinsert_unreachable(vectors, rows, threads)
        return self

    def _reinsert_unreachable(self, vectors: np.ndarray, rows: np.ndarray, threads: int) -> None:
        """Re-insert, on one thread, the new rows a search for their own vector does not find.

        usearch's concurrent add can strand a node: stored, yet no search reaches it
        (unum-cloud/USearch#735). Measured on 3,000 random 256-d unit vectors: 0.1% / 0.3% / 1%
        of rows lost at 2 / 4 / 8 build threads, none with one thread, none after this pass.
        A stranded row is missed at every efSearch, so the check searches at a narrow one
        (REACH_CHECK_EF): 50,000 random rows on 2 cores took 7 s to check and 0.5 s to
        re-insert its 356 misses, after a 15 s parallel build (26 s on one thread, 28 s to
        check at efSearch 128). Random vectors are the worst case; clustered ones miss less.
        A row whose search finds a duplicate of its vector (many copies of one text) counts as
        reached. The check narrows the index's efSearch while it runs: an `add` must not run
        beside searches of the same index from other threads."""
        k = min(REACH_CHECK_K, len(self))
        wide = self._index.expansion_search
        self._index.expansion_search = REACH_CHECK_EF
        try:
            found = self._index.search(vectors, k, threads=threads)
        finally:
            self._index.expansion_search = wide
        keys, dists, counts = _as_batch(found, len(vectors))
        valid = np.arange(keys.shape[1])[None, :] < counts[:, None]  # the tail is undefined
        itself = ((keys.astype(np.int64) == rows[:, None]) & valid).any(axis=1)
        duplicate = valid[:, 0] & (dists[:, 0] <= REACH_DUPLICATE)
        lost = rows[~(itself | duplicate)]
        if len(lost):
            self._index.remove(lost.astype(np.uint64))
            self._index.add(lost.astype(np.uint64), vectors[np.isin(rows, lost)], threads=1)

    def remove(self, rows: np.ndarray) -> int:
        """Delete `rows` (m,) from the index; searches never return them again. Returns m."""
        self._check_writable("remove")
        rows = _check_rows(rows, None)
        missing = rows[~self._index.contains(rows.astype(np.uint64))] if len(rows) else rows
        if len(missing):
            raise ValueError(f"rows not in the index: {_preview(missing)}")
        if len(rows):
            self._index.remove(rows.astype(np.uint64))
        return len(rows)

    # -- searching --------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, threads: int = 1) -> tuple[np.ndarray, ...]:
        """(rows (q, k) int64, scores (q, k) float32) of the k best matches of each query, best
        first; a (d,) query is one query (q = 1).

        scores are inner products (the cosine for unit queries). When fewer than k rows can be
        returned (a small index, or rows removed) the tail of each row is padded with row -1
        and score -inf. threads: search threads for a batch (0: all cores); one query always
        runs on one.
        """
        k = check_int(k, "k", min=1)
        threads = check_int(threads, "threads", min=0)
        if isinstance(queries, np.ndarray) and queries.ndim == 1:
            queries = queries[None, :]
        queries = _check_vectors(queries, "queries", dim=self.dim, unit=False)
        q = len(queries)
        rows = np.full((q, k), -1, dtype=np.int64)
        scores = np.full((q, k), -np.inf, dtype=np.float32)
        if q == 0 or len(self) == 0:
            return rows, scores
        found = self._index.search(queries, k, threads=threads)
        keys, dists, counts = _as_batch(found, q)
        width = keys.shape[1]
        valid = np.arange(width)[None, :] < counts[:, None]  # usearch leaves the tail undefined
        rows[:, :width] = np.where(valid, keys.astype(np.int64), -1)
        scores[:, :width] = np.where(valid, 1.0 - np.where(valid, dists, 0.0), -np.inf)
        return rows, scores

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to `path` atomically (a temporary file in the same directory, then
        os.replace): an interrupted save leaves the previous file whole."""
        atomic_write(path, lambda tmp: self._index.save(tmp))

    @classmethod
    def load(
        cls, path: str | os.PathLike, view: bool = True, settings: AnnSettings | None = None
    ) -> AnnIndex:
        """Open a saved index. view=True memory-maps the file (read-only: no add/remove);
        view=False reads it into memory (editable).

        The file records dim, metric, dtype and connectivity, not expansion_add/search: pass
        the settings the index was described with (`describe()`, kept in a manifest) to restore
        them, else AnnSettings's defaults apply. Settings that contradict the file: ValueError.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no approximate-neighbour index at {path}")
        usearch = _import_usearch()
        try:
            index = usearch.Index.restore(path, view=view)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{path} is not a readable usearch index: {err}") from err
        if index is None:
            raise ValueError(f"{path} is not a usearch index (no usearch header)")
        return cls(index, _settings_of(index, path, settings), view=view)

    # -- description ------------------------------------------------------------------------
    def describe(self) -> dict:
        """The settings an Index manifest records: connectivity, expansion_add,
        expansion_search, metric, dtype; plus dim, size and the library version."""
        return {
            **asdict(self.settings),
            "dim": self.dim,
            "size": len(self),
            "library": f"usearch {importlib.metadata.version('usearch')}",
        }

    @property
    def dim(self) -> int:
        return int(self._index.ndim)

    def __len__(self) -> int:
        return int(self._index.size)

    def _check_writable(self, what: str) -> None:
        if self.view:
            raise ValueError(
                f"cannot {what} on a memory-mapped (read-only) index; "
                "load it with view=False to edit it, then save it"
            )


def _check_vectors(x: object, name: str, dim: int | None, unit: bool = True) -> np.ndarray:
    """`x` as a C-contiguous float32 (n, d) array: finite, d == dim, unit rows when `unit`."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} have dimension {x.shape[1]}, the index has {dim}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have dimension >= 1, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise ValueError(f"{name} row {int(np.argmin(finite))} has a NaN or infinite value")
    if unit and len(x):
        off = np.abs(np.linalg.norm(x, axis=1) - 1.0) > NORM_TOLERANCE
        if off.any():
            raise ValueError(
                f"{name} row {int(np.argmax(off))} is not L2-normalised "
                "(divide each row by its norm first)"
            )
    return x


def _check_rows(rows: object, n: int | None) -> np.ndarray:
    """`rows` as a (n,) int64 array of distinct row numbers >= 0."""
    if not isinstance(rows, np.ndarray) or not np.issubdtype(rows.dtype, np.integer):
        raise TypeError("rows must be a numpy integer array (int64 row numbers)")
    if rows.ndim != 1 or (n is not None and len(rows) != n):
        want = f"({n},)" if n is not None else "(m,)"
        raise ValueError(f"rows must have shape {want}, one per vector; got shape {rows.shape}")
    rows = rows.astype(np.int64)
    if len(rows) and rows.min() < 0:
        raise ValueError(f"rows must be >= 0 (-1 marks padding), got {int(rows.min())}")
    if len(np.unique(rows)) != len(rows):
        raise ValueError("rows must be distinct: each vector needs its own row number")
    return rows


def _preview(rows: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f", ... ({len(rows)} in all)" if len(rows) > limit else "")


def _as_batch(found, q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys (q, w), distances (q, w), counts (q,)) from usearch's Matches or BatchMatches."""
    keys, dists = np.asarray(found.keys), np.asarray(found.distances, dtype=np.float32)
    counts = np.asarray(found.counts if hasattr(found, "counts") else [len(keys)])
    return keys.reshape(q, -1), dists.reshape(q, -1), counts.reshape(q)


def _settings_of(index, path: str, settings: AnnSettings | None) -> AnnSettings:
    """`settings` (None: AnnSettings's defaults, with what the header records) checked against
    the file's header, and applied to the restored usearch index."""
    given, settings = settings, settings or AnnSettings()
    in_file = {
        "metric": str(index.metric_kind).rsplit(".", 1)[-1].lower(),
        "dtype": str(index.dtype).rsplit(".", 1)[-1].lower(),
        "connectivity": int(index.connectivity),
    }
    if in_file["metric"] != METRIC:
        raise ValueError(f"{path}: metric {in_file['metric']!r}, expected {METRIC!r}")
    wrong = {k: v for k, v in in_file.items() if getattr(settings, k) != v and k != "metric"}
    if wrong and given is not None:
        raise ValueError(f"{path} was built with {wrong}, not the settings given: {settings}")
    settings = replace(settings, dtype=in_file["dtype"], connectivity=in_file["connectivity"])
    index.expansion_add = settings.expansion_add
    index.expansion_search = settings.expansion_search
    return settings
