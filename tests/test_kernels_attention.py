"""Parity of the Triton causal attention kernel with fastlm.kernels.reference, and input checks.

Without CUDA the kernel runs under the Triton interpreter (conftest.py sets
TRITON_INTERPRET=1), at ~10 ms per program instance: shapes stay small and odd.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers import DEVICE, DTYPE_TOLERANCES, ON_GPU, assert_close, skip_unless_runnable

pytest.importorskip("triton", reason="the Triton kernels need the triton package")

from fastlm.kernels import attention as attention_kernels  # noqa: E402
from fastlm.kernels import reference  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_tf32")  # GPU references: no TF32 in fp32


def make_qkv(B: int, NH: int, T: int, D: int, dtype: torch.dtype, seed: int = 0):
    """q, k, v (B, NH, T, D) with unit-normal entries."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, NH, T, D, generator=gen).to(DEVICE, dtype) for _ in range(3))


def make_padding_mask(B: int, T: int, side: str | None, seed: int = 0) -> torch.Tensor | None:
    """(B, T) bool, True = real token; row 0 keeps every token, the others 1..T-1 of them."""
    if side is None:
        return None
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max(T, 2), (B,), generator=gen).clamp(max=T)
    lengths[0] = T
    positions = torch.arange(T)[None, :]  # (1, T)
    if side == "right":
        mask = positions < lengths[:, None]
    else:  # left padding: pad queries at the start see no real key at all
        mask = positions >= (T - lengths)[:, None]
    return mask.to(DEVICE)


def test_reference_matches_sdpa() -> None:
    q, k, v = (t.float().cpu() for t in make_qkv(2, 3, 9, 16, torch.float32))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert_close("out", reference.causal_attention(q, k, v), expected, 1e-5, 1e-5)
    mask = make_padding_mask(2, 9, "right").cpu()
    visible = torch.ones(9, 9, dtype=torch.bool).tril() & mask[:, None, None, :]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
    assert_close("out (masked)", reference.causal_attention(q, k, v, mask), expected, 1e-5, 1e-5)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLERANCES)
@pytest.mark.parametrize("padding", [None, "right", "left"])
@pytest.mark.parametrize(
    "B, NH, T, D", [(1, 1, 1, 16), (3, 2, 17, 32), (1, 2, 130, 64), (2, 1, 33, 128)]
)
def test_attention_matches_reference(B, NH, T, D, padding, dtype, atol, rtol) -> None:
    skip_unless_runnable(dtype)
    q, k, v = make_qkv(B, NH, T, D, dtype, seed=T)
    mask = make_padding_mask(B, T, padding, seed=T)
    out = attention_kernels.causal_attention(q, k, v, key_padding_mask=mask)
    assert_close("out", out, reference.causal_attention(q, k, v, mask), atol, rtol)


def test_pad_queries_that_see_no_key_give_zeros() -> None:
    q, k, v = make_qkv(1, 2, 17, 16, torch.float32)
    mask = torch.zeros(1, 17, dtype=torch.int64, device=DEVICE)
    mask[:, 5:] = 7  # any non-zero integer means "real token"
    out = attention_kernels.causal_attention(q, k, v, key_padding_mask=mask)
    assert not out.isnan().any()
    assert out[:, :, :5].eq(0).all()
    assert_close("out", out, reference.causal_attention(q, k, v, mask), 3e-4, 1e-3)


def test_custom_scale() -> None:
    q, k, v = make_qkv(1, 1, 20, 32, torch.float32)
    out = attention_kernels.causal_attention(q, k, v, scale=0.3)
    assert_close("out", out, reference.causal_attention(q, k, v, scale=0.3), 3e-4, 1e-3)


def test_strided_heads_are_accepted() -> None:
    """Heads split off a (B, T, NH, D) projection: only the last dimension is contiguous."""
    q, k, v = (
        t.transpose(1, 2).contiguous().transpose(1, 2)
        for t in make_qkv(2, 3, 19, 16, torch.float16)
    )
    assert not q.is_contiguous()
    out = attention_kernels.causal_attention(q, k, v)
    assert out.is_contiguous()
    assert_close("out", out, reference.causal_attention(q, k, v), 5e-3, 1e-2)


def _qkv_with(**changes: torch.Tensor) -> dict:
    q, k, v = make_qkv(2, 1, 8, 16, torch.float32)
    args = {"q": q, "k": k, "v": v}
    args.update({name: t.to(DEVICE) for name, t in changes.items()})
    return args


BAD_INPUTS = [  # (changed inputs, exception, message fragment)
    pytest.param({"k": torch.randn(2, 1, 16, 8).transpose(-1, -2)}, ValueError,
                 "k must have a contiguous last dimension", id="k-last-dim-strided"),
    pytest.param({"v": torch.randn(2, 1, 8, 16).half()}, TypeError, "v has dtype", id="v-dtype"),
    pytest.param({"k": torch.randn(2, 1, 9, 16)}, ValueError, "k has shape", id="k-shape"),
    pytest.param({"q": torch.randn(2, 8, 16)}, ValueError, r"q must have shape \(B, NH, T, D\)",
                 id="q-3d"),
    pytest.param({"q": torch.randn(2, 1, 8, 16).long()}, TypeError, "q must be float32",
                 id="q-int"),
    pytest.param({name: torch.randn(2, 1, 8, 24) for name in "qkv"}, ValueError, "head_dim",
                 id="head-dim-24"),
    pytest.param({name: torch.randn(2, 1, 8, 8) for name in "qkv"}, ValueError, "head_dim",
                 id="head-dim-8"),
    pytest.param({"key_padding_mask": torch.ones(2, 9, dtype=torch.bool)}, ValueError,
                 r"key_padding_mask must have shape \(B, T\)", id="mask-shape"),
    pytest.param({"key_padding_mask": torch.ones(2, 8)}, TypeError,
                 "key_padding_mask must be bool or integer", id="mask-float"),
]  # fmt: skip


@pytest.mark.parametrize("changes, error, match", BAD_INPUTS)
def test_attention_rejects_bad_input(changes: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        attention_kernels.causal_attention(**_qkv_with(**changes))


@pytest.mark.skipif(ON_GPU, reason="checks the interpreter's refusal of bf16")
def test_interpreter_refuses_bf16() -> None:
    q, k, v = (t.bfloat16() for t in make_qkv(1, 1, 8, 16, torch.float32))
    with pytest.raises(NotImplementedError, match="bfloat16"):
        attention_kernels.causal_attention(q, k, v)


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA: on CPU the interpreter accepts CPU tensors")
def test_compiled_kernel_refuses_cpu_tensors() -> None:
    q, k, v = (t.cpu() for t in make_qkv(1, 1, 8, 16, torch.float16))
    with pytest.raises(ValueError, match="needs a CUDA device"):
        attention_kernels.causal_attention(q, k, v)


def test_batches_past_the_grid_limit_launch_in_chunks(monkeypatch) -> None:
    """B * NH over the 65,535 programs of grid axis 1 launches in batch chunks (the limit is
    lowered here so that a small input crosses it: 3 x 2 heads with at most 4 per launch)."""
    monkeypatch.setattr(attention_kernels, "MAX_GRID_YZ", 4)
    q, k, v = make_qkv(3, 2, 19, 16, torch.float32, seed=5)
    mask = make_padding_mask(3, 19, "right", seed=5)
    out = attention_kernels.causal_attention(q, k, v, key_padding_mask=mask)
    assert_close("out", out, reference.causal_attention(q, k, v, mask), 3e-4, 1e-3)


def test_interpreter_runs_one_fixed_config() -> None:
    """No timing loop under the interpreter; a real GPU tunes fp16/bf16 over several configs."""
    configs = attention_kernels.attention_configs(torch.float16, 64)
    assert len(configs) == (len(attention_kernels.TUNED_CONFIGS) if ON_GPU else 1)


def test_autotune_prune_drops_wide_tiles_only_at_head_dim_128() -> None:
    """The GPU autotuner's prune (not run on CPU) keeps every config spill-free per the AOT
    check: 128x128 tiles go at head_dim 128, nothing else does."""
    configs = attention_kernels._attn_fwd_tuned.configs
    assert len(configs) == len(attention_kernels.TUNED_CONFIGS)
    at_64 = attention_kernels._prune(configs, {}, HEAD_DIM=64)
    at_128 = attention_kernels._prune(configs, {}, HEAD_DIM=128)
    assert at_64 == configs
    assert at_128 and all(c.kwargs["BLOCK_N"] < 128 for c in at_128)
    assert len(at_128) == len(configs) - 1
    for c in configs:  # the stage split needs BLOCK_M to be a multiple of BLOCK_N
        assert c.kwargs["BLOCK_M"] % c.kwargs["BLOCK_N"] == 0
