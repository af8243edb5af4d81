"""Inputs at and beyond the model's limits: the compile backend up to the context length, long
prompts prefilled in bounded chunks, ONNX Runtime giving an outsize run's memory back, and a
bad `device` named in a typed error.

Long prompts run with a small prefill chunk (a class attribute, patched here) so a few hundred
tokens exercise the chunked path; real-size memory figures are measured outside the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import fastlm
import fastlm.runtime
from fastlm.engine.compiled import padded_width
from fastlm.engine.decoding import TorchDecoder
from fastlm.export import export
from fastlm.runtime import OnnxDecoder, OnnxModel

ARCHS = ("lstm", "transformer")
SMALL_CHUNK = 16  # prefill chunk for the tests: a 200-token prompt runs in 13 chunks


def exact_tokens(model, n: int) -> str:
    """A text of exactly n tokens (" the" is one token of the test tokenizer)."""
    text = "the" + " the" * (n - 1)
    assert len(model.tokenizer.encode(text)) == n
    return text


@pytest.fixture(scope="module")
def exports(tmp_path_factory, small_checkpoints) -> dict:
    """arch -> an fp32 export directory of the small checkpoint."""
    root = tmp_path_factory.mktemp("exports")
    return {a: export(small_checkpoints[a], root / a, dtype="fp32") for a in ARCHS}


# ----------------------------------------------------------------------------- compile
def test_compile_padding_never_passes_the_context(small_checkpoints):
    """Scoring pads (B, T) to a bucketed width + 1; the shifted width the model runs must stay
    within its position table (5,000 -> 5,009 padded used to ask for 5,008 positions)."""
    m = fastlm.load(small_checkpoints["transformer"], backend="compile", compile_backend="eager")
    limit, bucket = m.context_length, m.backend.bucket
    for T in (2, 17, limit - 2 * bucket, limit - bucket - 1, limit - 10, limit - 1, limit):
        ids = np.ones((1, T), np.int64)
        padded, mask, rows = m.backend._padded(ids, ids, extra=1)
        width = padded.shape[1]
        assert T <= width and width - 1 <= limit, (T, width)
        assert mask[0].sum() == T and rows == 1
        ids = np.ones((3, min(T, 256)), np.int64)  # the embedding forward: no shift
        assert m.backend._padded(ids, ids)[0].shape[1] <= limit


@pytest.mark.parametrize("bucket,extra,limit", [(16, 1, 5000), (16, 0, 256), (7, 1, 50)])
def test_padded_width_is_bucketed_and_capped_at_the_context(bucket, extra, limit):
    for T in range(max(extra, 1), limit + extra + 1):
        width = padded_width(T, bucket, extra, limit)
        assert T <= width <= limit + extra, (T, width)
        if width < limit + extra:  # below the cap: a bucket boundary
            assert (width - extra) % bucket == 0, (T, width)
    assert padded_width(100_000, 16, 1, None) == 100_001  # unbounded (the LSTM)


def test_compile_scores_up_to_the_context_like_eager(small_checkpoints):
    """Dynamo traces the scoring forward at the last lengths (with its cheap "eager" backend:
    the failure was in tracing) and gives eager's log-likelihoods, compiling once."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")
    ckpt = small_checkpoints["transformer"]
    comp = fastlm.load(ckpt, backend="compile", compile_backend=counter, threads=1)
    eager = fastlm.load(ckpt, backend="eager", threads=1)
    limit = comp.context_length
    texts = [exact_tokens(eager, limit - 10), exact_tokens(eager, limit - 1)]
    got = [r.log_likelihood for r in comp.score(texts, batch_size=1)]
    want = [r.log_likelihood for r in eager.score(texts, batch_size=1)]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert counter.frame_count == 1, f"{counter.frame_count} compiled frames"


@pytest.mark.slow
def test_aot_compiled_scoring_of_the_longest_text_matches_eager(small_checkpoints):
    """One compile (one shape) through AOTAutograd, as inductor's is traced, of the longest
    text the Transformer scores. (Inductor itself passes this too but takes ~70 s to compile
    on 2 cores; test_compile_backend checks its numerics on short texts.)"""
    torch._dynamo.reset()
    ckpt = small_checkpoints["transformer"]
    comp = fastlm.load(ckpt, backend="compile", compile_backend="aot_eager", threads=1)
    eager = fastlm.load(ckpt, backend="eager", threads=1)
    text = exact_tokens(eager, comp.context_length - 1)
    got, want = comp.score(text), eager.score(text)
    assert got.tokens == want.tokens == comp.context_length - 1
    np.testing.assert_allclose(got.log_likelihood, want.log_likelihood, rtol=1e-4)


# ----------------------------------------------------------------------------- prefill
def _record_torch_chunks(model, monkeypatch) -> list[int]:
    """Lengths of the sequences the model's hidden_states runs from now on."""
    seen: list[int] = []
    inner = model.backend.model.hidden_states

    def hidden_states(input_ids, state=None):
        seen.append(int(input_ids.shape[1]))
        return inner(input_ids, state)

    monkeypatch.setattr(model.backend.model, "hidden_states", hidden_states)
    return seen


def _record_onnx_chunks(monkeypatch) -> list[int]:
    """Lengths of the input_ids every decode.onnx run but a single-token step gets from now on
    (prompt chunks, and the guesses greedy generation checks)."""
    seen: list[int] = []
    inner = OnnxDecoder._run

    def run(self, ids, **options):
        seen.append(len(ids))
        return inner(self, ids, **options)

    monkeypatch.setattr(OnnxDecoder, "_run", run)
    return seen


@pytest.mark.parametrize("backend", ["eager", "onnx"])
@pytest.mark.parametrize("arch", ARCHS)
def test_long_prompts_are_prefilled_in_bounded_chunks(
    small_checkpoints, exports, monkeypatch, arch, backend
):
    """A prompt longer than the prefill chunk runs chunk by chunk, carrying the state (the
    LSTM's (h, c), the Transformer's KV cache), and continues exactly as one pass does."""
    ckpt = small_checkpoints[arch]
    reference = fastlm.load(ckpt, backend="eager", threads=1)
    prompt = " ".join(f"word{i % 37} and the" for i in range(60))
    n_prompt = len(reference.tokenizer.encode(prompt)) + 1  # + <|endoftext|>
    assert n_prompt > 10 * SMALL_CHUNK
    want = reference.generate(prompt, max_new_tokens=12)  # one pass: the default chunk

    opts = {"export_dir": exports[arch]} if backend == "onnx" else {}
    model = fastlm.load(ckpt, backend=backend, threads=1, **opts)
    if backend == "onnx":
        seen = _record_onnx_chunks(monkeypatch)
        monkeypatch.setattr(OnnxDecoder, "prefill_chunk", SMALL_CHUNK, raising=False)
    else:
        seen = _record_torch_chunks(model, monkeypatch)
        monkeypatch.setattr(TorchDecoder, "prefill_chunk", SMALL_CHUNK, raising=False)
    got = model.generate(prompt, max_new_tokens=12)
    assert max(seen) <= SMALL_CHUNK, f"a prefill ran {max(seen)} tokens at once"
    assert sum(n for n in seen if n > 1) >= n_prompt - SMALL_CHUNK  # the whole prompt went in
    assert got == want


@pytest.mark.parametrize("make", [TorchDecoder, OnnxDecoder], ids=["torch", "onnx"])
def test_the_default_prefill_chunk_is_bounded(make):
    chunk = getattr(make, "prefill_chunk", None)
    assert isinstance(chunk, int) and 1 <= chunk <= 4096


def test_a_transformer_prompt_over_the_context_is_refused_before_running(small_checkpoints):
    m = fastlm.load(small_checkpoints["transformer"], backend="eager", threads=1)
    with pytest.raises(ValueError, match="exceeds the context"):
        m.generate(exact_tokens(m, m.context_length), max_new_tokens=1)


# ----------------------------------------------------------------------------- onnx memory
def test_an_outsize_scoring_run_uses_a_session_without_arena(exports, monkeypatch):
    """A text over the attention-cell budget (it runs alone) is scored by a session without
    ONNX Runtime's CPU arena, which would otherwise keep its peak (1.5 GB for 4,999 tokens),
    and scores the same as the arena session does."""
    model = OnnxModel.load(exports["transformer"], threads=1)
    text = exact_tokens(model, 300)
    want = model.score(text).log_likelihood  # 301^2 cells: within the budget
    arenas: list[bool] = []
    inner = fastlm.runtime.run_session

    def run(session, feed, what, *args, **kwargs):
        arenas.append(session.get_session_options().enable_cpu_mem_arena)
        return inner(session, feed, what, *args, **kwargs)

    monkeypatch.setattr(fastlm.runtime, "run_session", run)
    monkeypatch.setattr(model.backend, "max_attention_cells", 200 * 200)
    got = model.score(text).log_likelihood
    assert arenas == [False]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    model.score(["short", "texts"])  # within the budgets: the arena session again
    assert arenas == [False, True]


ARENA_CHILD = textwrap.dedent("""
    import json, sys
    from fastlm.runtime import OnnxModel

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

    m = OnnxModel.load(sys.argv[1], threads=1)
    m.score(["warm up " * 100] * 8)
    before = rss_mb()
    text = "the" + " the" * (m.context_length - 2)
    assert m.score(text).tokens == m.context_length - 1
    print(json.dumps({"before": before, "after": rss_mb()}))
""")


@pytest.mark.slow
def test_scoring_the_longest_text_gives_the_memory_back(exports):
    """Linux only. One 4,999-token Transformer text on ONNX Runtime: RSS was +1.45 GB after
    the call (the arena kept its peak); now the memory goes back to near where it was."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/status")
    proc = subprocess.run(
        [sys.executable, "-c", ARENA_CHILD, str(exports["transformer"])],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["after"] - out["before"] < 400, out


# ----------------------------------------------------------------------------- device
@pytest.mark.parametrize("device", ["bogus", "CPU", "cuda:x", ""])
def test_an_unknown_device_is_a_value_error_naming_it(small_checkpoints, device):
    with pytest.raises(ValueError, match=r"device .*expected cpu, cuda"):
        fastlm.load(small_checkpoints["lstm"], device=device)


@pytest.mark.parametrize("device", [1.5, True, ["cpu"]])
def test_a_device_of_the_wrong_type_is_a_type_error(small_checkpoints, device):
    with pytest.raises(TypeError, match="device must be"):
        fastlm.load(small_checkpoints["lstm"], device=device)


def test_an_unavailable_device_is_a_value_error(small_checkpoints):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(ValueError, match="device 'mps' requested but no MPS device is available"):
        fastlm.load(small_checkpoints["lstm"], device="mps")


def test_a_valid_device_still_loads(small_checkpoints):
    m = fastlm.load(small_checkpoints["lstm"], device=torch.device("cpu"), threads=1)
    assert m.backend.device == torch.device("cpu")
    assert fastlm.load(small_checkpoints["lstm"], device="cpu:0").backend.device.type == "cpu"


def test_a_decode_step_that_cannot_allocate_is_a_memory_error(exports, monkeypatch):
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    decoder = fastlm.runtime.load(exports["transformer"], threads=1).backend.new_decoder(64)
    assert decoder.bound  # the CPU path: state kept in ONNX Runtime's buffers

    def fail(*args, **kwargs):
        raise ort_state.RuntimeException("Failed to allocate memory for requested buffer")

    monkeypatch.setattr(decoder.session, "run_with_iobinding", fail)
    with pytest.raises(MemoryError, match="a decode step"):
        decoder.prefill([5, 6, 7])
