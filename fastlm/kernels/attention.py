"""Causal flash attention forward (no backward): the inference path of the Transformer LM.

Structure follows Triton's fused-attention tutorial. The grid is (cdiv(T, BLOCK_M), B * NH);
a program owns BLOCK_M query rows of one (batch, head) and streams the keys/values in
BLOCK_N blocks with an online softmax (running max m_i, running sum l_i, fp32 accumulator):

    stage 1: key blocks entirely left of the query block -> fully visible, no causal mask
    stage 2: key blocks on the diagonal                   -> causal mask (key <= query)
    key blocks right of the diagonal                      -> never loaded

BLOCK_M is a multiple of BLOCK_N, so stage 1 ends exactly where the query block starts.
An optional key_padding_mask (B, T) hides padding keys in both stages. A query row that
sees no real key at all (a pad position before the first real token) gets zeros, never
NaN: the running max stays -inf, so the exponent uses 0 in its place, and l_i = 0 at the
end divides by 1 instead.

q, k and v may be strided views (e.g. heads split off a fused qkv projection) as long as
their last dimension is contiguous (stride 1); the output is a new contiguous tensor.

Launch: fp16/bf16 on a GPU are autotuned over TUNED_CONFIGS, keyed on the length bucket
(next power of two of T), head_dim and the mask flag; fp32 and the interpreter run one fixed
config. The grid's second axis (B * NH) is capped at 65,535 by CUDA: larger batches launch
in batch chunks. Offsets inside one (batch, head) are int32, checked by the launcher.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fastlm.kernels.common import (
    MAX_GRID_YZ,
    MIN_DOT_CONSTEXPR,
    SUPPORTED_DTYPES,  # noqa: F401  (re-exported: callers read it here)
    check_float_dtype,
    check_is_tensor,
    check_runnable,
    dot_precision,
    is_interpreted,
    make_config,
    pick_kernel,
)

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
# the most rows a query block may run past T: _check_offsets' int32 bound relies on it
MAX_BLOCK_M = 128
LOG2_E = 1.4426950408889634  # softmax runs in base 2: exp(x) = exp2(x * log2(e))
_MAX_BLOCK_M = tl.constexpr(MAX_BLOCK_M)  # jit code reads only tl.constexpr globals


@triton.jit
def _attn_fwd_inner(
    acc, l_i, m_i, q, k_base, v_base, mask_base, stride_kn, stride_vn,
    offs_m, offs_d, lo, hi, T, qk_scale,
    DIAGONAL: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Fold key/value blocks [lo, hi) into the online softmax state (acc, l_i, m_i)."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None]  # (D, BLOCK_N)
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]  # (BLOCK_N, D)
        if DIAGONAL:  # the last block may run past T
            k = tl.load(k_ptrs, mask=(offs_n < T)[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=(offs_n < T)[:, None], other=0.0)
        else:  # stage 1 blocks end at or before the query block start, always < T
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        qk = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        if DIAGONAL:
            qk = tl.where(offs_m[:, None] >= offs_n[None, :], qk, float("-inf"))
        if HAS_MASK:
            keep = tl.load(mask_base + offs_n, mask=offs_n < T, other=0)
            qk = tl.where((keep != 0)[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # rows with nothing visible yet keep m = -inf; use 0 so exp2 gives 0, never NaN
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(qk - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    NH, T, T_BUCKET, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # T_BUCKET (next power of two of T) is unused here: it is the autotuner's cache key, so
    # every length in a bucket shares one tuned config instead of tuning per length.
    # What the launcher relies on, checked per compiled config (a CompilationError naming the
    # rule): tile shapes tl.arange/tl.dot accept, the stage split, _check_offsets' margin.
    tl.static_assert(BLOCK_M >= MIN_DOT_CONSTEXPR, "BLOCK_M must be >= 16 (tl.dot)")
    tl.static_assert((BLOCK_M & (BLOCK_M - 1)) == 0, "BLOCK_M must be a power of two")
    tl.static_assert(BLOCK_N >= MIN_DOT_CONSTEXPR, "BLOCK_N must be >= 16 (tl.dot)")
    tl.static_assert((BLOCK_N & (BLOCK_N - 1)) == 0, "BLOCK_N must be a power of two")
    tl.static_assert(HEAD_DIM >= MIN_DOT_CONSTEXPR, "HEAD_DIM must be >= 16 (tl.dot)")
    tl.static_assert((HEAD_DIM & (HEAD_DIM - 1)) == 0, "HEAD_DIM must be a power of two")
    tl.static_assert(BLOCK_M % BLOCK_N == 0, "BLOCK_M must be a multiple of BLOCK_N (stages)")
    tl.static_assert(BLOCK_M <= _MAX_BLOCK_M, "BLOCK_M must be <= 128 (_check_offsets)")
    tl.static_assert(HEAD_DIM <= 128, "HEAD_DIM must be <= 128 (SUPPORTED_HEAD_DIMS)")
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    off_b = (off_bh // NH).to(tl.int64)  # int64: offsets of large batches overflow int32
    off_h = (off_bh % NH).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_base = q_ptr + off_b * stride_qb + off_h * stride_qh
    k_base = k_ptr + off_b * stride_kb + off_h * stride_kh
    v_base = v_ptr + off_b * stride_vb + off_h * stride_vh
    mask_base = mask_ptr + off_b * T
    row_ok = (offs_m < T)[:, None]
    q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_ok, other=0.0)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    # stage 1: fully visible key blocks [0, start_m)
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, mask_base, stride_kt, stride_vt,
        offs_m, offs_d, 0, start_m, T, qk_scale,
        False, HAS_MASK, BLOCK_N, DOT_PRECISION,
    )  # fmt: skip
    # stage 2: diagonal key blocks [start_m, min(start_m + BLOCK_M, T))
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, mask_base, stride_kt, stride_vt,
        offs_m, offs_d, start_m, tl.minimum(start_m + BLOCK_M, T), T, qk_scale,
        True, HAS_MASK, BLOCK_N, DOT_PRECISION,
    )  # fmt: skip
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # l_i == 0: no visible key -> zeros
    o_ptrs = out_ptr + off_b * stride_ob + off_h * stride_oh
    o_ptrs += offs_m[:, None] * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_ok)


# ----------------------------------------------------------------------------- launcher


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise a ValueError/TypeError naming the offending tensor."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_is_tensor(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, NH, T, D), got {tuple(t.shape)}")
        if t.shape != q.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but q has {tuple(q.shape)}")
        check_float_dtype(name, t)
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
        if t.stride(-1) != 1:
            raise ValueError(
                f"{name} must have a contiguous last dimension (stride 1), got strides "
                f"{t.stride()}; call .contiguous() on it first"
            )
    check_runnable("q", q, "the Triton attention kernel needs", __name__, _interpreted())
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"q, k, v head_dim (last dimension) must be one of {SUPPORTED_HEAD_DIMS}, "
            f"got {q.shape[-1]}"
        )


def _key_mask_as_int8(key_padding_mask: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """key_padding_mask (B, T) bool/int -> contiguous int8 (1 = real key), checked against q."""
    B, _, T, _ = q.shape
    if not isinstance(key_padding_mask, torch.Tensor):
        raise TypeError(f"key_padding_mask must be a torch.Tensor, got {type(key_padding_mask)}")
    if tuple(key_padding_mask.shape) != (B, T):
        got = tuple(key_padding_mask.shape)
        raise ValueError(f"key_padding_mask must have shape (B, T) = {(B, T)}, got {got}")
    if key_padding_mask.dtype.is_floating_point or key_padding_mask.dtype.is_complex:
        raise TypeError(f"key_padding_mask must be bool or integer, got {key_padding_mask.dtype}")
    if key_padding_mask.device != q.device:
        raise ValueError(f"key_padding_mask is on {key_padding_mask.device} but q is on {q.device}")
    keep = key_padding_mask if key_padding_mask.dtype == torch.bool else key_padding_mask.ne(0)
    return keep.contiguous().view(torch.int8)  # bool and int8 share one byte: no copy


# fp16/bf16 configs the autotuner picks from: (BLOCK_M, BLOCK_N, num_warps, num_stages).
# Started from the Triton tutorial's search; the AOT compile check (tools.aot) then
# moved 128x64 tiles to 8 warps, which the tutorial drops: with 4 they spill on sm_90 at
# head_dim 128 (352 B per thread) and at head_dim 32 with a mask. BLOCK_M is a multiple of
# BLOCK_N (the stage split needs it).
TUNED_CONFIGS = ((64, 64, 4, 3), (64, 32, 4, 4), (128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 3))
# fp32 (parity checks only): small tiles keep fp32 operands in shared memory; 8 warps, as
# 4 spill 1.4 KB per thread at head_dim 64 (AOT compile check). head_dim 128 still spills.
FP32_CONFIG = (64, 32, 8, 2)
# under the interpreter (tests on CPU): one fixed config, never a timing loop
INTERPRETER_CONFIG = (64, 32, 4, 2)


_BLOCKS = ("BLOCK_M", "BLOCK_N")


def _interpreted() -> bool:
    """True when triton was in interpreter mode (TRITON_INTERPRET=1) as this module loaded."""
    return is_interpreted(_attn_fwd_kernel)


def _fits(block_n: int, head_dim: int) -> bool:
    """128x128 tiles are left out at head_dim 128: they take 224 KiB of shared memory on sm_90
    (one program per SM) and spill on sm_80 (the AOT compile check shows both)."""
    return not (head_dim >= 128 and block_n >= 128)


def attention_configs(
    dtype: torch.dtype, head_dim: int, interpreted: bool | None = None
) -> list[triton.Config]:
    """The configs the launcher may run for this dtype and head_dim (one unless autotuned).
    interpreted: None for this module's mode; the AOT check passes False, as it compiles for
    a GPU whatever mode its process imported the kernels in."""
    if _interpreted() if interpreted is None else interpreted:
        return [make_config(_BLOCKS, INTERPRETER_CONFIG)]
    if dtype == torch.float32:
        return [make_config(_BLOCKS, FP32_CONFIG)]
    return [make_config(_BLOCKS, c) for c in TUNED_CONFIGS if _fits(c[1], head_dim)]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The autotuner's early prune: the same rule as attention_configs."""
    return [c for c in configs if _fits(c.kwargs["BLOCK_N"], kwargs["HEAD_DIM"])]


# Autotuned entry point for fp16/bf16 on a GPU. The key holds the length bucket, head_dim and
# the mask flag; the autotuner adds the tensors' dtypes itself. The kernel only writes `out`,
# so re-running it while timing configs is harmless.
_attn_fwd_tuned = triton.autotune(
    configs=[make_config(_BLOCKS, c) for c in TUNED_CONFIGS],
    key=["T_BUCKET", "HEAD_DIM", "HAS_MASK"],
    prune_configs_by={"early_config_prune": _prune},
)(_attn_fwd_kernel)


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention forward; returns out (B, NH, T, D), contiguous, in q's dtype.

    q, k, v: (B, NH, T, D), one dtype (fp32/fp16/bf16) and device, D in 16/32/64/128, last
    dimension contiguous (other strides are free). key_padding_mask: (B, T) bool or integer,
    True/non-zero = real token; None = all real. scale: default 1 / sqrt(D).
    See reference.causal_attention for the exact semantics. fp16/bf16 on a GPU are autotuned
    per (length bucket, head_dim, mask): the first call of each bucket times a few configs.
    """
    _check_inputs(q, k, v)
    B, NH, T, D = q.shape
    out = torch.empty(B, NH, T, D, dtype=q.dtype, device=q.device)
    if B * NH * T == 0:
        return out
    _check_offsets(q, k, v)
    has_mask = key_padding_mask is not None
    # unused when HAS_MASK is False; any pointer will do
    keep = _key_mask_as_int8(key_padding_mask, q) if has_mask else q
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    # grid axis 1 is B * NH, at most 65,535 programs: launch in batch chunks that fit it
    rows = max(1, MAX_GRID_YZ // NH)
    for b0 in range(0, B, rows):
        b1 = min(B, b0 + rows)
        mask_rows = keep[b0:b1] if has_mask else keep
        _launch(q[b0:b1], k[b0:b1], v[b0:b1], mask_rows, out[b0:b1], scale, has_mask)
    return out


def _launch(q, k, v, keep, out, scale: float, has_mask: bool, config=None) -> None:
    """One kernel launch over q's (B, NH) with B * NH <= MAX_GRID_YZ. config: a triton.Config
    to run instead of the autotuned choice (the GPU check smoke-tests each one)."""
    B, NH, T, D = q.shape
    assert B * NH <= MAX_GRID_YZ, (B, NH)
    configs = attention_configs(q.dtype, D) if config is None else [config]
    kernel, fixed = pick_kernel(configs, _attn_fwd_tuned, _attn_fwd_kernel)

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(T, meta["BLOCK_M"]), B * NH)

    kernel[grid](
        q, k, v, keep, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        NH, T, triton.next_power_of_2(T), scale * LOG2_E,
        HEAD_DIM=D, HAS_MASK=has_mask,
        DOT_PRECISION=dot_precision(q.dtype),
        **fixed,
    )  # fmt: skip


def _check_offsets(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Offsets inside one (batch, head) slab are int32 in the kernel: check they fit."""
    T = q.shape[2]
    for name, t in (("q", q), ("k", k), ("v", v)):
        if (T + MAX_BLOCK_M) * t.stride(2) >= 2**31:  # the last block may run past T
            raise ValueError(
                f"{name}: T={T} rows {t.stride(2)} elements apart pass the kernel's int32 "
                "offsets (2**31); split the sequence or use backend='eager'"
            )
