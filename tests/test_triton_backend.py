"""The "triton" backend: its refusal without CUDA, its forward paths on small random models, and
(on a CUDA machine) parity with the eager backend on trained checkpoints.

Without CUDA the forward paths run under the Triton interpreter (conftest.py sets
TRITON_INTERPRET=1), at ~10 ms per program instance: the models stay tiny.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kernel_helpers import ON_GPU
from parity_helpers import PARITY_TEXTS, row_cosines

import fastlm
from fastlm.engine.decoding import TorchDecoder
from fastlm.engine.eager import chunked_nll
from fastlm.engine.loading import pick_auto_backend
from fastlm.engine.registry import backend_names, get_backend_class
from fastlm.engine.triton_backend import tower_embeddings
from fastlm.kernels import triton_available
from fastlm.models import SimpleLSTM_LM, SimpleTransformer_LM, architecture_of
from fastlm.models.embedder import EmbeddingTower, new_tower
from fastlm.models.lstm import LSTMKernelWeights, lstm_hidden_states

DEVICE = torch.device("cuda" if ON_GPU else "cpu")

needs_triton = pytest.mark.skipif(not triton_available(), reason="needs the triton package")
needs_gpu = pytest.mark.skipif(
    not ON_GPU, reason="needs CUDA: the triton backend refuses to start without a CUDA GPU"
)


def small_transformer() -> SimpleTransformer_LM:
    torch.manual_seed(0)
    model = SimpleTransformer_LM(
        vocab_size=50, d_model=32, nhead=2, num_layers=1, dim_feedforward=64, max_len=64
    )
    return model.to(DEVICE).eval()


def small_lstm() -> SimpleLSTM_LM:
    torch.manual_seed(0)
    return SimpleLSTM_LM(vocab_size=50, embedding_dim=16, hidden_dim=24, num_layers=2).to(
        DEVICE).eval()  # fmt: skip


def random_ids(B: int, T: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (B, T), generator=gen).to(DEVICE)


# ----------------------------------------------------------------------------- any machine


def test_backend_is_registered() -> None:
    assert get_backend_class("triton").name == "triton"
    assert "triton" in backend_names()


@pytest.mark.skipif(ON_GPU, reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda(small_checkpoints) -> None:
    with pytest.raises(ValueError, match="needs a CUDA GPU") as info:
        fastlm.load(small_checkpoints["transformer"], backend="triton")
    for name in backend_names() + ["auto"]:
        assert repr(name) in str(info.value), f"{name!r} missing from: {info.value}"
    assert pick_auto_backend(torch.device("cpu")) == "eager"


def test_missing_triton_names_the_extra(small_checkpoints, monkeypatch) -> None:
    monkeypatch.setattr("fastlm.engine.triton_backend.triton_available", lambda: False)
    with pytest.raises(ImportError, match=r'pip install "fastlm\[gpu\]"'):
        fastlm.load(small_checkpoints["lstm"], backend="triton")


# (compute dtype, atol): fp16 runs the linears under autocast; bf16 needs CUDA (see kernels tests)
COMPUTE_DTYPES = [
    pytest.param(torch.float32, 1e-4, id="fp32"),
    pytest.param(torch.float16, 5e-3, id="fp16"),
]


@needs_triton
@pytest.mark.parametrize("dtype, atol", COMPUTE_DTYPES)
@torch.inference_mode()
def test_transformer_forward_matches_eager(dtype: torch.dtype, atol: float) -> None:
    """Triton attention in the model's own layers == model.hidden_states (fp32 SDPA)."""
    model = small_transformer()
    ids = random_ids(2, 17)
    got = architecture_of(model).kernel_model(model, dtype).hidden_states(ids)[0]
    want = model.hidden_states(ids)[0]
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=atol, rtol=atol)


@needs_triton
@pytest.mark.parametrize("dtype, atol", COMPUTE_DTYPES)
@torch.inference_mode()
def test_lstm_forward_matches_nn_lstm(dtype: torch.dtype, atol: float) -> None:
    """Input projection + lstm_sequence per layer == nn.LSTM: output and final (h, c)."""
    model = small_lstm()
    ids = random_ids(2, 5, seed=1)
    out, (h, c) = lstm_hidden_states(LSTMKernelWeights.from_model(model, dtype), ids)
    assert out.dtype == h.dtype == dtype and c.dtype == torch.float32  # c: no per-step rounding
    want_out, (want_h, want_c) = model.hidden_states(ids)
    for name, got, want in (("out", out, want_out), ("h", h, want_h), ("c", c, want_c)):
        torch.testing.assert_close(
            got.float(), want, atol=atol, rtol=atol, msg=lambda m, name=name: f"{name}: {m}"
        )


@needs_triton
@torch.inference_mode()
def test_lstm_decoder_matches_full_forward() -> None:
    """Prefill (lstm_sequence) then lstm_step per token: the logits of a full forward pass."""
    model = small_lstm()
    ids = random_ids(1, 6, seed=2)[0].tolist()
    kernel = architecture_of(model).kernel_model(model, torch.float32)
    decoder = TorchDecoder(kernel, kernel.step_module(), 6, DEVICE)
    logits = [decoder.prefill(ids[:4]), decoder.step(ids[4]), decoder.step(ids[5])]
    want = model(torch.tensor([ids], device=DEVICE))[0][0, 3:].float().cpu()  # (3, V)
    for i, got in enumerate(logits):
        assert got.shape == (50,) and got.dtype == np.float32
        got = torch.from_numpy(got)
        where = f"position {3 + i}"
        torch.testing.assert_close(
            got, want[i], atol=1e-4, rtol=1e-4, msg=lambda m, where=where: f"{where}: {m}"
        )


@needs_triton
@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_kernel_model_scores_like_the_model(arch: str) -> None:
    """The triton backend's score path: chunked_nll over the kernel model == over the model,
    padded rows included (a carried state chunk by chunk for the LSTM)."""
    model = small_transformer() if arch == "transformer" else small_lstm()
    architecture = architecture_of(model)
    kernel = architecture.kernel_model(model, torch.float32)
    ids = random_ids(2, 9, seed=5).cpu().numpy()
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    want = chunked_nll(model, architecture, ids, mask)
    got = chunked_nll(kernel, architecture, ids, mask)
    np.testing.assert_allclose(got, want, rtol=1e-4)


@needs_triton
@pytest.mark.parametrize("trained", [False, True], ids=["lm-mean", "trained-tower"])
@pytest.mark.parametrize("arch", ["transformer", "lstm"])
@torch.inference_mode()
def test_tower_embeddings_match_the_tower(arch: str, trained: bool) -> None:
    """embed's path: the tower's pooling and projection over kernel states == tower(ids, mask),
    for the LM's own mean and for a trained tower (its own encoder copy, no output layer)."""
    torch.manual_seed(0)
    if arch == "lstm":  # a tower concatenates states and token rows: one width for both
        model = SimpleLSTM_LM(vocab_size=50, embedding_dim=24, hidden_dim=24, num_layers=2)
    else:
        model = small_transformer()
    model = model.to(DEVICE).eval()
    tower = new_tower(model, dim=8) if trained else EmbeddingTower(model)
    if trained:
        torch.nn.init.normal_(tower.proj.weight)  # not the identity it starts as
    tower = tower.to(DEVICE).eval()
    ids = random_ids(3, 9, seed=4)
    mask = torch.ones(3, 9, dtype=torch.int64, device=DEVICE)
    mask[1, 5:] = 0  # right padding
    mask[2, 2:] = 0
    got = tower_embeddings(tower, ids, mask)
    want = tower(ids, mask)
    assert got.dtype == torch.float32 and got.shape == want.shape == (3, tower.dim)
    torch.testing.assert_close(got, want.float(), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- CUDA only


@needs_gpu
@pytest.mark.usefixtures("no_tf32")  # eager's fp32 cuDNN LSTM and matmuls: no TF32
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_gpu_matches_eager(arch: str, dtype: str, small_checkpoints) -> None:
    eager = fastlm.load(small_checkpoints[arch], backend="eager", device="cuda")
    fast = fastlm.load(small_checkpoints[arch], backend="triton", device="cuda", dtype=dtype)
    assert fast.backend.describe()["dtype"] == dtype
    want, got = eager.embed(PARITY_TEXTS), fast.embed(PARITY_TEXTS)
    assert got.shape == want.shape and got.dtype == np.float32
    if dtype == "fp32":
        np.testing.assert_allclose(got, want, atol=1e-4)
    else:
        assert row_cosines(got, want).min() > 0.99
    rtol = 1e-4 if dtype == "fp32" else 2e-2
    want_ll = [r.log_likelihood for r in eager.score(PARITY_TEXTS)]
    got_ll = [r.log_likelihood for r in fast.score(PARITY_TEXTS)]
    np.testing.assert_allclose(got_ll, want_ll, rtol=rtol, atol=1e-3)


@needs_gpu
@pytest.mark.usefixtures("no_tf32")  # eager's fp32 cuDNN LSTM and matmuls: no TF32
@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_gpu_greedy_tokens_equal_eager(arch: str, small_checkpoints) -> None:
    eager = fastlm.load(small_checkpoints[arch], backend="eager", device="cuda")
    fast = fastlm.load(small_checkpoints[arch], backend="triton", device="cuda", dtype="fp32")
    prompt = "the cat sat on the mat"
    want = eager.generate(prompt, max_new_tokens=24, temperature=0)
    assert fast.generate(prompt, max_new_tokens=24, temperature=0) == want
    ids = [5, 6, 7, 8]
    want_ids = eager.generate(ids, max_new_tokens=24, temperature=0)
    assert fast.generate(ids, max_new_tokens=24, temperature=0) == want_ids


@needs_gpu
def test_gpu_auto_picks_triton(small_checkpoints) -> None:
    assert pick_auto_backend(torch.device("cuda")) == "triton"
    model = fastlm.load(small_checkpoints["lstm"], device="cuda")
    assert model.backend.name == "triton"
    with pytest.raises(ValueError, match="dtype must be one of"):
        fastlm.load(small_checkpoints["lstm"], backend="triton", device="cuda", dtype="int8")
