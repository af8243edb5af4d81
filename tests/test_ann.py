"""fastlm.ann: recall against exact search, save/load of a memory-mapped view, add/remove, bad
input, and the missing-extra error. Small clustered corpora (a few thousand rows): fast."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("usearch")  # the `ann` extra (in `dev`); its absence is faked below

from fastlm.ann import AnnIndex, AnnSettings  # noqa: E402

DIM = 48


def clustered(n: int, seed: int = 0, clusters: int = 40, dim: int = DIM) -> np.ndarray:
    """(n, dim) float32 unit rows: random unit centres plus isotropic noise (rel. norm 0.6)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)]
    x = x + rng.standard_normal((n, dim)).astype(np.float32) * (0.6 / np.sqrt(dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact(x: np.ndarray, rows: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """(len(q), k) row numbers of the k largest inner products (the oracle)."""
    top = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]
    return rows[top]


@pytest.fixture(scope="module")
def corpus():
    x = clustered(3000)
    rows = np.arange(100, 3100, dtype=np.int64)  # row numbers are not positions
    rng = np.random.default_rng(1)
    q = x[rng.choice(len(x), 100, replace=False)]  # queries near the data, as in retrieval
    q = q + rng.standard_normal(q.shape).astype(np.float32) * (0.3 / np.sqrt(DIM))
    return x, rows, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def built(corpus):
    x, rows, _ = corpus
    return AnnIndex.build(x, rows, threads=1)


def test_recall_at_10_against_exact(corpus, built):
    x, rows, q = corpus
    found, scores = built.search(q, k=10)
    truth = exact(x, rows, q, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.95, recall
    assert found.dtype == np.int64 and scores.dtype == np.float32
    assert found.shape == scores.shape == (100, 10)
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "scores are not best first"
    # scores are the inner products of the returned rows
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, x[found - 100]), atol=1e-5)


def test_one_query_vector_is_a_batch_of_one(corpus, built):
    _, _, q = corpus
    rows1, scores1 = built.search(q[0], k=5)
    rows2, scores2 = built.search(q[:1], k=5)
    assert rows1.shape == (1, 5)
    np.testing.assert_array_equal(rows1, rows2)
    np.testing.assert_array_equal(scores1, scores2)


def test_fewer_than_k_are_padded():
    x = clustered(7, seed=3)
    ann = AnnIndex.build(x, np.arange(7, dtype=np.int64), threads=1)
    rows, scores = ann.search(x[:2], k=10)
    assert rows.shape == (2, 10)
    assert np.all(rows[:, 7:] == -1) and np.all(np.isneginf(scores[:, 7:]))
    assert sorted(rows[0, :7]) == list(range(7)) and rows[0, 0] == 0
    assert np.all(np.isfinite(scores[:, :7]))


def test_empty_index_returns_only_padding():
    ann = AnnIndex.build(np.zeros((0, DIM), np.float32), np.zeros(0, np.int64))
    rows, scores = ann.search(clustered(3), k=4)
    assert np.all(rows == -1) and np.all(np.isneginf(scores))


def test_save_load_view_gives_identical_results(corpus, built, tmp_path):
    _, _, q = corpus
    path = tmp_path / "ann.usearch"
    built.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["ann.usearch"]  # no temporary left behind
    view = AnnIndex.load(path, view=True, settings=built.settings)
    assert view.view and len(view) == len(built)
    for a, b in zip(built.search(q, k=10), view.search(q, k=10)):
        np.testing.assert_array_equal(a, b)
    assert view.describe() == built.describe()


def test_describe_records_the_settings(built):
    d = built.describe()
    for key in ("connectivity", "expansion_add", "expansion_search", "metric", "dtype"):
        assert d[key] == getattr(built.settings, key)
    assert d["metric"] == "ip" and d["dim"] == DIM and d["size"] == 3000
    assert re.fullmatch(r"usearch \d+\.\d+.*", d["library"]), d["library"]


def test_removed_rows_are_never_returned(corpus):
    x, rows, q = corpus
    ann = AnnIndex.build(x, rows, threads=1)
    before, _ = ann.search(q, k=10)
    gone = np.unique(before[:, :5])  # the rows the queries liked best
    assert ann.remove(gone) == len(gone)
    after, _ = ann.search(q, k=10)
    assert not np.isin(after, gone).any()
    assert len(ann) == len(rows) - len(gone)
    keep = ~np.isin(rows, gone)
    truth = exact(x[keep], rows[keep], q, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(after, truth)])
    assert recall >= 0.9, recall


def test_remove_unknown_row_is_an_error(built):
    with pytest.raises(ValueError, match="not in the index: 5"):
        AnnIndex.build(clustered(4), np.arange(4, dtype=np.int64)).remove(np.array([5]))


def test_add_after_load_editable_and_read_only_view(corpus, tmp_path):
    x, rows, q = corpus
    path = tmp_path / "ann.usearch"
    AnnIndex.build(x[:2000], rows[:2000], threads=1).save(path)

    view = AnnIndex.load(path, view=True)
    with pytest.raises(ValueError, match="read-only.*view=False"):
        view.add(x[2000:], rows[2000:])
    with pytest.raises(ValueError, match="read-only.*view=False"):
        view.remove(rows[:1])

    ann = AnnIndex.load(path, view=False).add(x[2000:], rows[2000:], threads=1)
    assert len(ann) == 3000
    found, _ = ann.search(x[2500:2510], k=1)
    np.testing.assert_array_equal(found[:, 0], rows[2500:2510])  # a vector finds itself


def test_add_existing_row_is_an_error(corpus):
    x, rows, _ = corpus
    ann = AnnIndex.build(x[:10], rows[:10])
    with pytest.raises(ValueError, match="already in the index"):
        ann.add(x[10:12], rows[8:10])


def test_a_parallel_build_leaves_no_row_unreachable():
    """usearch's concurrent add strands nodes (USearch#735): on random 256-d rows, 8 build
    threads lost ~1% of rows to every search before `add` re-inserted what its check missed."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 256)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = np.arange(3000, dtype=np.int64) * 7
    ann = AnnIndex.build(x[:2000], rows[:2000], threads=8).add(x[2000:], rows[2000:], threads=8)
    noisy = x + rng.standard_normal(x.shape).astype(np.float32) * 0.01
    found, _ = ann.search(noisy / np.linalg.norm(noisy, axis=1, keepdims=True), k=1, threads=0)
    lost = rows[found[:, 0] != rows]
    assert len(ann) == 3000 and lost.tolist() == []


def test_duplicated_vectors_are_not_reinserted_on_every_add(monkeypatch):
    """1,500 copies of one vector: a search cannot return each copy in its own top 4, but finding
    a copy is reaching the row: no copy is re-inserted (before: all 1,500, on every add)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, DIM)).astype(np.float32)
    x[:1500] = x[0]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = np.arange(3000, dtype=np.int64)
    ann = AnnIndex.build(x[:10], rows[:10], threads=1)
    removed = []
    inner = ann._index.remove
    monkeypatch.setattr(ann._index, "remove", lambda keys: removed.extend(keys) or inner(keys))
    ann.add(x[10:], rows[10:], threads=2)
    assert len(ann) == 3000 and not [r for r in removed if r < 1500]
    found, scores = ann.search(x[0], k=5)
    assert set(found[0]) <= set(range(1500)) and scores[0].min() > 0.999


def with_inf(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[0, 3] = np.inf
    return x


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda a, x: a.search(x[:, :10], k=3), "dimension 10"),
        (lambda a, x: a.add(x[:2, :10], np.array([9000, 9001])), "dimension 10"),
        (lambda a, x: a.search(np.full((1, DIM), np.nan, np.float32), k=3), "NaN or infinite"),
        (
            lambda a, x: a.add(np.where(np.eye(2, DIM) > 0, np.inf, x[:2]), np.array([9, 10])),
            "row 0",
        ),
        (lambda a, x: a.search(x[:1], k=0), "k must be"),
        (lambda a, x: a.search(x[:1], k=-2), "k must be"),
        (lambda a, x: a.add(x[:1] * 2, np.array([9000])), "not L2-normalised"),
        (lambda a, x: a.add(x[:2], np.array([9000, 9000])), "distinct"),
        (lambda a, x: a.add(x[:2], np.array([-1, 9000])), ">= 0"),
        (lambda a, x: a.add(x[:2], np.array([9000])), r"shape \(2,\)"),
        (lambda a, x: a.search(x[0:1, :, None], k=1), r"shape \(n, d\)"),
    ],
)
def test_bad_input_is_a_value_error(call, match):
    x = clustered(20, seed=5)
    ann = AnnIndex.build(x, np.arange(20, dtype=np.int64))
    with pytest.raises(ValueError, match=match):
        call(ann, x)


def test_bad_types_are_type_errors():
    x = clustered(20, seed=5)
    ann = AnnIndex.build(x, np.arange(20, dtype=np.int64))
    with pytest.raises(TypeError):
        ann.search(x[:1], k=True)
    with pytest.raises(TypeError):
        ann.search(x[:1].tolist(), k=1)
    with pytest.raises(TypeError):
        ann.search(x[0].tolist(), k=1)
    with pytest.raises(TypeError):
        ann.add(x[:1], np.array([30.0]))


def test_bad_settings_and_files(tmp_path):
    with pytest.raises(ValueError, match="metric"):
        AnnSettings(metric="l2sq")
    with pytest.raises(ValueError, match="connectivity"):
        AnnSettings(connectivity=1)
    with pytest.raises(FileNotFoundError):
        AnnIndex.load(tmp_path / "missing.usearch")
    junk = tmp_path / "junk.usearch"
    junk.write_bytes(b"not an index at all")
    with pytest.raises(ValueError, match="junk.usearch"):
        AnnIndex.load(junk)


def test_load_checks_the_file_against_the_settings(tmp_path):
    from usearch.index import Index

    path = tmp_path / "cos.usearch"
    Index(ndim=DIM, metric="cos", dtype="f32").save(str(path))
    with pytest.raises(ValueError, match="metric 'cos'"):
        AnnIndex.load(path)
    path = tmp_path / "m8.usearch"
    AnnIndex.build(clustered(30), np.arange(30), AnnSettings(connectivity=8)).save(path)
    assert AnnIndex.load(path).settings.connectivity == 8  # no settings given: the file's
    with pytest.raises(ValueError, match="connectivity"):
        AnnIndex.load(path, settings=AnnSettings(connectivity=16))


def test_half_precision_storage_round_trips(tmp_path):
    x = clustered(500, seed=7)
    ann = AnnIndex.build(x, np.arange(500), AnnSettings(dtype="f16"), threads=1)
    ann.save(tmp_path / "f16.usearch")
    view = AnnIndex.load(tmp_path / "f16.usearch", settings=ann.settings)
    assert view.describe()["dtype"] == "f16"
    rows, scores = view.search(x[:20], k=3)
    np.testing.assert_array_equal(rows[:, 0], np.arange(20))
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", x[:20], x[rows]), atol=2e-3)


def test_a_view_can_be_saved_elsewhere(corpus, built, tmp_path):
    _, _, q = corpus
    built.save(tmp_path / "a.usearch")
    AnnIndex.load(tmp_path / "a.usearch").save(tmp_path / "b.usearch")
    copy = AnnIndex.load(tmp_path / "b.usearch", settings=built.settings)
    np.testing.assert_array_equal(copy.search(q, k=10)[0], built.search(q, k=10)[0])


def test_missing_library_names_the_extra(monkeypatch):
    x = clustered(4)
    monkeypatch.setitem(sys.modules, "usearch", None)
    monkeypatch.setitem(sys.modules, "usearch.index", None)
    with pytest.raises(ImportError, match=r'pip install "fastlm\[ann\]"'):
        AnnIndex.build(x, np.arange(4, dtype=np.int64))


def test_module_never_imports_torch():
    code = (
        "import sys, numpy as np; import fastlm.ann as a; "
        "x = np.eye(3, 8, dtype=np.float32); a.AnnIndex.build(x, np.arange(3)).search(x, 2); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
