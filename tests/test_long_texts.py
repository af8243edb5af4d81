"""Long texts: windowed embeddings, token-budget batches, bounded memory on every path.

Parity is checked between backends (eager, ONNX Runtime through the engine, the torch-free
runtime), never against stored vectors, so these tests hold whatever `embed_batch` computes.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model_helpers import exported
from parity_helpers import row_cosines

import fastlm
from fastlm.batching import (
    BatchMemoryError,
    embed_windowed,
    l2_normalize,
    plan_batches,
    split_windows,
)
from fastlm.runtime import OnnxModel

ARCHS = ("lstm", "transformer")
WORDS = "the of and a to in was he that it his her with as had for she on at by".split()


def words(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + rng.choice(["", "s", "ed", "ing"]) for _ in range(n))


# ----------------------------------------------------------------------------- planning
@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 3000), max_size=60),
    batch_size=st.integers(1, 16),
    budget=st.integers(1, 5000),
    cells=st.one_of(st.none(), st.integers(1, 10**7)),
)
def test_plan_batches_respects_budgets(lengths, batch_size, budget, cells):
    batches = plan_batches(lengths, batch_size, budget, cells)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == [i for i, n in enumerate(lengths) if n > 0]
    for b in batches:
        width = max(lengths[i] for i in b)
        if len(b) > 1:  # only a single item may exceed a budget
            assert len(b) <= batch_size and len(b) * width <= budget
            assert cells is None or len(b) * width * width <= cells


def test_split_windows_near_equal_and_lossless():
    seq = list(range(1000))
    pieces = split_windows(seq, 256)
    assert [len(p) for p in pieces] == [250, 250, 250, 250]  # not 256 x 3 + a 232 tail
    assert sum(pieces, []) == seq
    assert split_windows(seq[:256], 256) == [seq[:256]]


@pytest.mark.parametrize(
    "bad,error",
    [(0, ValueError), (-1, ValueError), (True, TypeError), (1.5, TypeError), (None, TypeError)],
)
def test_sizes_must_be_positive_ints(bad, error):
    with pytest.raises(error, match="token_budget"):
        plan_batches([3], 4, bad)
    with pytest.raises(error, match="batch_size"):
        plan_batches([3], bad, 16)


def test_allocation_failure_names_the_text():
    def run_batch(ids, mask):
        if ids.shape[1] > 100:
            raise MemoryError("simulated")
        return np.ones((ids.shape[0], 4), np.float32)

    seqs = [[1] * 10, [1] * 150, [1] * 5]
    with pytest.raises(BatchMemoryError, match=r"texts\[1\], 150 tokens"):
        embed_windowed(seqs, 4, run_batch, window=512)


def test_a_failure_that_is_not_about_memory_propagates_unchanged():
    def run_batch(ids, mask):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        embed_windowed([[1, 2]], 4, run_batch, window=8)


# ----------------------------------------------------------------------------- engine
@pytest.fixture(scope="module", params=ARCHS)
def eager(request, small_checkpoints):
    return fastlm.load(small_checkpoints[request.param], backend="eager", threads=1)


def test_windowed_embedding_is_the_token_weighted_mean_of_its_windows(eager):
    """The engine's answer vs a plain computation: each window through embed_batch alone."""
    text = words(3 * eager.embed_window, seed=1)
    ids = eager.tokenizer.encode(text)
    assert len(ids) > 2 * eager.embed_window
    rows, weights = [], []
    for piece in split_windows(ids, eager.embed_window):
        batch = np.asarray([piece], np.int64)
        rows.append(eager.backend.embed_batch(batch, np.ones_like(batch))[0])
        weights.append(len(piece))
    want = np.average(rows, axis=0, weights=weights)[None]
    if eager.backend.lexical is not None:  # the branch reads the whole text
        want = eager.backend.lexical.mix(want, [text])
    want = l2_normalize(want)[0]
    got = eager.embed([text, "short"], batch_size=3, token_budget=700)[0]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_budget_and_batch_size_do_not_change_the_vectors(eager):
    texts = [words(n, seed=n) for n in (5, 90, 700, 2600, 1, 40)] + [""]
    base = eager.embed(texts)
    for batch_size, budget in ((1, 1), (3, 500), (64, 10**6)):
        got = eager.embed(texts, batch_size=batch_size, token_budget=budget)
        assert row_cosines(got, base).min() > 1 - 1e-5
    assert not base[-1].any()  # "" -> zero row


def test_bad_budgets_are_typed_errors(eager):
    for bad, error in ((0, ValueError), (-5, ValueError), (True, TypeError)):
        with pytest.raises(error, match="token_budget"):
            eager.embed(["x"], token_budget=bad)
        with pytest.raises(error, match="token_budget"):
            eager.score(["x"], token_budget=bad)
        with pytest.raises(error, match="batch_size"):
            eager.score(["x"], batch_size=bad)


def test_score_is_the_same_in_any_batching(eager):
    texts = [words(n, seed=n) for n in (3, 60, 1500)] + [""]
    if eager.architecture == "lstm":
        texts.append(words(2500, seed=9))  # > the scoring chunk: state carried across chunks
    base = [r.log_likelihood for r in eager.score(texts, batch_size=1)]
    got = [r.log_likelihood for r in eager.score(texts, batch_size=8, token_budget=2000)]
    np.testing.assert_allclose(got, base, rtol=1e-5)


# ----------------------------------------------------------------------------- backends
@pytest.fixture(scope="module")
def onnx_trio(tmp_path_factory, small_checkpoints):
    """arch -> (eager, onnx backend fp32, torch-free runtime OnnxModel), one export each."""
    out = {}
    for arch in ARCHS:
        path = exported(tmp_path_factory, small_checkpoints, arch, "fp32")
        ckpt = small_checkpoints[arch]
        out[arch] = (
            fastlm.load(ckpt, backend="eager", threads=1),
            fastlm.load(ckpt, backend="onnx", export_dir=path, threads=1),
            OnnxModel.load(path, threads=1),
        )
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_long_texts_embed_alike_on_every_backend_and_the_runtime(onnx_trio, arch):
    eager, onnx, runtime = onnx_trio[arch]
    assert eager.embed_window == runtime.embed_window
    w = eager.embed_window
    texts = [words(n, seed=n) for n in (w // 2, w + 1, 2 * w + 7, 5 * w)] + [""]
    ref = eager.embed(texts)
    for other in (onnx.embed(texts, token_budget=3 * w), runtime.embed(texts, batch_size=2)):
        cos = row_cosines(ref, other)
        assert cos.min() > 0.9999, f"min cosine {cos.min():.6f} at text {cos.argmin()}"


@pytest.mark.parametrize("arch", ARCHS)
def test_long_texts_score_alike_on_onnx(onnx_trio, arch, monkeypatch):
    eager, onnx, runtime = onnx_trio[arch]
    texts = [words(n, seed=n) for n in (30, 1200)]
    want = [r.log_likelihood for r in eager.score(texts)]
    np.testing.assert_allclose([r.log_likelihood for r in onnx.score(texts)], want, rtol=1e-4)
    np.testing.assert_allclose([r.log_likelihood for r in runtime.score(texts)], want, rtol=1e-4)
    if arch == "lstm":  # the long-text route of the onnx backend for a carried state (chunked)
        monkeypatch.setattr("fastlm.engine.onnx_backend.ONNX_SCORE_MAX", 100)
        got = [r.log_likelihood for r in onnx.score(texts)]
        np.testing.assert_allclose(got, want, rtol=1e-4)


# ----------------------------------------------------------------------------- memory
MEMORY_CHILD = textwrap.dedent("""
    import json, random, sys
    import fastlm

    def peak_mb():  # VmHWM: this process's own peak (ru_maxrss survives fork + exec)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024

    path, backend, what, n_words = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    opts = {"export_dir": sys.argv[5]} if backend == "onnx" else {}
    m = fastlm.load(path, backend=backend, threads=1, **opts)
    rng = random.Random(0)
    words = "the of and a to in was he that it his her with as had for she on at by".split()
    text = " ".join(rng.choice(words) + rng.choice(["", "s", "ed"]) for _ in range(n_words))
    # warm up with full batches (a quarter of the text): the growth measured below is then what
    # the text's length adds beyond one token budget's worth of activations
    quarter = " ".join(text.split()[: n_words // 4])
    m.embed(quarter); m.score(["warm up " * 300] * 4)
    before = peak_mb()
    if what == "embed":
        vec = m.embed(text)
        assert abs(float((vec * vec).sum()) - 1) < 1e-4
    else:
        assert m.score(text).tokens > 0
    print(json.dumps({"tokens": len(m.tokenizer.encode(text)), "grew_mb": peak_mb() - before}))
""")


def _peak_growth(*args) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_child_env(),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch,what", [("lstm", "embed"), ("lstm", "score"), ("transformer", "embed")]
)
def test_unbounded_lstm_and_long_texts_run_in_bounded_memory(small_checkpoints, arch, what):
    """Linux only (reads /proc/self/status).
    A ~60k-token text: windows (embed) and chunks carrying the LSTM's state (score) keep the
    peak flat; what is left is the tokenizer (~0.45 KB per token while encoding, ~27 MB here)
    and allocator noise, well under the 300 MB bound. One full-length pass grows far more
    (docs/benchmarks.md, "Memory of one very long text": SPEC-sized LSTM, ~97k tokens, +622 MB
    to embed, +2,172 MB to score)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/status")
    out = _peak_growth(small_checkpoints[arch], "eager", what, 60_000)
    assert out["tokens"] > 50_000
    assert out["grew_mb"] < 300, out  # the tokenizer and allocator noise only


@pytest.mark.slow
def test_onnx_arena_gives_memory_back_after_an_outsize_batch(tmp_path_factory, small_checkpoints):
    """One 64 x 1,024-token LSTM batch left ~0.5 GB in ONNX Runtime's arena (0.9 GB RSS after,
    0.4 GB before); with shrinkage the RSS returns to near where it was."""
    path = exported(tmp_path_factory, small_checkpoints, "lstm", "fp32")
    child = textwrap.dedent("""
        import json, sys
        import numpy as np
        from fastlm.runtime import OnnxModel

        def rss_mb():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024

        m = OnnxModel.load(sys.argv[1], threads=1)
        m.embed(["warm up"] * 8)
        before = rss_mb()
        ids = np.random.default_rng(0).integers(5, 1900, (64, 1024))
        m.backend.embed_batch(ids, np.ones_like(ids))
        print(json.dumps({"before": before, "after": rss_mb()}))
    """)
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/status")
    proc = subprocess.run(
        [sys.executable, "-c", child, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_child_env(),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["after"] - out["before"] < 150, out


def test_no_progress_bar_in_captured_logs_unless_asked(eager, capsys):
    texts = [f"text {i}" for i in range(1000)]  # the default threshold
    eager.embed(texts)
    assert "embed" not in capsys.readouterr().err  # stderr is not a terminal here
    eager.embed(texts[:10], show_progress_bar=True)
    assert "embed" in capsys.readouterr().err
