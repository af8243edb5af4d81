"""The retrieval Index at scale: the HNSW graph (`fastlm.index.Index`, ann=True) against exact
numpy search on the same vectors, float32 and float16 storage, in the same run.

Data (bench/index_scale.py):
- synthetic: 1,000,000 unit vectors of dimension 256 (smoke: 20,000), a seeded mixture of
  Gaussian clusters (100 rows per cluster, as bench/ann_choice.py); 512 queries (smoke: 64):
  held-out rows with extra noise.
- real: 100,000 paragraphs (smoke: 300) of the train-corpora text.txt files, embedded with the
  shipped Transformer and cached by model digest and texts (pytest's cache directory: a rerun
  does not embed again); queries: 256 held-out paragraphs' vectors, slightly perturbed, and 256
  Wikipedia titles embedded by the same model (smoke: 32 + 32).

Variants: `exact` (Index, ann=False, float32), `ann-float32`, `ann-float16`. Each is built,
searched and saved in a child process of its own (peak RSS is its own), then loaded in another
fresh one. Measured, each beside exact numpy (`q @ X.T`, argpartition) in the same process:
recall@10; build time (Index.from_embeddings + the first search, which builds the graph), also
in exact queries and as the break-even query count; query latency p50/p99 at batch 1 and 64,
the two alternating call by call, one BLAS thread (threadpoolctl); peak RSS of the build; and
the open time: `Index.load(path, model, mmap=True)` + first query with its RSS, against
`np.load(mmap_mode="r")` + one exact query. Queries reach the Index through a stand-in model
that looks each query text up among precomputed vectors: the search is timed, not the model.

Gates (full mode, unless --bench-no-gates): recall@10 >= 0.98 for the graph; at 1M synthetic
rows the graph's batch-1 p50 >= 20x faster than exact, and (float16) load + first query <= 3 s
with peak RSS <= 1 GB. Smoke mode (--benchmark-disable) checks the figures are all there and
recall >= 0.95. The table is printed at the end and written to .benchmarks/index-scale-*.json.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import index_scale as scale
import pytest

import fastlm
from tools.benchmarking import load_model

ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(scale.__file__).resolve()
SIZES = {  # full, smoke
    "synthetic": ({"n": 1_000_000, "queries": 512}, {"n": 20_000, "queries": 64}),
    "real": ({"n": 100_000, "held": 256, "titles": 256}, {"n": 300, "held": 32, "titles": 32}),
}
LATENCY = ({"b1": 200, "b64": 4}, {"b1": 32, "b64": 1})  # batch-1 queries, batch-64 batches
VARIANTS = {  # ann, storage
    "exact": (False, "float32"),
    "ann-float32": (True, "float32"),
    "ann-float16": (True, "float16"),
}
DIM = 256
SEED = 0
RECALL_MIN, SMOKE_RECALL_MIN = 0.98, 0.95
SPEEDUP_MIN = 20.0  # batch-1 p50, exact / graph, at 1M synthetic rows
OPEN_S_MAX, OPEN_RSS_MB_MAX = 3.0, 1024.0  # load + first query at 1M rows, float16
TIMEOUT_S = (4 * 3600, 300)


@pytest.fixture(scope="module")
def index_report(request, smoke):
    """Rows of every variant measured; at the end printed as a markdown table and written as
    JSON under .benchmarks/."""
    rows: list[dict] = []
    yield rows
    if not rows:
        return
    mode = "smoke" if smoke else "full"
    out = ROOT / ".benchmarks" / f"index-scale-{mode}.json"
    out.parent.mkdir(exist_ok=True)
    settings = {
        "sizes": {name: size[smoke] for name, size in SIZES.items()},
        "latency": LATENCY[smoke],
        "gates": {"recall": RECALL_MIN, "b1_speedup": SPEEDUP_MIN, "open_s": OPEN_S_MAX},
        "open_rss_mb": OPEN_RSS_MB_MAX,
    }
    report = {"mode": mode, **settings, "rows": rows}
    out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    plugins = request.config.pluginmanager
    tr, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if tr is None or capture is None:
        return
    with capture.global_and_fixture_disabled():  # module teardown output is captured otherwise
        tr.write_line("")
        tr.write_line(f"Index at scale ({mode}): ms (exact numpy ms, speed-up); JSON: {out}")
        for line in scale.markdown(rows).splitlines():
            tr.write_line(line)


@pytest.fixture(scope="module")
def synthetic_data(smoke) -> dict:
    size = SIZES["synthetic"][smoke]
    return {**size, "seed": SEED, "model": scale.synthetic_facts(size["n"], DIM, SEED)}


@pytest.fixture(scope="module")
def real_data(pytestconfig, smoke, sources, device, threads, tmp_path_factory) -> dict:
    """Real paragraphs and titles embedded with the Transformer, cached under pytest's cache
    directory by model digest and texts (full mode: 100k texts take a long time on a CPU)."""
    size = SIZES["real"][smoke]
    corpus = scale.real_texts(size["n"] + size["held"], size["titles"], SEED)
    lm = load_model(sources["transformer"], "eager", device, threads)
    texts = corpus.docs + corpus.titles
    digest = lm.embedding_digest
    cache = getattr(pytestconfig, "cache", None)  # None under -p no:cacheprovider
    if digest is not None and cache is not None:
        root = cache.mkdir("fastlm-index-scale")
        folder = root / scale.texts_key(digest, texts)
    else:  # nothing identifies the weights: embed every run
        folder = tmp_path_factory.mktemp("real-vectors")
    work = tmp_path_factory.mktemp("real-texts")
    (work / "texts.json").write_text(
        json.dumps({"texts": corpus.docs, "titles": corpus.titles}), encoding="utf-8"
    )
    facts = {"name": lm.name, "architecture": lm.architecture, "dim": lm.embedding_dim}
    return {
        **size,
        "titles": len(corpus.titles),
        "seed": SEED,
        "vectors": str(scale.embed_cached(lm, texts, folder)),
        "texts": str(work / "texts.json"),
        "source": corpus.source,
        "model": {**facts, "digest": digest},
    }


def _child(mode: str, spec: dict, work: Path, smoke: bool) -> dict:
    """Run bench/index_scale.py MODE in a fresh interpreter; its result dict."""
    spec_file, out_file = work / "spec.json", work / f"{mode}.json"
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    root = str(Path(fastlm.__file__).resolve().parents[1])  # the fastlm this session imported
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, str(HELPER), mode, str(spec_file), str(out_file)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S[smoke],
        env={**os.environ, "PYTHONPATH": path},
    )
    assert proc.returncode == 0, (
        f"{mode} child failed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    )
    return json.loads(out_file.read_text(encoding="utf-8"))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dataset", list(SIZES))
def test_index_scale(request, smoke, gates, tmp_path, index_report, dataset, variant):
    data = request.getfixturevalue(f"{dataset}_data")
    ann, storage = VARIANTS[variant]
    spec = {**data, **LATENCY[smoke], "dataset": dataset, "ann": ann, "storage": storage}
    spec["workdir"] = str(tmp_path)
    try:
        built = _child("build", spec, tmp_path, smoke)
        opened = _child("open", spec, tmp_path, smoke)
    finally:
        shutil.rmtree(tmp_path / "index", ignore_errors=True)  # up to GBs at full size
    row = scale.summary(dataset, variant, built, opened) | {"source": data.get("source")}
    index_report.append(row)
    print(json.dumps(row, indent=1))

    _check_structure(row, data, ann, storage)
    floor = SMOKE_RECALL_MIN if smoke else RECALL_MIN
    if ann and (smoke or gates.enforce):
        assert row["recall"] >= floor, f"{dataset}/{variant}: recall@10 {row['recall']:.4f}"
    if not gates.enforce or dataset != "synthetic" or row["rows"] < 1_000_000 or not ann:
        return
    speedup = row["b1_p50_speedup"]
    assert speedup >= SPEEDUP_MIN, f"{variant}: batch-1 p50 only {speedup:.1f}x exact"
    if storage == "float16":
        assert row["open_s"] <= OPEN_S_MAX, f"open (load + first query) {row['open_s']:.2f} s"
        assert row["open_peak_mb"] <= OPEN_RSS_MB_MAX, f"open RSS {row['open_peak_mb']:.0f} MB"


def _check_structure(row: dict, data: dict, ann: bool, storage: str) -> None:
    """Every figure is there and plausible; the saved files are the variant's."""
    for key in ("build_s", "save_s", "load_s", "open_s", "exact_open_s", "peak_mb", "open_peak_mb"):
        assert math.isfinite(row[key]) and row[key] > 0, f"{key} = {row[key]}"
    for b in ("b1", "b64"):
        for p in ("p50", "p99"):
            assert row[f"{b}_{p}_ms"] > 0 and row[f"exact_{b}_{p}_ms"] > 0
            assert math.isfinite(row[f"{b}_{p}_speedup"])
    assert 0 <= row["recall"] <= 1 and row["rows"] == data["n"]
    kinds = {"recall_perturbed"} | ({"recall_titles"} if "titles" in data else set())
    assert kinds <= row.keys(), f"missing {kinds - row.keys()}"
    files = row["files_mb"]
    assert ("ann.usearch" in files) == ann, f"graph file present: {'ann.usearch' in files}"
    itemsize = {"float32": 4, "float16": 2}[storage]
    expected_mb = row["rows"] * row["dim"] * itemsize / 2**20
    assert abs(files["embeddings.npy"] - expected_mb) < 0.01, (files, expected_mb)
    assert (row["graph"] is not None) == ann
