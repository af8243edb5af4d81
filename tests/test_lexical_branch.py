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
