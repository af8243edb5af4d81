"""Which HNSW library backs fastlm.ann? usearch vs faiss-cpu on one clustered corpus.

    PYTHONPATH=. python bench/ann_choice.py --n 100000 --threads 2

Data: n unit vectors of dimension 256 (float32, seeded): a mixture of 1,000 Gaussian clusters
(random unit centres, isotropic noise of relative norm --spread), L2-normalised, so neighbours
are near-ties inside a cluster and the graph has work to do. Queries: --queries data points
with extra noise (relative norm --query-noise), normalised. Ground truth: exact numpy inner
products (`vectors @ q`, argpartition).

Per library: HNSW with inner-product metric, the same connectivity (M) and expansion_add
(efConstruction); build time (wall and process CPU: the machine may be shared); file size; load
time of a memory-mapped view and the RSS growth it caused (in a fresh process; faiss also with
plain IO_FLAG_MMAP); whether a row can be removed and what adding to a view does (200-row
indexes); then, on the view, for each expansion_search (efSearch): recall@10 against exact
and ms/query at batch 1, batch 64 and batch 64 on one thread (medians; the libraries take turns,
best of --rounds). Exact numpy batch-1 latency is also timed at several corpus sizes (1 and
--threads BLAS threads), so the size where exact stops being the faster choice can be read off
(run again with a smaller --n for the ANN side of it).

Not collected by pytest (the file name has no `test_` prefix): a script, not a gate.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K = 10


def clustered(n: int, dim: int, clusters: int, spread: float, rng: np.random.Generator):
    """(n, dim) float32 unit vectors: a random unit centre per cluster plus isotropic noise."""
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((n, dim), dtype=np.float32) * (spread / np.sqrt(dim))
    x = centres[rng.integers(0, clusters, n)] + noise
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def near_queries(x: np.ndarray, count: int, noise: float, rng: np.random.Generator):
    """(count, dim) unit queries: random data rows plus relative noise `noise`."""
    q = x[rng.choice(len(x), count, replace=False)]
    q = q + rng.standard_normal(q.shape, dtype=np.float32) * (noise / np.sqrt(x.shape[1]))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def exact_top(x: np.ndarray, q: np.ndarray, k: int = K) -> np.ndarray:
    """(len(q), k) row numbers of the k largest inner products, unordered."""
    scores = q @ x.T
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def ms_per_query(search, q: np.ndarray) -> tuple[float, float, float]:
    """Median ms per query at batch 1 (one thread: a single query never uses more), at batch 64
    and at batch 64 on one thread (three batches each)."""
    single = []
    for row in q:
        t0 = time.perf_counter()
        search(row[None, :], threads=1)
        single.append(time.perf_counter() - t0)
    batched = []
    for start in range(0, 3 * 64, 64):
        t0 = time.perf_counter()
        search(q[start : start + 64])
        batched.append((time.perf_counter() - t0) / 64)
    one_thread = []
    for start in range(0, 3 * 64, 64):
        t0 = time.perf_counter()
        search(q[start : start + 64], threads=1)
        one_thread.append((time.perf_counter() - t0) / 64)
    return tuple(1e3 * float(np.median(t)) for t in (single, batched, one_thread))


FRESH_LOAD = """
import sys, time
{load_code}
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
before = rss(); t0 = time.perf_counter(); index = load(sys.argv[1])
print(1e3 * (time.perf_counter() - t0), rss() - before)
"""


def fresh_load(load_code: str, path: str) -> tuple[float, float]:
    """(ms, RSS growth in MB) of loading `path` as a view in a new process, import excluded."""
    code = FRESH_LOAD.format(load_code=load_code)
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr)
    ms, mb = out.stdout.split()
    return float(ms), float(mb)


class Usearch:
    name = "usearch"

    def __init__(self, dim: int, m: int, ef_add: int, threads: int):
        from usearch.index import Index

        self.threads = threads
        self.index = Index(ndim=dim, metric="ip", dtype="f32", connectivity=m, expansion_add=ef_add)

    def build(self, x: np.ndarray) -> None:
        self.index.add(np.arange(len(x), dtype=np.uint64), x, threads=self.threads)

    def set_ef(self, ef: int) -> None:
        self.index.expansion_search = ef

    def search(self, q: np.ndarray, threads: int | None = None) -> np.ndarray:
        return self.index.search(q, K, threads=threads or self.threads).keys

    def save(self, path: str) -> None:
        self.index.save(path)

    load_code = "from usearch.index import Index; load = lambda p: Index.restore(p, view=True)"

    def load_view(self, path: str):
        from usearch.index import Index

        return Index.restore(path, view=True)


class Faiss:
    name = "faiss-cpu"

    def __init__(self, dim: int, m: int, ef_add: int, threads: int):
        import faiss

        self.threads = threads
        faiss.omp_set_num_threads(threads)
        self.index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_add

    def build(self, x: np.ndarray) -> None:
        self.index.add(x)

    def set_ef(self, ef: int) -> None:
        self.index.hnsw.efSearch = ef

    def search(self, q: np.ndarray, threads: int | None = None) -> np.ndarray:
        import faiss

        faiss.omp_set_num_threads(threads or self.threads)
        return self.index.search(q, K)[1]

    def save(self, path: str) -> None:
        import faiss

        faiss.write_index(self.index, path)

    # IO_FLAG_MMAP_IFC (which includes IO_FLAG_MMAP) maps the flat vector storage zero-copy;
    # IO_FLAG_MMAP alone still copies it into memory.
    load_code = "import faiss; load = lambda p: faiss.read_index(p, faiss.IO_FLAG_MMAP_IFC)"
    plain_mmap_code = "import faiss; load = lambda p: faiss.read_index(p, faiss.IO_FLAG_MMAP)"

    def load_view(self, path: str):
        import faiss

        return faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC)


ADD_TO_VIEW = """
import sys
import numpy as np
{load_code}
index = load(sys.argv[1])
try:
    index.add(*([np.array([10**6], np.uint64)] if "usearch" in sys.argv[2] else []),
              np.ones((1, index.ndim if hasattr(index, "ndim") else index.d), np.float32))
    print("accepted")
except Exception as e:
    print(f"{{type(e).__name__}}: {{e}}"[-60:])
"""


def add_to_view(lib, tmp: Path) -> str:
    """What adding one vector to a memory-mapped view of a 200-row index does, in a fresh
    process (a C++ abort would take the benchmark down with it)."""
    x = clustered(200, 16, 4, 0.5, np.random.default_rng(1))
    small = type(lib)(16, 8, 32, 1)
    small.build(x)
    path = str(tmp / f"small-{lib.name}.index")
    small.save(path)
    code = ADD_TO_VIEW.format(load_code=lib.load_code)
    out = subprocess.run(
        [sys.executable, "-c", code, path, lib.name], capture_output=True, text=True
    )
    if out.returncode < 0:
        return f"process killed by signal {-out.returncode} (abort)"
    return out.stdout.strip() or out.stderr.strip()[-60:]


def removal_supported(lib) -> str:
    """Does the library delete row 0 from a freshly built 200-row index?"""
    x = clustered(200, 16, 4, 0.5, np.random.default_rng(1))
    small = type(lib)(16, 8, 32, 1)
    small.build(x)
    try:
        if isinstance(small, Usearch):
            small.index.remove(0)
        else:
            small.index.remove_ids(np.array([0], dtype=np.int64))
    except RuntimeError as e:
        return f"no ({str(e).rsplit(': ', 1)[-1][:60]})"  # faiss: "...: <reason>"
    return "yes" if 0 not in small.search(x[:5]).ravel() else "no (still returned)"


def versions() -> str:
    out = []
    for mod in ("usearch", "faiss"):
        try:
            out.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            out.append(f"{mod} missing")
    return ", ".join(out)


def build_and_save(lib, x: np.ndarray, tmp: Path) -> dict:
    """Build on x, save, reopen as a memory-mapped view (searches below run on the view)."""
    t0, c0 = time.perf_counter(), time.process_time()
    lib.build(x)
    build_s, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    path = str(tmp / f"{lib.name}.index")
    lib.save(path)
    load_ms, load_rss = fresh_load(lib.load_code, path)
    lib.index = lib.load_view(path)
    return dict(
        build_s=build_s,
        build_cpu=build_cpu,
        size_mb=os.path.getsize(path) / 2**20,
        load_ms=load_ms,
        load_rss=load_rss,
        remove=removal_supported(lib),
        add_to_view=add_to_view(lib, tmp),
        plain_mmap=fresh_load(lib.plain_mmap_code, path) if lib.name == "faiss-cpu" else None,
    )


def sweep(libs: list, q: np.ndarray, truth: np.ndarray, efs: list[int], rounds: int) -> dict:
    """{(lib name, ef): row}. The libraries take turns, `rounds` times, and each latency is the
    best round's median, so a burst of load on the shared machine does not land on one side."""
    rows = {}
    for ef in efs:
        for _ in range(rounds):
            for lib in libs:
                lib.set_ef(ef)
                times = ms_per_query(lib.search, q)
                row = rows.setdefault((lib.name, ef), dict(recall=recall(lib.search(q), truth)))
                for key, t in zip(("b1", "b64", "b64_1"), times):
                    row[key] = min(row.get(key, np.inf), t)
    return rows


def report(libs: list, built: dict, rows: dict, efs: list[int]) -> None:
    print(
        "| library | build s (CPU s) | file MiB | view load ms (RSS MB) | remove | add to a view |"
    )
    print("|---|---|---|---|---|---|")
    for lib in libs:
        b = built[lib.name]
        print(
            f"| {lib.name} | {b['build_s']:.1f} ({b['build_cpu']:.1f}) | {b['size_mb']:.1f} "
            f"| {b['load_ms']:.1f} (+{b['load_rss']:.0f}) | {b['remove']} | {b['add_to_view']} |"
        )
        if b["plain_mmap"]:
            ms, mb = b["plain_mmap"]
            print(f"({lib.name} with IO_FLAG_MMAP alone: {ms:.1f} ms, RSS +{mb:.0f} MB)")
    print()
    print("| library | efSearch | recall@10 | ms/q batch 1 | batch 64 | batch 64, 1 thread |")
    print("|---|---|---|---|---|---|")
    for lib in libs:
        for ef in efs:
            r = rows[(lib.name, ef)]
            print(
                f"| {lib.name} | {ef} | {r['recall']:.3f} | {r['b1']:.3f} | {r['b64']:.3f} "
                f"| {r['b64_1']:.3f} |"
            )
    print()


def exact_ms(x: np.ndarray, q: np.ndarray) -> float:
    """Median ms of one exact batch-1 search (matvec + argpartition) over the queries."""
    times = []
    for row in q:
        t0 = time.perf_counter()
        np.argpartition(-(x @ row), K - 1)[:K]
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def exact_crossover(x: np.ndarray, q: np.ndarray, sizes: list[int], threads: int) -> None:
    """Exact numpy batch-1 ms/query as the corpus grows, with 1 and `threads` BLAS threads."""
    from threadpoolctl import threadpool_limits  # installed with scikit-learn; bench only

    print(f"| corpus rows | exact ms/query, 1 BLAS thread | exact, {threads} BLAS threads |")
    print("|---|---|---|")
    for n in sizes:
        with threadpool_limits(1, user_api="blas"):
            one = exact_ms(x[:n], q[:100])
        with threadpool_limits(threads, user_api="blas"):
            many = exact_ms(x[:n], q[:100])
        print(f"| {n:,} | {one:.3f} | {many:.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--spread", type=float, default=0.6)
    p.add_argument("--query-noise", type=float, default=0.3)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--connectivity", type=int, default=16)
    p.add_argument("--expansion-add", type=int, default=64)
    p.add_argument("--ef", default="16,32,64,128")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--libs", default="usearch,faiss")
    p.add_argument("--rounds", type=int, default=2, help="latency rounds, libraries alternating")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    rng = np.random.default_rng(args.seed)
    x = clustered(args.n, args.dim, args.clusters, args.spread, rng)
    q = near_queries(x, args.queries, args.query_noise, rng)
    truth = exact_top(x, q)
    efs = [int(e) for e in args.ef.split(",")]
    print(
        f"n={args.n:,} dim={args.dim} clusters={args.clusters} spread={args.spread} "
        f"queries={args.queries} M={args.connectivity} efConstruction={args.expansion_add} "
        f"threads={args.threads}; numpy {np.__version__}, {platform.processor() or 'cpu'}"
    )
    print(f"versions: {versions()}")
    libs = {"usearch": Usearch, "faiss": Faiss}
    chosen = [
        libs[name](args.dim, args.connectivity, args.expansion_add, args.threads)
        for name in args.libs.split(",")
    ]
    with tempfile.TemporaryDirectory() as tmp:
        built = {lib.name: build_and_save(lib, x, Path(tmp)) for lib in chosen}
        rows = sweep(chosen, q, truth, efs, args.rounds)
    report(chosen, built, rows, efs)
    sizes = [n for n in (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000) if n <= args.n]
    exact_crossover(x, q, sizes, args.threads)


if __name__ == "__main__":
    main()
