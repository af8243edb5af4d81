"""ONNX export: directory contents, dynamic shapes, fp16/int8 graphs, parity certificate.

Each (architecture, dtype) is exported once per test session (`exported`), into a directory laid
out like the onnx backend's cache so test_onnx_backend.py can reuse it.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from model_helpers import exported, model_sha
from onnx import TensorProto, helper, numpy_helper

from fastlm.checkpoint import load_checkpoint
from fastlm.export import BOUNDS, DTYPES
from fastlm.export.precision import to_fp16
from fastlm.io import sha256_file
from fastlm.models.layers import NextTokenLogits
from fastlm.runtime import verify_export_dir
from fastlm.threads import torch_threads

ARCHS = ("lstm", "transformer")
# (embedding atol, logits atol) against PyTorch fp32 on random ids, per dtype
TOL = {"fp32": (1e-4, 1e-4), "fp16": (5e-3, 5e-3), "int8": (5e-2, 2e-1)}


@pytest.fixture(scope="session")
def torch_models(small_checkpoints):
    return {a: load_checkpoint(small_checkpoints[a]).model for a in ARCHS}


@pytest.fixture(scope="session")
def torch_embedders(small_checkpoints):
    """The checkpoints' embedding towers (weights of their own, not the LM's)."""
    return {a: load_checkpoint(small_checkpoints[a]).embedder for a in ARCHS}


@contextlib.contextmanager
def one_torch_thread():
    """Reference computations on one thread: on a busy 2-core machine torch's threads wait on
    each other (an LSTM step measured ~100x slower)."""
    with torch_threads(1), torch.inference_mode():
        yield


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_export_directory(tmp_path_factory, small_checkpoints, arch, dtype):
    out = exported(tmp_path_factory, small_checkpoints, arch, dtype)
    names = {
        "embed.onnx",
        "lm.onnx",
        "decode.onnx",
        "tokenizer.json",
        "config.json",
        "manifest.json",
        "parity.json",
        "lexical.safetensors",  # the test checkpoints carry a lexical branch
    }
    assert {f.name for f in out.iterdir()} == names | {"README.md"}  # the card is not hashed
    assert f"Weights in {dtype}" in (out / "README.md").read_text(encoding="utf-8")
    manifest = verify_export_dir(out)
    assert manifest["dtype"] == dtype and manifest["model"]["architecture"] == arch
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert all(sha256_file(out / n) == h for n, h in manifest["files"].items())
    assert manifest["source"]["weights_sha256"] == model_sha(small_checkpoints[arch])
    assert manifest["graphs"]["embed"]["outputs"]["embedding"] == "float[batch, 256]"
    assert (out / "tokenizer.json").read_text() == (
        small_checkpoints[arch] / "tokenizer.json"
    ).read_text()
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["finite"] and report["bounds"] == BOUNDS[dtype]
    assert report["greedy"]["tokens"] == 64
    # export() refuses anything outside the bounds, so check a margin inside them: on these
    # briefly trained models every dtype is 100x closer to cosine 1 than its bound (measured:
    # 1 - cosine_min 5e-14 fp32, 3e-8 fp16, 2e-6 int8) and agrees on 100% of PyTorch's greedy
    # tokens (asserted: 97%; the int8 bound is 90%)
    gap = 1 - report["embedding"]["cosine_min"]
    assert gap <= (1 - BOUNDS[dtype]["embedding.cosine_min"]) / 100, gap
    assert report["greedy"]["agreement"] >= 0.97


def _batch(B: int, T: int, vocab: int, seed: int):
    """Random right-padded ids; row 0 holds a single real token when B > 1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (B, T), generator=g)
    mask = torch.ones_like(ids)
    if B > 1:
        mask[0, 1:] = 0
        ids[0, 1:] = 0
    return ids, mask


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_dynamic_shapes_match_torch(
    tmp_path_factory, small_checkpoints, torch_models, torch_embedders, arch, dtype
):
    """Batch 1 and 7, lengths 1, 3, 300: shapes follow the input, values match torch fp32."""
    out = exported(tmp_path_factory, small_checkpoints, arch, dtype)
    model, (emb_tol, logit_tol) = torch_models[arch], TOL[dtype]
    embed, lm = _session(out / "embed.onnx"), _session(out / "lm.onnx")
    for B, T in ((1, 1), (7, 3), (1, 300), (7, 300)):
        ids, mask = _batch(B, T, model.config.vocab_size, seed=B * 1000 + T)
        with one_torch_thread():
            ref_emb = torch_embedders[arch](ids, mask).numpy()
            ref_logits = NextTokenLogits(model)(ids).numpy()
        got_emb = embed.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        got_logits = lm.run(None, {"input_ids": ids.numpy()})[0]
        assert got_emb.shape == (B, 256) and got_logits.shape == (B, T, model.config.vocab_size)
        assert np.isfinite(got_emb).all() and np.isfinite(got_logits).all()
        where = f"{arch} {dtype} B={B} T={T}"
        np.testing.assert_allclose(got_emb, ref_emb, atol=emb_tol, rtol=0, err_msg=where)
        np.testing.assert_allclose(got_logits, ref_logits, atol=logit_tol, rtol=0, err_msg=where)


def _initial_state(arch: str, B: int, cache: int) -> dict:
    if arch == "lstm":
        z = np.zeros((2, B, 256), np.float32)
        return {"h": z, "c": z.copy()}
    z = np.zeros((B, 4, cache, 64), np.float32)  # per layer, the cache sized for the sequence
    return {f"past_{kind}_{i}": z.copy() for i in range(3) for kind in ("key", "value")}


def _controls(arch: str, B: int, start: int, stop: int) -> dict:
    """The Transformer's control inputs for tokens start..stop-1, logits for the last (the LSTM
    has none)."""
    if arch == "lstm":
        return {}
    return {
        "position_ids": np.tile(np.arange(start, stop), (B, 1)),
        "seqlens_k": np.full(B, stop - 1, np.int32),
        "total_sequence_length": np.array(stop, np.int32),
        "logits_index": np.array([stop - start - 1]),
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_graph_continues_like_full_forward(
    tmp_path_factory, small_checkpoints, torch_models, arch
):
    """Prefill 5 tokens, then 1 token at a time and a 3-token chunk: each call's last logits
    equal the full forward's logits at that position (fp32); the Transformer's cache holds each
    token's keys at its position and zeros after the last one. Batch 7, except the
    Transformer's 3-token chunk after a past: ONNX Runtime's GroupQueryAttention runs those
    at batch 1 only (the decoder's batch), so there the first row continues alone."""
    out = exported(tmp_path_factory, small_checkpoints, arch, "fp32")
    decode, model = _session(out / "decode.onnx"), torch_models[arch]
    ids = torch.randint(
        2, model.config.vocab_size, (7, 12), generator=torch.Generator().manual_seed(1)
    )
    with one_torch_thread():
        ref = NextTokenLogits(model)(ids).numpy()
    state, start, B = _initial_state(arch, 7, cache=16), 0, 7
    for stop in (5, 6, 7, 8, 9, 12):
        if arch == "transformer" and stop - start > 1 and start > 0:
            B, state = 1, {k: v[:1] for k, v in state.items()}
        feed = {"input_ids": ids[:B, start:stop].numpy(), **_controls(arch, B, start, stop)}
        logits, *new = decode.run(None, {**feed, **state})
        if arch == "transformer":  # (B, K, V): the positions of logits_index
            logits = logits[:, -1]
        np.testing.assert_allclose(logits, ref[:B, stop - 1], atol=1e-4, rtol=0)
        state, start = dict(zip(state, new)), stop
    assert B == (1 if arch == "transformer" else 7)
    if arch == "transformer":
        key = state["past_key_0"]
        assert key.shape == (1, 4, 16, 64)
        assert (np.abs(key[:, :, :12]).sum(axis=(1, 3)) > 0).all()  # every token's keys
        assert not key[:, :, 12:].any()  # nothing written past the last token


def test_fp16_graph_layout(tmp_path_factory, small_checkpoints):
    """fp16 weights; fp32 inputs/outputs, LayerNorm, Softmax, reductions and pooling."""
    out = exported(tmp_path_factory, small_checkpoints, "transformer", "fp16")
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out / "embed.onnx")))
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({i.name: i.data_type for i in g.initializer})
    assert all(
        v.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.INT64)
        for v in [*g.input, *g.output]
    )
    for node in g.node:
        if (
            node.op_type in ("MatMul", "Gemm")
            and node.input[1] in types
            and any(i.name == node.input[1] for i in g.initializer)
        ):
            assert types[node.input[1]] == TensorProto.FLOAT16, node.name
        if node.op_type in ("LayerNormalization", "Softmax", "ReduceSum", "ReduceMean"):
            assert types[node.input[0]] == TensorProto.FLOAT, node.name
        if node.op_type in ("Div", "Mul", "Add", "Relu"):
            assert all(types.get(i) != TensorProto.FLOAT16 for i in node.input), node.name
    big = [i for i in g.initializer if int(np.prod(i.dims)) >= 4096]
    assert big and all(i.data_type == TensorProto.FLOAT16 for i in big)
    fp32_size = (
        (exported(tmp_path_factory, small_checkpoints, "transformer", "fp32") / "lm.onnx")
        .stat()
        .st_size
    )
    assert (out / "lm.onnx").stat().st_size < 0.7 * fp32_size


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_graph_is_quantized(tmp_path_factory, small_checkpoints, arch):
    out = exported(tmp_path_factory, small_checkpoints, arch, "int8")
    ops = {n.op_type for n in onnx.load(str(out / "lm.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    if arch == "lstm":  # quant_pre_process lets the quantizer reach the LSTM weights
        assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops


def test_to_fp16_keeps_exporter_casts_valid():
    """The float16-converter trap: an exporter Cast-to-float ("_to_copy") must keep its type.
    to_fp16 never retypes an existing tensor, so the graph loads and computes correctly."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    table = rng.standard_normal((1024, 4)).astype(np.float32)  # large: stored as fp16
    nodes = [
        helper.make_node("Cast", ["x"], ["_to_copy"], to=TensorProto.FLOAT, name="_to_copy"),
        helper.make_node("MatMul", ["_to_copy", "w"], ["y0"], name="mm"),
        helper.make_node("Gather", ["table", "rows"], ["picked"], name="gather"),
        helper.make_node("Add", ["y0", "picked"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([3]), "rows"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    half = to_fp16(model)
    sess = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, 8))
    want = x.astype(np.float32) @ w + table[3]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=2e-3, atol=2e-2)
    inits = {i.name: i.data_type for i in half.graph.initializer}
    assert inits == {
        "w__fp16": TensorProto.FLOAT16,
        "table__fp16": TensorProto.FLOAT16,
        "rows": TensorProto.INT64,
    }
