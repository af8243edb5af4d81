"""Data, child processes and report for bench/test_index.py (the retrieval Index at scale).

Each variant is measured in child processes of its own, so that peak memory (VmHWM) belongs to
that variant alone and a load starts from a fresh interpreter:

    python bench/index_scale.py build SPEC.json OUT.json   # build, recall, latency, save
    python bench/index_scale.py open SPEC.json OUT.json    # Index.load(mmap=True) + first query

Data: "synthetic" is a seeded mixture of Gaussian clusters (n / 100 clusters, as in
bench/ann_choice.py), generated in the child a chunk at a time; queries are held-out rows with
extra noise. "real" is precomputed embeddings (the parent embeds and caches them); queries are
held-out documents' vectors with a little noise, and titles embedded by the same model.

The Index embeds its queries through `LookupModel`, a stand-in that looks each query text up
among precomputed vectors: the search is what is timed, not the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

K = 10  # recall@K and top_k of every search
ROWS_PER_CLUSTER = 100  # bench/ann_choice.py: 1,000 clusters at 100k rows
SPREAD = 0.6  # relative norm of a point's noise around its cluster centre (ann_choice)
SYNTHETIC_NOISE = 0.3  # relative norm of a query's noise around its held-out row (ann_choice)
REAL_NOISE = 0.1  # real embeddings: "slightly" perturbed held-out documents
CHUNK = 1 << 16  # rows generated / scored at a time: bounds temporaries
BATCH = 64
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CORPORA = ("wikipedia_en", "bbc_news", "newsgroups20_train", "reuters21578")  # their text.txt
TITLES = "wikipedia_en/title_firstpara.tsv"  # first column: a page title
MAX_CHARS = 750  # about one 256-token window of the Transformer (~2.9 bytes per token)
PART_ROWS = 5000  # texts embedded (and cached) at a time


# ----------------------------------------------------------------------------- memory
def rss_mb(field: str = "VmRSS") -> float:
    """VmRSS (now) or VmHWM (peak) of this process, MB; ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next peak is a phase's own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def one_blas_thread():
    """A context limiting BLAS to one thread (threadpoolctl), or a no-op without it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext(), False
    return threadpool_limits(1, user_api="blas"), True


# ----------------------------------------------------------------------------- data
def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """(n, dim) float32 unit vectors: a random unit centre per cluster (n / 100 clusters) plus
    isotropic noise of relative norm SPREAD, written a chunk at a time (peak = the result)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // ROWS_PER_CLUSTER), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        x = centres[rng.integers(0, len(centres), m)]
        x += rng.standard_normal((m, dim), dtype=np.float32) * np.float32(SPREAD / np.sqrt(dim))
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def perturbed(rows: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """`rows` plus Gaussian noise of relative norm `noise`, L2-normalised, float32."""
    rng = np.random.default_rng(seed)
    q = rows + rng.standard_normal(rows.shape, dtype=np.float32) * np.float32(
        noise / np.sqrt(rows.shape[1])
    )
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def synthetic_facts(n: int, dim: int, seed: int) -> dict:
    """The stand-in model's identity (an Index records it and checks it on load)."""
    digest = hashlib.sha256(f"clustered {n} {dim} {seed} {SPREAD}".encode()).hexdigest()
    return {"name": "synthetic", "architecture": "synthetic", "dim": dim, "digest": digest}


def load_data(spec: dict) -> tuple[np.ndarray, list[str], np.ndarray, list[str], list[str]]:
    """(vectors (n, D), texts, queries (q, D), query texts, query kinds) of a spec."""
    if spec["dataset"] == "synthetic":
        n, q, seed = spec["n"], spec["queries"], spec["seed"]
        rows = clustered(n + q, spec["model"]["dim"], seed)
        queries = perturbed(rows[n:], SYNTHETIC_NOISE, seed + 1)
        texts = [f"document {i}" for i in range(n)]
        return rows[:n], texts, queries, [f"query {i}" for i in range(q)], ["perturbed"] * q
    vectors = np.load(spec["vectors"])
    corpus = json.loads(Path(spec["texts"]).read_text(encoding="utf-8"))
    n, held, titles = spec["n"], spec["held"], spec["titles"]
    assert len(vectors) == n + held + titles == len(corpus["texts"]) + len(corpus["titles"])
    near = perturbed(vectors[n : n + held], REAL_NOISE, spec["seed"] + 1)
    queries = np.concatenate([near, vectors[n + held :]])
    names = [f"held-out document {i}" for i in range(held)] + corpus["titles"]
    kinds = ["perturbed"] * held + ["titles"] * titles
    return vectors[:n], corpus["texts"][:n], queries, names, kinds


@dataclass
class RealTexts:
    docs: list[str]  # documents to index, then held-out ones
    titles: list[str]  # real query texts
    source: str


def real_texts(n_docs: int, n_titles: int, seed: int) -> RealTexts:
    """n_docs distinct paragraphs of the train-corpora text.txt files (shuffled, whitespace
    joined, cut at MAX_CHARS on a word boundary, at least 40 characters) and up to n_titles
    distinct Wikipedia titles. Without ../shared: Python's docstrings, cycled if too few, and
    their first six words as titles."""
    files = [SHARED_DATA / "train-corpora" / c / "text.txt" for c in CORPORA]
    files = [f for f in files if f.is_file()]
    if files:
        paras = [line for f in files for line in f.read_text(encoding="utf-8").splitlines()]
        source = ", ".join(f"../shared/data/train-corpora/{f.parent.name}/text.txt" for f in files)
    else:
        from tools.benchmarking import docstring_corpus

        paras, source = re.split(r"\n\s*\n", docstring_corpus()), "Python docstrings"
    paras = [p for p in dict.fromkeys(_cut(p) for p in paras) if len(p) >= 40]
    rng = random.Random(seed)
    rng.shuffle(paras)
    docs = [paras[i % len(paras)] for i in range(n_docs)]
    tsv = SHARED_DATA / "train-corpora" / TITLES
    if tsv.is_file():
        lines = tsv.read_text(encoding="utf-8").splitlines()[1:]
        titles = [line.split("\t", 1)[0] for line in lines]
    else:
        titles = [" ".join(p.split()[:6]) for p in paras]
    titles = [t for t in dict.fromkeys(" ".join(t.split()) for t in titles) if t]
    return RealTexts(docs, rng.sample(titles, min(n_titles, len(titles))), source)


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS].rsplit(" ", 1)[0]


def embed_cached(lm, texts: list[str], folder: Path) -> Path:
    """An .npy of lm.embed(texts) under `folder` (the caller keys it by model and texts),
    computed once: PART_ROWS texts at a time, each part saved, so an interrupted run resumes."""
    final = folder / "vectors.npy"
    if final.is_file():
        return final
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, start in enumerate(range(0, len(texts), PART_ROWS)):
        parts.append(folder / f"part-{i:05d}.npy")
        if not parts[-1].is_file():
            _save(parts[-1], lm.embed(texts[start : start + PART_ROWS], show_progress_bar=False))
    _save(final, np.concatenate([np.load(p) for p in parts]))
    for part in parts:
        part.unlink()
    return final


def texts_key(digest: str, texts: list[str]) -> str:
    """Cache key of embeddings: the model's embedding digest and every text."""
    h = hashlib.sha256(digest.encode())
    for text in texts:
        h.update(text.encode("utf-8") + b"\0")
    return h.hexdigest()[:24]


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, np.asarray(array, np.float32))
    os.replace(tmp, path)


class LookupModel:
    """Stand-in for a LanguageModel whose `embed` looks each query text up among precomputed
    vectors (an Index needs embedding_dim, name, architecture, embedding_digest and embed)."""

    def __init__(self, facts: dict, texts: list[str], vectors: np.ndarray):
        self.name, self.architecture = facts["name"], facts["architecture"]
        self.embedding_dim, self.embedding_digest = facts["dim"], facts["digest"]
        self._row = {text: i for i, text in enumerate(texts)}
        self._vectors = vectors

    def embed(self, texts, batch_size=64, show_progress_bar=None):
        return self._vectors[[self._row[t] for t in texts]]


# ----------------------------------------------------------------------------- exact search
def exact_top(x: np.ndarray, q: np.ndarray, k: int = K) -> np.ndarray:
    """(len(q), k) rows of the k largest inner products, best first: numpy, the baseline."""
    out = []
    for start in range(0, len(q), BATCH):
        s = q[start : start + BATCH] @ x.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1)
        out.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(out)


def exact_top_mapped(x: np.ndarray, q: np.ndarray, k: int = K) -> np.ndarray:
    """exact_top over a memory-mapped (n, D) float32 or float16 matrix, upcast CHUNK rows at a
    time (numpy has no float16 BLAS, and a whole-matrix upcast would double the memory)."""
    s = np.concatenate(
        [x[i : i + CHUNK].astype(np.float32, copy=False) @ q.T for i in range(0, len(x), CHUNK)]
    ).T
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), axis=1), axis=1)


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    hits = sum(len(set(f) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    ms = 1e3 * np.asarray(seconds)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


# ----------------------------------------------------------------------------- children
def run_build(spec: dict) -> dict:
    """Build the variant's Index, measure recall, latency (alternating with exact numpy, one
    BLAS thread), peak RSS, then save it under spec["workdir"]/index for the open child."""
    from fastlm.index import Index

    x, texts, queries, qtexts, kinds = load_data(spec)
    work = Path(spec["workdir"])
    np.savez(work / "queries.npz", vectors=queries, texts=np.array(qtexts), kinds=np.array(kinds))
    model = LookupModel(spec["model"], qtexts, queries)
    rss_data, out = rss_mb(), {"peak_reset": reset_peak()}
    t0 = time.perf_counter()
    index = Index.from_embeddings(
        model, x, texts, lexical=False, ann=spec["ann"], storage=spec["storage"]
    )
    index.search(qtexts[0], top_k=K, mode="dense")  # the graph is built on the first search
    out["build_s"] = time.perf_counter() - t0
    out["build_peak_mb"], out["rss_data_mb"] = rss_mb("VmHWM"), rss_data

    truth = exact_top(x, queries)
    hits = index.search(qtexts, top_k=K, mode="dense")
    found = [[int(h["id"]) for h in row] for row in hits]
    out["recall"] = recall(found, truth)
    for kind in sorted(set(kinds)):
        pick = [i for i, k in enumerate(kinds) if k == kind]
        out[f"recall_{kind}"] = recall([found[i] for i in pick], truth[pick])

    limit, out["blas_one_thread"] = one_blas_thread()
    with limit:
        out.update(latencies(index, x, queries, qtexts, spec["b1"], spec["b64"]))
    t0 = time.perf_counter()
    index.save(work / "index")
    out["save_s"] = time.perf_counter() - t0
    out["peak_mb"] = rss_mb("VmHWM")
    vdir = current_version(work / "index")
    out["files_mb"] = {f.name: f.stat().st_size / 2**20 for f in sorted(vdir.iterdir())}
    graph = json.loads((vdir / "manifest.json").read_text())["ann"]["graph"]
    out["graph"] = graph and {k: graph[k] for k in ("connectivity", "expansion_search", "dtype")}
    return out | {"rows": len(x), "dim": x.shape[1], "queries": len(queries), **env()}


def latencies(index, x, queries, qtexts, b1: int, b64: int) -> dict:
    """p50/p99 ms of Index.search and of exact numpy, alternating call by call, at batch 1
    (b1 queries) and batch 64 (b64 batches), after a warm-up of each."""
    n = len(queries)

    def one(i):
        return lambda: exact_top(x, queries[i % n : i % n + 1]), lambda: index.search(
            qtexts[i % n], top_k=K, mode="dense"
        )

    def batch(j):
        rows = [(BATCH * j + r) % n for r in range(BATCH)]
        return lambda: exact_top(x, queries[rows]), lambda: index.search(
            [qtexts[r] for r in rows], top_k=K, mode="dense"
        )

    out = {}
    for name, make, count in (("b1", one, b1), ("b64", batch, b64)):
        for fn in make(count):  # warm-up with an unmeasured call of each
            fn()
        exact, ours = [], []
        for i in range(count):
            e, o = make(i)
            exact.append(timed(e))
            ours.append(timed(o))
        out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = percentiles_ms(ours)
        out[f"exact_{name}_p50_ms"], out[f"exact_{name}_p99_ms"] = percentiles_ms(exact)
    return out


def current_version(path: Path) -> Path:
    return path / json.loads((path / "manifest.json").read_text())["current"]


def run_open(spec: dict) -> dict:
    """In a fresh process: Index.load(mmap=True) + the first query (time, RSS); then, for the
    ratio, np.load(mmap_mode="r") of the same embeddings + one exact query; then where a load's
    time goes (parsing index.json, hashing every file)."""
    from fastlm.index import Index

    q = np.load(Path(spec["workdir"]) / "queries.npz")
    texts = [str(t) for t in q["texts"]]
    model = LookupModel(spec["model"], texts, q["vectors"])
    limit, _ = one_blas_thread()
    with limit:
        rss0, out = rss_mb(), {"open_peak_reset": reset_peak()}
        t0 = time.perf_counter()
        index = Index.load(Path(spec["workdir"]) / "index", model, mmap=True)
        t1 = time.perf_counter()
        index.search(texts[0], top_k=K, mode="dense")
        t2 = time.perf_counter()
        out |= {"load_s": t1 - t0, "first_query_s": t2 - t1, "open_s": t2 - t0}
        out |= {"open_rss_mb": rss_mb(), "open_peak_mb": rss_mb("VmHWM"), "open_rss0_mb": rss0}
        vdir = current_version(Path(spec["workdir"]) / "index")
        t0 = time.perf_counter()
        exact_top_mapped(np.load(vdir / "embeddings.npy", mmap_mode="r"), q["vectors"][:1])
        out["exact_open_s"] = time.perf_counter() - t0
    out["parse_json_s"] = timed(lambda: json.loads((vdir / "index.json").read_bytes()))
    out["sha256_s"] = timed(lambda: [sha256(f) for f in vdir.iterdir()])
    return out


def sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def env() -> dict:
    import importlib.metadata as md

    from tools.benchmarking import cpu_name

    versions = {}
    for pkg in ("fastlm", "numpy", "usearch", "threadpoolctl"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
    }


# ----------------------------------------------------------------------------- report
def summary(dataset: str, variant: str, built: dict, opened: dict) -> dict:
    """One flat row: every figure, and each one's same-run ratio to exact numpy."""
    row = {"dataset": dataset, "variant": variant, **built, **opened}
    vectors_mb = built["rows"] * built["dim"] * 4 / 2**20
    row["vectors_mb"] = vectors_mb
    row["build_growth_mb"] = built["build_peak_mb"] - built["rss_data_mb"]
    row["build_growth_per_vectors"] = row["build_growth_mb"] / vectors_mb
    for b in ("b1", "b64"):
        for p in ("p50", "p99"):
            row[f"{b}_{p}_speedup"] = built[f"exact_{b}_{p}_ms"] / built[f"{b}_{p}_ms"]
    row["build_in_exact_queries"] = 1e3 * built["build_s"] / built["exact_b1_p50_ms"]
    gain_ms = built["exact_b1_p50_ms"] - built["b1_p50_ms"]
    row["break_even_queries"] = 1e3 * built["build_s"] / gain_ms if gain_ms > 0 else None
    row["open_vs_exact_open"] = opened["open_s"] / opened["exact_open_s"]
    return row


def markdown(rows: list[dict]) -> str:
    """A markdown table of the figures; "(e, r)" after a latency is exact numpy's figure and
    the speed-up exact / Index; build "= q" is the build time in exact batch-1 queries."""
    head = (
        "| data | variant | rows | recall@10 | build s | build peak +MB (x f32 vectors) "
        "| batch 1 p50 ms | batch 1 p99 ms | batch 64 p50 ms | batch 64 p99 ms "
        "| open s (exact numpy) | open peak RSS MB | files MB |"
    )
    lines = [head, "|---" * head.count(" | ") + "|---|"]
    for r in rows:
        kinds = [f"{k[7:]} {r[k]:.3f}" for k in sorted(r) if k.startswith("recall_")]
        lat = [
            f"{r[f'{b}_{p}_ms']:.3f} ({r[f'exact_{b}_{p}_ms']:.2f}, {r[f'{b}_{p}_speedup']:.1f}x)"
            for b in ("b1", "b64")
            for p in ("p50", "p99")
        ]
        cells = [
            r["dataset"],
            r["variant"],
            f"{r['rows']:,}",
            f"{r['recall']:.4f} ({', '.join(kinds)})",
            f"{r['build_s']:.2f} (= {r['build_in_exact_queries']:,.0f} q)",
            f"+{r['build_growth_mb']:.0f} ({r['build_growth_per_vectors']:.2f}x)",
            *lat,
            f"{r['open_s']:.3f} ({r['exact_open_s']:.3f})",
            f"{r['open_peak_mb']:.0f}",
            f"{sum(r['files_mb'].values()):.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    mode, spec_file, out_file = argv
    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    result = {"build": run_build, "open": run_open}[mode](spec)
    Path(out_file).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
