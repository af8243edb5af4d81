"""The lexical branch inside embed(): carried by checkpoints and exports, mixed in on every
backend, part of the embedding digest, refused when corrupt."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import fastlm
import fastlm.runtime
from fastlm.batching import l2_normalize
from fastlm.char_ngrams import LEXICAL_FILE, LexicalBranch
from fastlm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

TEXTS = [
    "Quantum error correction with surface codes.",
    "A recipe for bread: flour, water, salt.",
    "",
    "?!",
    "Surface codes correct quantum errors " * 40,
]


@pytest.fixture(scope="module", params=["transformer", "lstm"])
def arch(request):
    return request.param


def test_embed_is_the_tower_mixed_with_the_branch(small_checkpoints, arch):
    model = fastlm.load(small_checkpoints[arch], backend="eager")
    branch = model.backend.lexical
    assert branch is not None and branch.weight == 0.5
    got = model.embed(TEXTS)
    model.backend.lexical = None
    tower = model.embed(TEXTS)
    want = l2_normalize(tower + 0.5 * branch.vectors(TEXTS))
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not got[2].any()  # "" stays the zero vector
    np.testing.assert_allclose(got[3], tower[3], atol=1e-6)  # no words: the tower alone


def test_max_length_cuts_the_branch_text_too(small_checkpoints):
    model = fastlm.load(small_checkpoints["transformer"], backend="eager")
    text = "alpha beta gamma delta epsilon zeta eta theta"
    ids = model.tokenizer.encode(text)[:3]
    prefix = model.tokenizer.decode(ids)
    np.testing.assert_allclose(model.embed(text, max_length=3), model.embed(prefix), atol=1e-6)


def test_the_export_carries_it_and_the_runtime_matches_eager(small_checkpoints, export_of, arch):
    path = export_of(arch, "fp32")
    assert (path / LEXICAL_FILE).is_file()
    runtime = fastlm.runtime.load(path)
    assert runtime.backend.lexical is not None
    eager = fastlm.load(small_checkpoints[arch], backend="eager")
    a, b = eager.embed(TEXTS), runtime.embed(TEXTS)
    np.testing.assert_allclose(a, b, atol=2e-4)
    assert runtime.embedding_digest == eager.embedding_digest


def test_an_edited_branch_file_is_refused(small_checkpoints, tmp_path):
    bad = tmp_path / "ckpt"
    shutil.copytree(small_checkpoints["lstm"], bad)
    data = bytearray((bad / LEXICAL_FILE).read_bytes())
    data[-1] ^= 1
    (bad / LEXICAL_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=LEXICAL_FILE):
        load_checkpoint(bad)


def test_a_branch_of_the_wrong_width_is_refused(small_checkpoints, tmp_path):
    ck = load_checkpoint(small_checkpoints["lstm"])
    wrong = LexicalBranch(np.ones((64, ck.embedder.dim + 1), np.float32), 1.0)
    out = save_checkpoint(
        tmp_path / "c", ck.model, ck.tokenizer, embedder=ck.embedder, lexical=wrong
    )
    with pytest.raises(CheckpointError, match="rows of"):
        load_checkpoint(out)


def test_the_branch_is_part_of_the_embedding_digest(small_checkpoints, tmp_path):
    ck = load_checkpoint(small_checkpoints["lstm"])
    other = LexicalBranch(ck.lexical.table * 2 + 1, ck.lexical.weight)
    out = save_checkpoint(
        tmp_path / "c", ck.model, ck.tokenizer, embedder=ck.embedder, lexical=other
    )
    without = save_checkpoint(tmp_path / "d", ck.model, ck.tokenizer, embedder=ck.embedder)
    digests = {
        fastlm.load(p, backend="eager").embedding_digest
        for p in (small_checkpoints["lstm"], out, without)
    }
    assert len(digests) == 3


def test_the_onnx_backend_keeps_one_table(small_checkpoints):
    model = fastlm.load(small_checkpoints["lstm"], backend="onnx")
    assert model.backend.lexical is model.backend.checkpoint.lexical


def _tower_and_branch(model, texts):
    branch, model.backend.lexical = model.backend.lexical, None
    try:
        return model.embed(texts), branch.vectors(texts)
    finally:
        model.backend.lexical = branch


def test_queries_are_embedded_with_the_query_weight(small_checkpoints, arch):
    model = fastlm.load(small_checkpoints[arch], backend="eager")
    assert model.backend.lexical.query_weight == 2.0  # the fixture's: not the 0.5 of documents
    tower, branch = _tower_and_branch(model, TEXTS)
    got = model.embed(TEXTS, kind="query")
    np.testing.assert_allclose(got, l2_normalize(tower + 2.0 * branch), atol=1e-6)
    np.testing.assert_allclose(
        model.embed(TEXTS, kind="document"), l2_normalize(tower + 0.5 * branch), atol=1e-6
    )
    assert not got[2].any()  # "" stays the zero vector for queries too
    np.testing.assert_allclose(model.embed(TEXTS[0], kind="query"), got[0], atol=1e-6)


@pytest.mark.parametrize("kind, error", [("Query", ValueError), ("", ValueError), (1, TypeError)])
def test_an_unknown_kind_is_a_typed_error(small_checkpoints, kind, error):
    model = fastlm.load(small_checkpoints["lstm"], backend="eager")
    with pytest.raises(error, match="kind") as info:
        model.embed(["a text"], kind=kind)
    assert info.value.param == "kind"


def test_the_runtime_embeds_queries_as_eager_does(small_checkpoints, export_of, arch):
    runtime = fastlm.runtime.load(export_of(arch, "fp32"))
    eager = fastlm.load(small_checkpoints[arch], backend="eager")
    a, b = eager.embed(TEXTS, kind="query"), runtime.embed(TEXTS, kind="query")
    np.testing.assert_allclose(a, b, atol=2e-4)
    assert np.abs(a - eager.embed(TEXTS)).max() > 0.01  # the two kinds do differ here


def test_rank_index_and_evaluate_embed_their_queries_as_queries(small_checkpoints):
    from fastlm.embedding.evaluate import retrieval_figures

    model = fastlm.load(small_checkpoints["transformer"], backend="eager")
    docs = [t for t in TEXTS if t.strip("?! ")][:3] + ["bread and salt", "error codes"]
    query = "surface code errors"
    want = model.embed(docs) @ model.embed(query, kind="query")
    hits = model.rank(query, docs)
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(want)[::-1], atol=1e-6)
    index = fastlm.Index(model, lexical=False).add(docs)
    found = index.search(query, top_k=len(docs), mode="dense")
    np.testing.assert_allclose([h["score"] for h in found], np.sort(want)[::-1], atol=1e-5)
    # fastlm evaluate: documents as documents, queries as queries
    kinds = []
    embed = model.embed

    def spy(texts, **options):
        kinds.append((len(texts), options.get("kind", "document")))
        return embed(texts, **options)

    model.embed = spy
    corpus = {str(i): d for i, d in enumerate(docs)}
    retrieval_figures(model, (corpus, {"q": query}, {"q": {"0": 1}}))
    assert kinds == [(len(docs), "document"), (1, "query")]


def test_the_certificate_ranks_what_embed_returns(export_of, arch):
    import json

    from fastlm.export.parity import PROBE_TEXTS

    path = export_of(arch, "fp32")
    ranking = json.loads((path / "parity.json").read_text())["ranking"]
    assert set(ranking) == {"top10_overlap", "tower_top10_overlap"}
    assert ranking["top10_overlap"] == 1.0  # fp32: the same ranking, mixed or not
    # a tower far off its reference: the tower-alone ranking changes; mixed with a branch that
    # dominates (as a heavy weight makes it), the ranking embed() returns does not
    from fastlm.export.parity import _ranking

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((len(PROBE_TEXTS), 8)).astype(np.float32)
    off = rng.standard_normal(ref.shape).astype(np.float32)
    table = rng.standard_normal((256, 8)).astype(np.float32)
    heavy = _ranking(off, ref, LexicalBranch(table, 1000.0, query_weight=1000.0))
    assert heavy["tower_top10_overlap"] < 0.9 and heavy["top10_overlap"] == 1.0
    light = _ranking(off, ref, LexicalBranch(table, 0.0, query_weight=0.0))
    assert light["top10_overlap"] == light["tower_top10_overlap"]
