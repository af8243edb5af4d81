"""fastlm.lexical: BM25 through bm25s, its save/load, settings, and score fusion.

Expected values are computed by hand in the tests (BM25 as bm25s's "lucene" variant scores it:
idf = ln(1 + (N - df + 0.5) / (df + 0.5)), term = tf / (tf + k1 * (1 - b + b * dl / avgdl))).
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastlm import lexical
from fastlm.fusion import (
    fuse_rrf,
    fuse_rrf_candidates,
    fuse_weighted,
    fuse_weighted_candidates,
    minmax_normalise,
    top_k_scores,
)
from fastlm.lexical import LexicalIndex, LexicalSettings

CORPUS = [
    "the cat sat on the mat",
    "a cat and a dog played in the garden",
    "the dog chased the cat around the house",
    "an aardvark ate ants near the cat",
    "cats and dogs are common pets",
]


@pytest.fixture(scope="module")
def index() -> LexicalIndex:
    return LexicalIndex().fit(CORPUS)


def _bm25s_reference(index: LexicalIndex, queries: list[str]) -> np.ndarray:
    """bm25s's own per-query scorer, the oracle of the batched `scores`."""
    ids = index._query_ids(queries)
    n = len(index)
    return np.stack([index._bm25.get_scores_from_ids(q) if q else np.zeros(n) for q in ids])


# ---- BM25 -----------------------------------------------------------------------------------


def test_rare_query_term_ranks_its_document_first(index):
    ids, scores = index.top_k(["cat aardvark"], k=3)
    assert ids[0, 0] == 3  # the only document with "aardvark"; "cat" is in four of five
    assert scores[0, 0] > scores[0, 1] > 0
    assert int(np.argmax(index.scores(["cat aardvark"])[0])) == 3


def test_scores_match_hand_computed_bm25():
    index = LexicalIndex(LexicalSettings(stemmer=None, stopwords=None)).fit(
        ["apple banana", "apple cherry cherry durian"]
    )
    k1, b, avgdl = 1.5, 0.75, 3.0  # document lengths 2 and 4
    idf_apple = math.log(1 + (2 - 2 + 0.5) / (2 + 0.5))  # in both documents
    idf_cherry = math.log(1 + (2 - 1 + 0.5) / (1 + 0.5))  # in the second only

    def term(tf, dl):
        return tf / (tf + k1 * (1 - b + b * dl / avgdl))

    expected = [
        [idf_apple * term(1, 2), idf_apple * term(1, 4)],
        [0.0, idf_cherry * term(2, 4)],
    ]
    np.testing.assert_allclose(index.scores(["apple", "cherry"]), expected, rtol=1e-6)


@pytest.mark.parametrize("method", ["lucene", "robertson", "bm25l", "bm25+"])
def test_batched_scores_equal_bm25s_per_query(method, monkeypatch):
    index = LexicalIndex(LexicalSettings(method=method)).fit(CORPUS)
    queries = ["cat", "dog dog garden", "", "zebra", "cats chasing dogs", "the", "ants cat"]
    expected = _bm25s_reference(index, queries)
    np.testing.assert_allclose(index.scores(queries), expected, rtol=1e-6, atol=1e-7)
    monkeypatch.setattr(lexical, "QUERIES_PER_CHUNK", 2)
    got = index.scores(queries)
    assert got.dtype == np.float32 and got.shape == (len(queries), len(CORPUS))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_stemming_matches_running_to_runs():
    docs = ["he runs every morning", "she swims in the lake"]
    scores = LexicalIndex().fit(docs).scores(["running"])[0]
    assert scores[0] > 0 and scores[1] == 0
    unstemmed = LexicalIndex(LexicalSettings(stemmer=None)).fit(docs).scores(["running"])
    assert not unstemmed.any()  # the match above is the stemmer's doing


def test_stopwords_are_ignored():
    docs = ["the the the the cat", "a dog"]
    index = LexicalIndex().fit(docs)
    np.testing.assert_array_equal(index.scores(["the cat"]), index.scores(["cat"]))
    assert not index.scores(["the of and"]).any()
    kept = LexicalIndex(LexicalSettings(stopwords=None)).fit(docs).scores(["the"])
    assert kept[0, 0] > 0  # without a stopword list, "the" is an ordinary word


@pytest.mark.parametrize("query", ["zebra quokka", "", "!!! ?", "x"])
def test_query_without_known_token_scores_zero(index, query):
    scores = index.scores([query])
    assert scores.shape == (1, len(CORPUS)) and scores.dtype == np.float32
    assert not scores.any()
    ids, top = index.top_k([query], k=2)
    assert ids.shape == (1, 2) and not top.any()


def test_top_k_clamps_to_corpus_and_orders_ties_by_id(index):
    ids, scores = index.top_k(["cat", "pets"], k=50)
    assert ids.shape == scores.shape == (2, len(CORPUS)) and ids.dtype == np.int64
    assert (np.diff(scores, axis=1) <= 0).all()
    np.testing.assert_allclose(scores, -np.sort(-index.scores(["cat", "pets"]), axis=1), 1e-6)
    assert ids[1].tolist() == [4, 0, 1, 2, 3]  # "pets" in document 4 only, then ties by id


def test_top_k_scores_match_bm25s_retrieve(index):
    queries = ["cat aardvark", "dog garden", "pets"]
    want = index._bm25.retrieve(index._query_ids(queries), k=3, show_progress=False).scores
    _, scores = index.top_k(queries, k=3)
    np.testing.assert_allclose(scores, want, rtol=1e-6)


@pytest.mark.parametrize("texts", [[], ["the of", "a"]])
def test_corpus_without_tokens_is_an_empty_index(texts):
    index = LexicalIndex().fit(texts)
    assert index.scores(["cat", "dog"]).shape == (2, len(texts))
    assert not index.scores(["cat"]).any()
    ids, scores = index.top_k(["cat"], k=3)
    assert ids.shape == scores.shape == (1, len(texts))


def test_bad_input(index):
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        LexicalIndex().fit(["ok", 3])
    with pytest.raises(TypeError, match="single str"):
        index.scores("cat")
    with pytest.raises(ValueError, match="fit"):
        LexicalIndex().scores(["cat"])
    with pytest.raises(TypeError, match="LexicalSettings"):
        LexicalIndex({"k1": 1.2})
    with pytest.raises(ValueError, match="k must be"):
        index.top_k(["cat"], k=0)
    with pytest.raises(TypeError, match="k must be an int"):
        index.top_k(["cat"], k=2.0)


# ---- save / load ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lucene", "bm25+"])
def test_save_load_round_trip(tmp_path, method):
    settings = LexicalSettings(method=method, k1=1.2, b=0.5)
    original = LexicalIndex(settings).fit(CORPUS)
    written = original.save(tmp_path)
    assert written == LexicalIndex.files(tmp_path) == sorted(p.name for p in tmp_path.iterdir())
    assert all("/" not in name for name in written)
    loaded = LexicalIndex.load(tmp_path, settings)
    assert loaded.settings == settings and len(loaded) == len(CORPUS)
    queries = ["cat aardvark", "dogs in gardens", "zebra"]
    np.testing.assert_array_equal(loaded.scores(queries), original.scores(queries))
    for got, want in zip(loaded.top_k(queries, 3), original.top_k(queries, 3)):
        np.testing.assert_array_equal(got, want)


def test_save_over_an_earlier_save_lists_only_its_own_files(tmp_path):
    LexicalIndex(LexicalSettings(method="bm25+")).fit(CORPUS).save(tmp_path)
    assert "bm25.nonoccurrence.npy" in LexicalIndex.files(tmp_path)
    written = LexicalIndex().fit(CORPUS[:2]).save(tmp_path)
    assert written == LexicalIndex.files(tmp_path) and "bm25.nonoccurrence.npy" not in written
    assert len(LexicalIndex.load(tmp_path, LexicalSettings())) == 2


def test_load_refuses_other_settings_and_defective_files(tmp_path):
    LexicalIndex().fit(CORPUS).save(tmp_path)
    with pytest.raises(ValueError, match="fit it again"):
        LexicalIndex.load(tmp_path, LexicalSettings(k1=2.0))
    (tmp_path / "bm25.vocab.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="cannot be read"):
        LexicalIndex.load(tmp_path)
    LexicalIndex().fit(CORPUS).save(tmp_path)
    np.save(tmp_path / "bm25.indices.npy", np.full(9, 99, np.int32))  # past the last document
    with pytest.raises(ValueError, match="bm25.indices.npy"):
        LexicalIndex.load(tmp_path)
    (tmp_path / "bm25.settings.json").write_text('{"format": "fastlm-lexical/1"}')
    with pytest.raises(ValueError, match="bm25.settings.json"):
        LexicalIndex.load(tmp_path)
    (tmp_path / "bm25.settings.json").unlink()
    with pytest.raises(FileNotFoundError, match="bm25.settings.json"):
        LexicalIndex.load(tmp_path)


# ---- settings -------------------------------------------------------------------------------


def test_settings_round_trip():
    settings = LexicalSettings(k1=1.2, b=0.3, stemmer="porter", stopwords=None, method="atire")
    assert LexicalSettings.from_dict(settings.to_dict()) == settings
    assert LexicalSettings().to_dict() == {
        "k1": 1.5,
        "b": 0.75,
        "stemmer": "english",
        "stopwords": "en",
        "method": "lucene",
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.k1 = 2.0


@pytest.mark.parametrize(
    "data",
    [
        {"k1": 1.5, "colour": "blue"},
        {"k1": -1.0},
        {"k1": float("nan")},
        {"k1": "1.5"},
        {"b": 1.5},
        {"method": "bm26"},
        {"stemmer": "klingon"},
        {"stemmer": 3},
        {"stopwords": "klingon"},
        ["k1"],
    ],
)
def test_settings_validation(data):
    with pytest.raises(ValueError):
        LexicalSettings.from_dict(data)


def test_settings_constructor_types():
    with pytest.raises(TypeError, match="k1"):
        LexicalSettings(k1="1.5")
    with pytest.raises(ValueError, match="method"):
        LexicalSettings(method="bm26")


def test_import_needs_neither_torch_nor_the_extra():
    child = textwrap.dedent("""
        import sys
        for name in ("torch", "bm25s", "Stemmer"):
            sys.modules[name] = None  # importing it now raises ImportError
        from fastlm.fusion import fuse_weighted
        from fastlm.lexical import LexicalIndex, LexicalSettings
        LexicalSettings(stemmer="anything")  # the name is checked once PyStemmer is there
        try:
            LexicalIndex()
        except ImportError as err:
            print(err)
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert 'pip install "fastlm[lexical]"' in done.stdout


# ---- fusion ---------------------------------------------------------------------------------


def test_minmax_normalise_by_hand():
    got = minmax_normalise(np.array([[1.0, 3.0, 2.0], [-4.0, 0.0, 4.0]]))
    np.testing.assert_allclose(got, [[0.0, 1.0, 0.5], [0.0, 0.5, 1.0]])
    assert got.dtype == np.float32


@pytest.mark.parametrize("row", [[5.0, 5.0, 5.0], [0.0, 0.0], [7.0]])
def test_constant_row_normalises_to_zeros(row):
    got = minmax_normalise(np.array([row]))
    assert not np.isnan(got).any() and not got.any()


def test_top_k_scores_keeps_the_lowest_ids_among_ties_at_the_cut():
    ids, scores = top_k_scores(np.array([[1, 3, 3, 3, 0], [0, 0, 0, 0, 0]], np.uint8), 2)
    assert ids.tolist() == [[1, 2], [0, 1]] and scores.tolist() == [[3, 3], [0, 0]]
    rng = np.random.default_rng(2)
    many_ties = rng.integers(0, 4, size=(50, 37)).astype(np.float32)
    for top_k in (1, 5, 37, 100):
        ids, scores = top_k_scores(many_ties, top_k)
        want = np.argsort(-many_ties, axis=1, kind="stable")[:, :top_k]
        np.testing.assert_array_equal(ids, want)
        np.testing.assert_array_equal(scores, np.take_along_axis(many_ties, want, 1))


def test_fuse_weighted_by_hand():
    dense = np.array([[0.2, 0.8, 0.5]])  # normalised: 0, 1, 0.5
    lexical = np.array([[3.0, 0.0, 1.0]])  # normalised: 1, 0, 1/3
    expected = [[0.25 * 0 + 0.75 * 1, 0.25 * 1 + 0.75 * 0, 0.25 * 0.5 + 0.75 / 3]]
    np.testing.assert_allclose(fuse_weighted(dense, lexical, 0.25), expected, rtol=1e-6)


def test_weight_extremes_rank_as_one_side():
    rng = np.random.default_rng(0)
    dense, lexical = rng.normal(size=(4, 23)), rng.gamma(2.0, size=(4, 23))
    for weight, side in [(0.0, lexical), (1.0, dense)]:
        ids, _ = top_k_scores(fuse_weighted(dense, lexical, weight), 23)
        np.testing.assert_array_equal(ids, np.argsort(-side, axis=1, kind="stable"))


@pytest.mark.parametrize(
    "weight, error",
    [(1.5, ValueError), (-0.1, ValueError), (True, TypeError)],
)
def test_weight_is_validated(weight, error):
    with pytest.raises(error, match="weight"):
        fuse_weighted(np.zeros((1, 2)), np.zeros((1, 2)), weight)


def test_fuse_weighted_refuses_nan_and_mismatched_shapes():
    with pytest.raises(ValueError, match="NaN"):
        fuse_weighted(np.array([[np.nan, 1.0]]), np.zeros((1, 2)), 0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        fuse_weighted(np.zeros((1, 2)), np.zeros((1, 3)), 0.5)


def test_rrf_by_hand():
    first = np.array([[2, 0, 1]])
    second = np.array([[1, 2, -1]])  # -1: this side returned two documents only
    expected = [[1 / 62, 1 / 61 + 1 / 63, 1 / 61 + 1 / 62, 0.0]]  # doc 3: in neither
    fused = fuse_rrf([first, second], n_docs=4, k=60)
    np.testing.assert_allclose(fused, expected, rtol=1e-6)
    ids, _ = top_k_scores(fused, 4)
    assert ids.tolist() == [[2, 1, 0, 3]]
    ids, scores = fuse_rrf_candidates([first, second], top_k=4, k=60)
    assert ids.tolist() == [[2, 1, 0, -1]]  # doc 3 is no candidate: padding
    np.testing.assert_allclose(scores[0, :3], [expected[0][i] for i in (2, 1, 0)], rtol=1e-6)
    assert scores[0, 3] == -np.inf


def test_rrf_refuses_bad_rankings():
    with pytest.raises(ValueError, match="twice"):
        fuse_rrf([np.array([[1, 1]])], n_docs=3)
    with pytest.raises(ValueError, match="outside"):
        fuse_rrf([np.array([[0, 3]])], n_docs=3)
    with pytest.raises(ValueError, match="non-empty"):
        fuse_rrf([], n_docs=3)


def test_fuse_weighted_candidates_by_hand():
    dense_ids, dense_scores = np.array([[0, 1]]), np.array([[0.9, 0.5]])
    lexical_ids, lexical_scores = np.array([[2, 0]]), np.array([[4.0, 2.0]])
    # candidates 0, 1, 2; a missing score is that side's lowest returned one:
    # dense 0.9, 0.5, (0.5) -> 1, 0, 0; lexical 2, (2), 4 -> 0, 0, 1; weight 0.5:
    # 0.5, 0, 0.5 -> documents 0 and 2 tie (lower id first), then 1, then padding
    ids, scores = fuse_weighted_candidates(
        dense_ids, dense_scores, lexical_ids, lexical_scores, weight=0.5, top_k=4
    )
    assert ids.tolist() == [[0, 2, 1, -1]]
    np.testing.assert_allclose(scores[0, :3], [0.5, 0.5, 0.0])
    assert scores[0, 3] == -np.inf


def test_candidates_covering_every_document_equal_the_full_fusion():
    rng = np.random.default_rng(1)
    dense, lexical = rng.normal(size=(3, 11)), rng.gamma(2.0, size=(3, 11))
    d_ids = np.argsort(-dense, axis=1)
    l_ids = np.argsort(-lexical, axis=1)
    ids, scores = fuse_weighted_candidates(
        d_ids,
        np.take_along_axis(dense, d_ids, 1),
        l_ids,
        np.take_along_axis(lexical, l_ids, 1),
        weight=0.3,
        top_k=5,
    )
    want_ids, want_scores = top_k_scores(fuse_weighted(dense, lexical, 0.3), 5)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-6)


def test_fitting_writes_no_debug_lines_into_the_callers_logs(caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    LexicalIndex().fit(["a cat sat on the mat", "dogs run fast"])
    assert [r.getMessage() for r in caplog.records if r.name.startswith("bm25s")] == []
