"""The lexical branch of embed(): hashed character n-grams (fastlm/char_ngrams.py), checked
against a plain-Python reference written from the module's definition."""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter

import numpy as np
import pytest
from safetensors.numpy import save_file

from fastlm import char_ngrams
from fastlm.char_ngrams import (
    LexicalBranch,
    LexicalBranchError,
    count_ngrams,
    project,
)

M64 = (1 << 64) - 1


def reference_slots(text: str, buckets: int, sizes=(3, 4, 5)) -> Counter:
    """slot -> count, one n-gram at a time with Python ints (the definition, not the code)."""

    def splitmix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    words = re.sub(r"[\W_]+", " ", unicodedata.normalize("NFKC", text).lower()).split()
    out = Counter()
    for word in words:
        padded = f" {word} "
        for n in sizes:
            for i in range(len(padded) - n + 1):
                h = 0
                for ch in padded[i : i + n]:
                    h = (h * 0x100000001B3 + ord(ch)) & M64
                salt = (n * 0x9E3779B97F4A7C15) & M64
                out[splitmix(h ^ salt) & (buckets - 1)] += 1
    return out


TEXTS = [
    "The cat sat on the mat.",
    "",
    "!!! ...",
    "Quantum entanglement of two qubits, measured twice: qubits qubits.",
    "naïve café — ﬁle Ωmega 42x",
    "a b",
    "日本語のテキスト and emoji 🙂 mixed",
]


@pytest.mark.parametrize("buckets", [64, 1 << 16])
def test_counts_match_the_reference(buckets):
    counts = count_ngrams(TEXTS, buckets)
    assert len(counts) == len(TEXTS)
    for i, text in enumerate(TEXTS):
        a, b = counts.indptr[i], counts.indptr[i + 1]
        got = dict(zip(counts.slots[a:b].tolist(), counts.weights[a:b].tolist()))
        want = {s: 1 + math.log(c) for s, c in reference_slots(text, buckets).items()}
        assert got.keys() == want.keys(), text
        for s in want:
            assert got[s] == pytest.approx(want[s], rel=1e-6)


def test_short_word_ngrams_and_text_boundaries():
    # " ab " has 3-grams " ab", "ab " and the 4-gram " ab ": 3 n-grams, none across texts
    counts = count_ngrams(["ab", "ab"], 1 << 20)
    assert np.diff(counts.indptr).tolist() == [3, 3]
    assert counts.slots[:3].tolist() == counts.slots[3:].tolist()


def test_case_punctuation_and_compatibility_forms_do_not_matter():
    a, b = count_ngrams(["Hello, WORLD!", "hello world"], 1 << 16), None
    b = count_ngrams(["ﬁle", "file"], 1 << 16)
    for c in (a, b):
        n = c.indptr[1]
        assert c.slots[:n].tolist() == c.slots[n:].tolist()


@pytest.mark.parametrize("buckets", [0, 3, 1000, -8])
def test_buckets_must_be_a_power_of_two(buckets):
    with pytest.raises(ValueError, match="power of two"):
        count_ngrams(["x"], buckets)


def test_project_equals_the_dense_product_in_any_chunking(monkeypatch):
    buckets, dim = 256, 5
    table = np.random.default_rng(0).standard_normal((buckets, dim)).astype(np.float32)
    texts = TEXTS * 3
    counts = count_ngrams(texts, buckets)
    dense = np.zeros((len(texts), buckets), np.float32)
    for i in range(len(texts)):
        a, b = counts.indptr[i], counts.indptr[i + 1]
        dense[i, counts.slots[a:b]] = counts.weights[a:b]
    want = dense @ table
    for chunk in (1, 7, 1 << 16):
        monkeypatch.setattr(char_ngrams, "_ROWS_PER_CHUNK", chunk)
        np.testing.assert_allclose(project(counts, table), want, rtol=1e-5, atol=1e-5)


def test_texts_without_words_get_zero_rows_and_mix_keeps_the_tower():
    branch = LexicalBranch(np.ones((64, 4), np.float32), weight=2.0)
    v = branch.vectors(["", "?!", "word"])
    assert not v[:2].any() and np.linalg.norm(v[2]) == pytest.approx(1.0)
    tower = np.array([[3.0, 0, 0, 0], [0, 0, 0, 0], [0, 2.0, 0, 0]], np.float32)
    mixed = branch.mix(tower, ["?!", "", "word"])
    np.testing.assert_allclose(mixed[0], [1, 0, 0, 0])  # no words: the tower's unit row
    assert not mixed[1].any()  # nothing at all: stays zero (zero after normalising too)
    np.testing.assert_allclose(mixed[2], [0, 1, 0, 0] + 2.0 * v[2], rtol=1e-6)


def test_save_load_roundtrip_is_int8_close(tmp_path):
    table = np.random.default_rng(1).standard_normal((128, 8)).astype(np.float32)
    LexicalBranch(table, 0.75).save(tmp_path / "lex.safetensors")
    back = LexicalBranch.load(tmp_path / "lex.safetensors")
    assert back.weight == 0.75 and back.sizes == (3, 4, 5)
    err = np.abs(back.table - table).max(axis=1) / np.abs(table).max(axis=1)
    assert err.max() <= 0.5 / 127 + 1e-6
    texts = ["one text", "another one entirely"]
    cos = np.sum(back.vectors(texts) * LexicalBranch(table, 0.75).vectors(texts), axis=1)
    assert cos.min() > 0.999


@pytest.mark.parametrize(
    "content", [b"", b"not a safetensors file", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "]
)
def test_a_corrupt_file_is_a_typed_error(tmp_path, content):
    f = tmp_path / "lex.safetensors"
    f.write_bytes(content)
    with pytest.raises(LexicalBranchError, match="lex.safetensors"):
        LexicalBranch.load(f)


@pytest.mark.parametrize(
    "table, weight",
    [
        (np.ones((100, 4)), 1.0),
        (np.ones(64), 1.0),
        (np.ones((64, 4)), -1.0),
        (np.ones((64, 4)), float("nan")),
    ],
)
def test_bad_tables_and_weights_are_refused(table, weight):
    with pytest.raises(LexicalBranchError):
        LexicalBranch(table, weight)


def test_queries_mix_with_the_query_weight():
    table = np.random.default_rng(2).standard_normal((64, 4)).astype(np.float32)
    tower = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    texts = ["surface codes", "a recipe for bread"]
    unit = tower / np.linalg.norm(tower, axis=1, keepdims=True)
    branch = LexicalBranch(table, weight=0.5, query_weight=3.0)
    v = branch.vectors(texts)
    np.testing.assert_allclose(branch.mix(tower, texts), unit + 0.5 * v, rtol=1e-6)
    np.testing.assert_allclose(branch.mix(tower, texts, "query"), unit + 3.0 * v, rtol=1e-6)
    same = LexicalBranch(table, weight=0.5)  # no query weight: queries mix as documents
    assert same.query_weight == 0.5
    np.testing.assert_array_equal(same.mix(tower, texts, "query"), same.mix(tower, texts))


def test_the_query_weight_is_saved_and_older_files_default_to_the_weight(tmp_path):
    table = np.random.default_rng(1).standard_normal((128, 8)).astype(np.float32)
    LexicalBranch(table, 0.75, query_weight=4.0).save(tmp_path / "lex.safetensors")
    back = LexicalBranch.load(tmp_path / "lex.safetensors")
    assert (back.weight, back.query_weight) == (0.75, 4.0)
    # a file written before query weights existed: one weight, for both kinds
    scale = np.abs(table).max(axis=1) / 127.0
    q = np.round(table / scale[:, None]).astype(np.int8)
    save_file(
        {"table_int8": q, "row_scale": scale.astype(np.float32)},
        str(tmp_path / "old.safetensors"),
        metadata={"weight": "0.75", "ngram_sizes": "3,4,5"},
    )
    old = LexicalBranch.load(tmp_path / "old.safetensors")
    assert (old.weight, old.query_weight) == (0.75, 0.75)


@pytest.mark.parametrize("query_weight", [-1.0, float("nan"), float("inf")])
def test_bad_query_weights_are_refused(query_weight):
    with pytest.raises(LexicalBranchError, match="query_weight"):
        LexicalBranch(np.ones((64, 4)), 1.0, query_weight=query_weight)
