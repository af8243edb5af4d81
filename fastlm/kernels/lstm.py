"""Fused LSTM kernels: one launch per layer step, or one launch per layer sequence.

Both kernels take the input projection x @ W_ih^T from outside (one big matmul over all
steps is what cuBLAS does best) and fuse everything that follows it: the recurrent matmul
h @ W_hh^T, the bias, the four gate activations and the cell update. Inputs are fp32, fp16
or bf16; matmuls accumulate in fp32 and the gate math runs in fp32; h is stored in the
input dtype. The cell state c stays fp32 whatever the I/O dtype (inside lstm_sequence;
lstm_step takes and returns a float32 c): rounding c to bf16 every step loses the small
updates of a long memory and long texts drift (tests: test_long_sequence_cell_state_*).
Gate order is torch.nn.LSTM's: i, f, g, o (rows [0:H), [H:2H), [2H:3H), [3H:4H) of W_hh and
of the bias). Row offsets are int64 (B * T * 4H passes 2**31 at batch 64 and T = 32k);
W_hh offsets stay int32 under the launchers' assert H <= MAX_HIDDEN.

Each cell first issues its x-projection and bias loads and uses them as the initial matmul
accumulators, then runs the recurrent matmul: those loads do not depend on h, so their
latency hides behind the matmul instead of following it.

lstm_step design: grid (cdiv(B, BLOCK_B), cdiv(H, BLOCK_H)). Program (pb, ph) owns batch
rows [pb*BLOCK_B, ...) and hidden units [ph*BLOCK_H, ...) and computes all four gates of
its units, so the cell update needs nothing from other programs and the (B, 4H) gate
tensor never touches global memory.

lstm_sequence design (persistent): the hidden dimension cannot be split across programs,
because step t needs the whole h_{t-1} and programs cannot wait for each other. So there
is one program per block of BLOCK_B batch rows, and it owns the WHOLE hidden dimension:

    for t in range(T):
        h_prev = h0 if t == 0 else out[:, t - 1]      # read back from global memory
        for each hidden chunk j (BLOCK_H units):
            gates = x_proj[:, t, chunk] + bias[chunk] + h_prev @ W_hh[chunk rows]^T
            c[:, j] = f * c[:, j] + i * g;  out[:, t, j] = o * tanh(c[:, j])
        debug_barrier()   # all of h_t is written before any thread reads it at t + 1

Writes of step t go to out[:, t] while reads come from out[:, t - 1], so chunks of the
same step never race; the barrier orders steps. c lives in a private fp32 (B, H) buffer (a
copy of c0) updated in place by the same program. Batch blocks are fully independent. The
price: only cdiv(B, BLOCK_B) programs run, and each streams all of W_hh every step (from L2
on a GPU), so it pays off for small H (256: W_hh is 1024x256); docs/gpu.md predicts it.

Block sizes and warps come from step_config / sequence_config, which the AOT compile check
(fastlm.kernels.aot, scripts/aot_compile.py) compiles for sm_90 and sm_80.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_DOT = 16  # tl.dot needs every tile dimension >= 16
MAX_HIDDEN = 23_170  # W_hh offsets are int32: 4 * H * H < 2**31
MAX_GRID_YZ = 65_535  # CUDA limit on the 2nd and 3rd grid dimensions


@triton.jit
def _tanh(x):
    # tanh(x) = 2 * sigmoid(2x) - 1: the same code on every backend and in the interpreter
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _recurrent_gates(
    acc_i, acc_f, acc_g, acc_o, h_ptr, stride_hb, w_ptr, offs_b, offs_j, B, H,
    BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """acc_* + h[offs_b] @ W_hh[gate * H + offs_j]^T for the 4 gates: (BLOCK_B, BLOCK_H) fp32."""
    mask_b = offs_b < B
    mask_j = offs_j < H
    for k0 in range(0, H, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < H
        h_mask = mask_b[:, None] & mask_k[None, :]
        # .cg: skip L1, so the persistent kernel always sees the h_{t-1} it just wrote
        h = tl.load(
            h_ptr + offs_b[:, None] * stride_hb + offs_k[None, :],
            mask=h_mask, other=0.0, cache_modifier=".cg",
        )  # fmt: skip
        # W_hh^T tiles (BLOCK_K, BLOCK_H): element [k, j] = W_hh[gate * H + j, k]. int32 offsets
        # are safe: the launchers assert 4 * H * H < 2**31.
        w_mask = mask_k[:, None] & mask_j[None, :]
        w_tile = w_ptr + offs_j[None, :] * H + offs_k[:, None]
        w_i = tl.load(w_tile, mask=w_mask, other=0.0)
        w_f = tl.load(w_tile + H * H, mask=w_mask, other=0.0)
        w_g = tl.load(w_tile + 2 * H * H, mask=w_mask, other=0.0)
        w_o = tl.load(w_tile + 3 * H * H, mask=w_mask, other=0.0)
        acc_i = tl.dot(h, w_i, acc_i, input_precision=DOT_PRECISION)
        acc_f = tl.dot(h, w_f, acc_f, input_precision=DOT_PRECISION)
        acc_g = tl.dot(h, w_g, acc_g, input_precision=DOT_PRECISION)
        acc_o = tl.dot(h, w_o, acc_o, input_precision=DOT_PRECISION)
    return acc_i, acc_f, acc_g, acc_o


@triton.jit
def _input_gate(x_ptr, stride_xb, bias_ptr, offs_b, offs_j, mask, H, GATE: tl.constexpr):
    """x_proj[offs_b, GATE*H + offs_j] + bias[GATE*H + offs_j] as a (BLOCK_B, BLOCK_H) fp32 tile."""
    cols = GATE * H + offs_j
    x = tl.load(x_ptr + offs_b[:, None] * stride_xb + cols[None, :], mask=mask, other=0.0)
    b = tl.load(bias_ptr + cols, mask=offs_j < H, other=0.0)
    return x.to(tl.float32) + b.to(tl.float32)[None, :]


@triton.jit
def _lstm_cell(
    h_ptr, stride_hb, x_ptr, stride_xb, w_ptr, bias_ptr, c_prev, offs_b, offs_j, mask, B, H,
    BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """(h_new, c_new) fp32 tiles for rows offs_b and hidden units offs_j; c_prev is fp32.

    The x-projection and bias loads are issued first and seed the matmul accumulators: they
    do not depend on h, so their latency hides behind the recurrent matmul instead of
    following it (and they cost no extra registers)."""
    acc_i = _input_gate(x_ptr, stride_xb, bias_ptr, offs_b, offs_j, mask, H, 0)
    acc_f = _input_gate(x_ptr, stride_xb, bias_ptr, offs_b, offs_j, mask, H, 1)
    acc_g = _input_gate(x_ptr, stride_xb, bias_ptr, offs_b, offs_j, mask, H, 2)
    acc_o = _input_gate(x_ptr, stride_xb, bias_ptr, offs_b, offs_j, mask, H, 3)
    acc_i, acc_f, acc_g, acc_o = _recurrent_gates(
        acc_i, acc_f, acc_g, acc_o, h_ptr, stride_hb, w_ptr, offs_b, offs_j, B, H,
        BLOCK_K, DOT_PRECISION,
    )  # fmt: skip
    c_new = tl.sigmoid(acc_f) * c_prev + tl.sigmoid(acc_i) * _tanh(acc_g)
    h_new = tl.sigmoid(acc_o) * _tanh(c_new)
    return h_new, c_new


@triton.jit
def _lstm_step_kernel(
    x_ptr, h_ptr, c_ptr, w_ptr, bias_ptr, h_out_ptr, c_out_ptr, B, H,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # int64 rows: B * 4H may pass 2**31 for huge batches; the int32 column math stays cheap
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_j = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_b < B)[:, None] & (offs_j < H)[None, :]
    tile = offs_b[:, None] * H + offs_j[None, :]  # (BLOCK_B, BLOCK_H) offsets into (B, H)
    c_prev = tl.load(c_ptr + tile, mask=mask, other=0.0).to(tl.float32)
    h_new, c_new = _lstm_cell(
        h_ptr, H, x_ptr, 4 * H, w_ptr, bias_ptr, c_prev, offs_b, offs_j, mask, B, H,
        BLOCK_K, DOT_PRECISION,
    )  # fmt: skip
    tl.store(h_out_ptr + tile, h_new.to(h_out_ptr.dtype.element_ty), mask=mask)
    tl.store(c_out_ptr + tile, c_new.to(c_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lstm_sequence_kernel(
    x_ptr, h0_ptr, c_ptr, w_ptr, bias_ptr, out_ptr, B, T, H,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # int64 row math: a row of x_proj is T * 4H long, so B * T * 4H passes 2**31 at batch 64
    # and T = 32k, and the LSTM has no context limit. `zero64 + n` widens a scalar that may be
    # a compile-time constant (triton specializes arguments equal to 1), where .to() is absent.
    zero64 = tl.program_id(0).to(tl.int64) * 0
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    out_row = (zero64 + T) * H  # elements between rows of out (B, T, H)
    for t in range(T):
        t64 = zero64 + t
        if t == 0:
            h_prev_ptr = h0_ptr
            stride_hb = zero64 + H
        else:
            h_prev_ptr = out_ptr + (t64 - 1) * H  # out[:, t - 1], rows T * H apart
            stride_hb = out_row
        for j0 in range(0, H, BLOCK_H):
            offs_j = j0 + tl.arange(0, BLOCK_H)
            mask = mask_b[:, None] & (offs_j < H)[None, :]
            # c_ptr: the launcher's private fp32 (B, H) buffer, whatever the I/O dtype
            c_tile = c_ptr + offs_b[:, None] * H + offs_j[None, :]
            c_prev = tl.load(c_tile, mask=mask, other=0.0, cache_modifier=".cg")
            h_new, c_new = _lstm_cell(
                h_prev_ptr, stride_hb, x_ptr + t64 * 4 * H, 4 * out_row, w_ptr, bias_ptr,
                c_prev, offs_b, offs_j, mask, B, H, BLOCK_K, DOT_PRECISION,
            )  # fmt: skip
            tl.store(c_tile, c_new, mask=mask)
            h_tile = out_ptr + offs_b[:, None] * out_row + t64 * H + offs_j[None, :]
            tl.store(h_tile, h_new.to(out_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # h_t and c_t complete before step t + 1 reads them


# ----------------------------------------------------------------------------- launchers


def _interpreted() -> bool:
    """True when triton was in interpreter mode (TRITON_INTERPRET=1) as this module loaded."""
    return isinstance(_lstm_step_kernel, InterpretedFunction)


def _check_tensor(
    name: str, t: torch.Tensor, shape: tuple[int, ...], layout: str, like: torch.Tensor
) -> None:
    """Raise a ValueError/TypeError naming `name` unless t has `shape`, like's dtype and device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {layout} = {shape}, got {tuple(t.shape)}")
    if t.dtype != like.dtype:
        raise TypeError(f"{name} must have dtype {like.dtype} like the other inputs, got {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {like.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous; call .contiguous() on it first")


def _check_dtype_and_device(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    interpreted = _interpreted()
    if not (t.is_cuda or interpreted):
        raise ValueError(
            f"{name} is on {t.device}: the Triton LSTM kernels need a CUDA device "
            "(or TRITON_INTERPRET=1 set before importing fastlm.kernels.lstm, for tests)"
        )
    if interpreted and t.dtype == torch.bfloat16:
        # triton 3.6's interpreter computes tl.dot on the raw bf16 bits: a wrong answer
        raise NotImplementedError(
            f"{name} is bfloat16, which the Triton interpreter cannot run correctly; "
            "use float32/float16 on CPU or run on a CUDA device"
        )


def _check_recurrent(
    h: torch.Tensor, c: torch.Tensor, w_hh: torch.Tensor, bias: torch.Tensor, names: tuple[str, str]
) -> tuple[int, int]:
    """Validate the state and weights; returns (B, H). c may be h's dtype or float32."""
    h_name, c_name = names
    _check_dtype_and_device(h_name, h)
    if h.dim() != 2:
        raise ValueError(f"{h_name} must have shape (B, H), got {tuple(h.shape)}")
    B, H = h.shape
    if H > MAX_HIDDEN:
        raise ValueError(f"hidden size {H} is above the kernels' limit {MAX_HIDDEN} (4H^2 < 2^31)")
    _check_tensor(h_name, h, (B, H), "(B, H)", h)
    if not isinstance(c, torch.Tensor):
        raise TypeError(f"{c_name} must be a torch.Tensor, got {type(c).__name__}")
    if c.dtype not in (h.dtype, torch.float32):
        raise TypeError(
            f"{c_name} must have dtype {h.dtype} (like {h_name}) or float32, got {c.dtype}"
        )
    c_like = h if c.dtype != torch.float32 else c  # a float32 cell state is always welcome
    _check_tensor(c_name, c, (B, H), "(B, H)", c_like)
    _check_tensor("w_hh", w_hh, (4 * H, H), "(4H, H)", h)
    _check_tensor("bias", bias, (4 * H,), "(4H,)", h)
    return B, H


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs: full-precision products (no TF32), so fp32 parity holds at 3e-4
    return "ieee" if dtype == torch.float32 else "tf32"


def _num_warps(block_b: int, block_h: int) -> int:
    """One warp per 128 elements of a gate tile, 2 to 8 warps. The AOT compile check
    (fastlm.kernels.aot) picked it: with 4 warps a 32x32 tile spills at H = 40 (255 regs)."""
    return max(2, min(8, block_b * block_h // 128))


def step_config(B: int, H: int) -> tuple[dict, dict]:
    """(constexprs, launch options) lstm_step uses for batch B and hidden size H."""
    # Small batches (decode) are bound by reading W_hh: narrower hidden blocks spread that
    # read over more programs. Every tile dimension stays >= 16 for tl.dot. Tiles stop at
    # 32x64: 64x64 spills on sm_80 (168-364 B per thread, AOT compile check) and bigger
    # batches simply get more programs.
    block_b = min(32, max(MIN_DOT, triton.next_power_of_2(B)))
    block_h = 16 if B <= 16 else (32 if B <= 32 else 64)
    block_k = min(64, max(MIN_DOT, triton.next_power_of_2(H)))
    constexprs = {"BLOCK_B": block_b, "BLOCK_H": block_h, "BLOCK_K": block_k}
    return constexprs, {"num_warps": _num_warps(block_b, block_h), "num_stages": 2}


def sequence_config(H: int) -> tuple[dict, dict]:
    """(constexprs, launch options) lstm_sequence uses for hidden size H."""
    block_b = MIN_DOT  # as many programs as possible: each one is a serial chain over T
    block_h = 64
    block_k = min(64, max(MIN_DOT, triton.next_power_of_2(H)))
    constexprs = {"BLOCK_B": block_b, "BLOCK_H": block_h, "BLOCK_K": block_k}
    # 8 warps, not the 4 of _num_warps: a lone program per 16 rows walks the whole chain, so
    # more warps per program is the only parallelism it gets, and the AOT check shows 4 warps
    # spilling in bf16 (12-448 B) where 8 do not. 3 stages: 2 spill 4 B on sm_80 at H = 256.
    return constexprs, {"num_warps": 8, "num_stages": 3}


def lstm_step(
    x_proj_t: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    w_hh: torch.Tensor,
    bias: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fused LSTM step; returns new tensors (h_new (B, H) in h's dtype, c_new (B, H) in
    c's dtype).

    x_proj_t (B, 4H) = x_t @ W_ih^T without bias; h (B, H); c (B, H) in h's dtype or float32
    (keep c in float32 across steps with bf16/fp16 weights: rounding it every step loses the
    small updates and long texts drift); w_hh (4H, H); bias (4H,) = b_ih + b_hh. All
    contiguous, one dtype except c, one CUDA device. See reference.lstm_step.
    """
    B, H = _check_recurrent(h, c, w_hh, bias, ("h", "c"))
    _check_tensor("x_proj_t", x_proj_t, (B, 4 * H), "(B, 4H)", h)
    h_new, c_new = torch.empty_like(h), torch.empty_like(c)
    constexprs, options = step_config(B, H)
    grid = (triton.cdiv(B, constexprs["BLOCK_B"]), triton.cdiv(H, constexprs["BLOCK_H"]))
    assert grid[1] <= MAX_GRID_YZ, grid  # holds for every H <= MAX_HIDDEN
    _lstm_step_kernel[grid](
        x_proj_t, h, c, w_hh, bias, h_new, c_new, B, H,
        DOT_PRECISION=_dot_precision(h.dtype), **constexprs, **options,
    )  # fmt: skip
    return h_new, c_new


def lstm_sequence(
    x_proj: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    w_hh: torch.Tensor,
    bias: torch.Tensor,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One LSTM layer over a whole sequence in one persistent launch.

    Returns (out (B, T, H), (h_T (B, H), c_T (B, H))): out and h_T in the input dtype, c_T in
    c0's dtype. x_proj (B, T, 4H) = x @ W_ih^T without bias (batch first); h0 (B, H); c0
    (B, H) in h0's dtype or float32; w_hh (4H, H); bias (4H,). All contiguous, one CUDA
    device. The cell state runs in float32 inside the launch whatever the I/O dtype. See
    reference.lstm_layer and the module docstring for the design.
    """
    B, H = _check_recurrent(h0, c0, w_hh, bias, ("h0", "c0"))
    if not isinstance(x_proj, torch.Tensor) or x_proj.dim() != 3 or x_proj.shape[1] < 1:
        shape = tuple(x_proj.shape) if isinstance(x_proj, torch.Tensor) else type(x_proj).__name__
        raise ValueError(f"x_proj must have shape (B, T, 4H) with T >= 1, got {shape}")
    T = x_proj.shape[1]
    _check_tensor("x_proj", x_proj, (B, T, 4 * H), "(B, T, 4H)", h0)
    out = torch.empty(B, T, H, dtype=h0.dtype, device=h0.device)
    # the kernel updates this private fp32 copy of c0 in place, step after step
    c = c0.to(torch.float32, copy=True)
    constexprs, options = sequence_config(H)
    grid = (triton.cdiv(B, constexprs["BLOCK_B"]),)
    _lstm_sequence_kernel[grid](
        x_proj, h0, c, w_hh, bias, out, B, T, H,
        DOT_PRECISION=_dot_precision(h0.dtype), **constexprs, **options,
    )  # fmt: skip
    return out, (out[:, -1].contiguous(), c.to(c0.dtype))
