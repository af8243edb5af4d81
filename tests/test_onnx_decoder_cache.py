"""The ONNX decoder keeps its state in ONNX Runtime's buffers: the Transformer's KV cache sized
once for the generation and written in place by the graph, the LSTM's (h, c) alternating between
two kept sets; tokens identical to eager, and to the unbound path."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import fastlm
import fastlm.runtime
from fastlm.ort.decoder import OnnxDecoder


@pytest.fixture(scope="module")
def runtime(export_of):
    return fastlm.runtime.load(export_of("transformer", "fp32"), threads=1)


def test_the_graph_attends_with_the_fused_op_and_no_concat(export_of):
    graph = onnx.load(str(export_of("transformer", "fp32") / "decode.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("GroupQueryAttention") == 3  # one per layer
    assert "Concat" not in ops and "Softmax" not in ops  # no growing past, no unfused attention
    assert [i.name for i in graph.input][:4] == [
        "input_ids",
        "position_ids",
        "seqlens_k",
        "total_sequence_length",
    ]


def test_the_cache_is_sized_once_and_written_in_place(runtime):
    dec = runtime.backend.new_decoder(20)
    assert isinstance(dec, OnnxDecoder) and dec.in_place and dec.binding is not None
    buffers = dict(dec.state)
    assert buffers["past_key_0"].shape() == [1, 4, 20, 64]
    dec.prefill([5, 6, 7, 8])
    dec.step(9)
    assert all(dec.state[k] is v for k, v in buffers.items())  # the same buffers, no copies
    key = buffers["past_key_2"].numpy()
    assert (np.abs(key[0, :, :5]).sum(axis=(0, 2)) > 0).all()  # the five tokens' keys
    assert not key[0, :, 5:].any()  # nothing beyond them


def test_greedy_tokens_equal_eager_across_prefill_chunks(runtime, small_checkpoints, monkeypatch):
    eager = fastlm.load(small_checkpoints["transformer"], backend="eager", threads=1)
    prompt = list(range(3, 40))
    want = eager.generate(prompt, max_new_tokens=24)
    assert runtime.generate(prompt, max_new_tokens=24) == want
    monkeypatch.setattr(OnnxDecoder, "prefill_chunk", 5)  # the prompt in 8 runs
    assert runtime.generate(prompt, max_new_tokens=24) == want


def test_unbound_runs_give_the_same_logits(runtime):
    """Without IO binding (any provider but the CPU's), the caches go out and back as arrays."""
    bound = runtime.backend.new_decoder(12)
    plain = runtime.backend.new_decoder(12)
    plain.bound, plain.binding = False, None
    plain.state = {k: v.numpy().copy() for k, v in plain.state.items()}
    np.testing.assert_allclose(plain.prefill([4, 5, 6]), bound.prefill([4, 5, 6]), atol=1e-5)
    for token in (7, 8, 9):
        np.testing.assert_allclose(plain.step(token), bound.step(token), atol=1e-5)


def test_a_run_past_the_cache_is_refused_before_running(runtime):
    dec = runtime.backend.new_decoder(6)
    dec.prefill([4, 5, 6, 7, 8])
    dec.step(9)
    with pytest.raises(ValueError, match="decoder's cache"):
        dec.step(10)
    assert dec.length == 6


def test_a_fixed_size_state_alternates_between_two_kept_buffer_sets(export_of):
    """The LSTM's (h, c): one binding for the generation, outputs into the spare set, swapped."""
    lstm = fastlm.runtime.load(export_of("lstm", "fp32"), threads=1)
    dec = lstm.backend.new_decoder(50)
    assert not dec.in_place and dec.spare is not None
    first, second = dict(dec.state), dict(dec.spare)
    plain = lstm.backend.new_decoder(50)
    plain.bound, plain.binding, plain.spare = False, None, None
    plain.state = {k: v.numpy().copy() for k, v in plain.state.items()}
    np.testing.assert_allclose(dec.prefill([4, 5, 6]), plain.prefill([4, 5, 6]), atol=1e-5)
    assert all(dec.state[k] is second[k] for k in first)  # the run wrote the spare set
    np.testing.assert_allclose(dec.step(7), plain.step(7), atol=1e-5)
    assert all(dec.state[k] is first[k] for k in first)  # and back
    np.testing.assert_allclose(dec.state["h"].numpy(), plain.state["h"], atol=1e-5)
