"""The "onnx" engine backend: same answers as eager, export-on-first-use cache, threads, errors."""

from __future__ import annotations

import numpy as np
import pytest
from model_helpers import exported, model_sha
from parity_helpers import run_in_threads

import fastlm
import fastlm.export.pipeline as pipeline
from fastlm.engine.onnx_backend import OnnxBackend
from fastlm.engine.registry import backend_names, get_backend_class

ARCHS = ("lstm", "transformer")
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "a",
    "",
    "Ünïcödé — 日本語 🤖",
    "Once upon a time there was a little girl. " * 8,
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, small_checkpoints):
    """The session's export cache, holding every (arch, dtype) these tests load."""
    for arch in ARCHS:
        for dtype in ("fp32", "int8"):
            path = exported(tmp_path_factory, small_checkpoints, arch, dtype)
    return path.parent


@pytest.fixture(scope="module", params=ARCHS)
def pair(request, small_checkpoints, cache_dir):
    """(eager model, onnx fp32 model) of one architecture."""
    ckpt = small_checkpoints[request.param]
    return (
        fastlm.load(ckpt, backend="eager"),
        fastlm.load(ckpt, backend="onnx", cache_dir=cache_dir, threads=1),
    )


def test_registered():
    assert "onnx" in backend_names() and get_backend_class("onnx") is OnnxBackend


def test_embed_and_score_match_eager(pair):
    eager, onnx = pair
    np.testing.assert_allclose(
        onnx.embed(TEXTS, batch_size=2), eager.embed(TEXTS, batch_size=2), atol=1e-5
    )
    assert not onnx.embed(TEXTS[2]).any()  # "" -> zero vector
    assert onnx.embed([]).shape == (0, 256)
    for a, b in zip(onnx.score(TEXTS), eager.score(TEXTS)):
        assert a.tokens == b.tokens
        assert a.log_likelihood == pytest.approx(b.log_likelihood, rel=1e-5, abs=1e-4)


def test_generate_matches_eager(pair):
    eager, onnx = pair
    for prompt in ("Once upon a time", "The"):
        assert onnx.generate(prompt, max_new_tokens=20, temperature=0) == eager.generate(
            prompt, max_new_tokens=20, temperature=0
        )
    ids = onnx.generate(start_tokens=[1, 40, 50], max_length=12, temperature=0)
    assert ids == eager.generate(start_tokens=[1, 40, 50], max_length=12, temperature=0)
    sampled = onnx.generate("The", max_new_tokens=10, temperature=0.8, seed=3)
    assert sampled == onnx.generate("The", max_new_tokens=10, temperature=0.8, seed=3)


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_via_load(small_checkpoints, cache_dir, arch):
    model = fastlm.load(small_checkpoints[arch], backend="onnx", dtype="int8", cache_dir=cache_dir)
    info = model.backend.describe()
    assert info["dtype"] == "int8" and info["providers"] == ["CPUExecutionProvider"]
    eager = fastlm.load(small_checkpoints[arch], backend="eager")
    cos = (model.embed(TEXTS) * eager.embed(TEXTS)).sum(axis=1)
    nonempty = [i for i, t in enumerate(TEXTS) if t]
    assert cos[nonempty].min() > 0.99
    assert isinstance(model.generate("Once upon a time", max_new_tokens=8), str)


def test_exports_on_first_use_then_reuses(small_checkpoints, tmp_path, monkeypatch):
    ckpt = small_checkpoints["lstm"]
    model = fastlm.load(ckpt, backend="onnx", cache_dir=tmp_path)
    entry = tmp_path / f"{model_sha(ckpt)}-fp32"
    assert model.backend.path == entry and (entry / "parity.json").is_file()

    def no_export(*args, **kwargs):
        raise AssertionError("the cached export should have been reused")

    monkeypatch.setattr(pipeline, "_fill", no_export)
    again = fastlm.load(ckpt, backend="onnx", cache_dir=tmp_path)
    np.testing.assert_array_equal(again.embed(TEXTS), model.embed(TEXTS))
    monkeypatch.undo()
    with open(entry / "lm.onnx", "ab") as f:  # a damaged cache entry is exported again
        f.write(b"junk")
    repaired = fastlm.load(ckpt, backend="onnx", cache_dir=tmp_path)
    np.testing.assert_array_equal(repaired.embed(TEXTS), model.embed(TEXTS))
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]


def test_export_dir_option(small_checkpoints, cache_dir):
    ckpt = small_checkpoints["transformer"]
    path = cache_dir / f"{model_sha(ckpt)}-int8"
    model = fastlm.load(ckpt, backend="onnx", export_dir=path)
    assert model.backend.dtype == "int8"
    lstm_dir = cache_dir / f"{model_sha(small_checkpoints['lstm'])}-fp32"
    with pytest.raises(ValueError, match="exported from different weights"):
        fastlm.load(ckpt, backend="onnx", export_dir=lstm_dir)


def test_bad_options(small_checkpoints, cache_dir):
    with pytest.raises(ValueError, match="unknown dtype 'bf16'"):
        fastlm.load(small_checkpoints["lstm"], backend="onnx", dtype="bf16", cache_dir=cache_dir)
    with pytest.raises(TypeError):
        fastlm.load(small_checkpoints["lstm"], backend="onnx", colour="blue")


def test_rejects_the_same_bad_inputs_as_eager(pair):
    for model in pair:
        with pytest.raises(TypeError):
            model.embed(["ok", 3])
        with pytest.raises(TypeError, match="list of str"):
            model.score(iter(["x"]))
        with pytest.raises(ValueError, match="batch_size"):
            model.embed(["x"], batch_size=0)
        with pytest.raises(ValueError, match="max_new_tokens"):
            model.generate("The", max_new_tokens=0)
        with pytest.raises(ValueError, match="outside the vocabulary"):
            model.generate([1, 5000], max_new_tokens=3)
        with pytest.raises(ValueError, match="temperature"):
            model.generate("The", temperature=-1)


def test_sessions_are_thread_safe(pair):
    """InferenceSession.run from 8 threads at once gives the serial results."""
    model = pair[1]
    batch = model.tokenizer.encode_batch(TEXTS[:2] + TEXTS[3:])
    feed = (batch.input_ids, batch.attention_mask)
    serial_emb = model.backend.embed_batch(*feed)
    serial_gen = model.generate([1, 50, 60], max_new_tokens=16)
    results = run_in_threads(
        lambda: (model.backend.embed_batch(*feed), model.generate([1, 50, 60], 16))
    )
    assert len(results) == 8
    for emb, gen in results:
        np.testing.assert_array_equal(emb, serial_emb)
        assert gen == serial_gen
