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

Launch: on a GPU both kernels are autotuned (STEP_CONFIGS, SEQUENCE_CONFIGS), keyed on the
batch bucket (next power of two of B) and H; under the interpreter each runs one fixed config.
step_configs / sequence_configs list the candidates for a shape, and the AOT compile check
(tools.aot, scripts/aot_compile.py) compiles every one for sm_90 and sm_80.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastlm.kernels.common import (
    MAX_GRID_YZ,
    MIN_DOT,
    MIN_DOT_CONSTEXPR,
    SUPPORTED_DTYPES,  # noqa: F401  (re-exported: callers read it here)
    check_float_dtype,
    check_is_tensor,
    check_like,
    check_runnable,
    dot_precision,
    fits_shape,
    is_interpreted,
    make_config,
    pick_kernel,
)

MAX_HIDDEN = 23_170  # W_hh offsets are int32: 4 * H * H < 2**31


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
    x_ptr, h_ptr, c_ptr, w_ptr, bias_ptr, h_out_ptr, c_out_ptr, B, H, B_BUCKET,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # B_BUCKET (next power of two of B) is unused here: it is the autotuner's cache key.
    # Blocks are powers of two (tl.arange) and at least MIN_DOT (tl.dot); nothing else: the
    # masks cover every edge, so no block has to divide B or H.
    tl.static_assert(BLOCK_B >= MIN_DOT_CONSTEXPR, "BLOCK_B must be >= 16 (tl.dot)")
    tl.static_assert((BLOCK_B & (BLOCK_B - 1)) == 0, "BLOCK_B must be a power of two")
    tl.static_assert(BLOCK_H >= MIN_DOT_CONSTEXPR, "BLOCK_H must be >= 16 (tl.dot)")
    tl.static_assert((BLOCK_H & (BLOCK_H - 1)) == 0, "BLOCK_H must be a power of two")
    tl.static_assert(BLOCK_K >= MIN_DOT_CONSTEXPR, "BLOCK_K must be >= 16 (tl.dot)")
    tl.static_assert((BLOCK_K & (BLOCK_K - 1)) == 0, "BLOCK_K must be a power of two")
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
    x_ptr, h0_ptr, c_ptr, w_ptr, bias_ptr, out_ptr, B, T, H, B_BUCKET,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    # B_BUCKET (next power of two of B) is unused here: it is the autotuner's cache key.
    # Blocks are powers of two (tl.arange) and at least MIN_DOT (tl.dot); nothing else: the
    # masks cover every edge, so no block has to divide B or H.
    tl.static_assert(BLOCK_B >= MIN_DOT_CONSTEXPR, "BLOCK_B must be >= 16 (tl.dot)")
    tl.static_assert((BLOCK_B & (BLOCK_B - 1)) == 0, "BLOCK_B must be a power of two")
    tl.static_assert(BLOCK_H >= MIN_DOT_CONSTEXPR, "BLOCK_H must be >= 16 (tl.dot)")
    tl.static_assert((BLOCK_H & (BLOCK_H - 1)) == 0, "BLOCK_H must be a power of two")
    tl.static_assert(BLOCK_K >= MIN_DOT_CONSTEXPR, "BLOCK_K must be >= 16 (tl.dot)")
    tl.static_assert((BLOCK_K & (BLOCK_K - 1)) == 0, "BLOCK_K must be a power of two")
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


# ----------------------------------------------------------------------------- configs

# (BLOCK_B, BLOCK_H, num_warps, num_stages) the GPU autotuner times for lstm_step. Small
# batches (decode) are bound by reading W_hh: narrow hidden blocks spread that read over more
# programs, wide ones load each h tile fewer times; the autotuner weighs the two per shape.
# Warps: one per 128 elements of a gate tile (2 to 8). The AOT compile check set the limits:
# 4-warp 16x64 and 32x32 tiles spill at H = 40 (16-76 B per thread), 64x64 spills on sm_80;
# bigger batches simply get more programs.
STEP_CONFIGS = ((16, 16, 2, 2), (16, 32, 4, 2), (16, 64, 8, 2), (32, 32, 8, 2), (32, 64, 8, 2))
# lstm_sequence: 16 rows per program, as many programs as possible (each is a serial chain
# over T), and 8 warps, the only parallelism a lone program gets. The AOT check shows 4 warps
# (8 B at H = 24 and 256), 32-row tiles (24-80 B at H = 40) and 128-unit tiles (20-460 B)
# spilling, and 2 stages spilling 4 B on sm_80 at H = 256.
SEQUENCE_CONFIGS = ((16, 32, 8, 3), (16, 64, 8, 3))
# under the interpreter (tests on CPU): one fixed config per kernel, never a timing loop
INTERPRETER_STEP_CONFIG = (16, 16, 2, 2)
INTERPRETER_SEQUENCE_CONFIG = (16, 64, 8, 3)
_BLOCKS = ("BLOCK_B", "BLOCK_H")


def _interpreted() -> bool:
    """True when triton was in interpreter mode (TRITON_INTERPRET=1) as this module loaded."""
    return is_interpreted(_lstm_step_kernel)


def block_k(H: int) -> int:
    """The recurrent matmul's K block for hidden size H: a power of two from 16 to 64."""
    return min(64, max(MIN_DOT, triton.next_power_of_2(H)))


def _candidates(tiles: tuple, fixed: tuple, B: int, H: int, interpreted: bool | None) -> list:
    if _interpreted() if interpreted is None else interpreted:
        return [make_config(_BLOCKS, fixed)]
    configs = [make_config(_BLOCKS, t) for t in tiles]
    return fits_shape(configs, {"BLOCK_B": B, "BLOCK_H": H})


def step_configs(B: int, H: int, interpreted: bool | None = None) -> list[triton.Config]:
    """The configs lstm_step may run for batch B and hidden size H: the one fixed config under
    the interpreter, else the STEP_CONFIGS whose blocks fit (B, H) (the autotuner's prune).
    interpreted: None for this module's mode; the AOT check passes False, as it compiles for
    a GPU whatever mode its process imported the kernels in."""
    return _candidates(STEP_CONFIGS, INTERPRETER_STEP_CONFIG, B, H, interpreted)


def sequence_configs(B: int, H: int, interpreted: bool | None = None) -> list[triton.Config]:
    """The configs lstm_sequence may run for batch B and hidden size H; see step_configs."""
    return _candidates(SEQUENCE_CONFIGS, INTERPRETER_SEQUENCE_CONFIG, B, H, interpreted)


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The autotuners' early prune: the rule step_configs and sequence_configs apply, on the
    batch bucket (the key), so every batch size in a bucket times the same candidates."""
    args = {**named_args, **kwargs}
    return fits_shape(configs, {"BLOCK_B": args["B_BUCKET"], "BLOCK_H": args["H"]})


# Autotuned entry points for a GPU. The key is the batch bucket and H (the autotuner adds the
# tensors' dtypes itself); T is left out: each step does the same work whatever the length,
# and a key on T would time the configs again for every new length. lstm_step only writes
# h_out and c_out, so re-running it while timing is harmless.
_lstm_step_tuned = triton.autotune(
    configs=[make_config(_BLOCKS, c) for c in STEP_CONFIGS],
    key=["B_BUCKET", "H"],
    prune_configs_by={"early_config_prune": _prune},
)(_lstm_step_kernel)
# lstm_sequence updates its cell-state buffer c in place, step after step: without care each
# timed run would start from the previous run's c_T, and so would the real launch after them.
# restore_value copies c before every timed run and writes it back after (the copy is inside
# the timing, the same for every config). out needs nothing: a run writes out[:, t] before it
# reads it back at t + 1, and step 0 reads h0.
_lstm_sequence_tuned = triton.autotune(
    configs=[make_config(_BLOCKS, c) for c in SEQUENCE_CONFIGS],
    key=["B_BUCKET", "H"],
    prune_configs_by={"early_config_prune": _prune},
    restore_value=["c_ptr"],
)(_lstm_sequence_kernel)


# ----------------------------------------------------------------------------- launchers


def _check_recurrent(
    h: torch.Tensor, c: torch.Tensor, w_hh: torch.Tensor, bias: torch.Tensor, names: tuple[str, str]
) -> tuple[int, int]:
    """Validate the state and weights; returns (B, H). c may be h's dtype or float32."""
    h_name, c_name = names
    check_float_dtype(h_name, h)
    check_runnable(h_name, h, "the Triton LSTM kernels need", __name__, _interpreted())
    if h.dim() != 2:
        raise ValueError(f"{h_name} must have shape (B, H), got {tuple(h.shape)}")
    B, H = h.shape
    if H > MAX_HIDDEN:
        raise ValueError(f"hidden size {H} is above the kernels' limit {MAX_HIDDEN} (4H^2 < 2^31)")
    check_like(h_name, h, (B, H), "(B, H)", h)
    check_is_tensor(c_name, c)
    if c.dtype not in (h.dtype, torch.float32):
        raise TypeError(
            f"{c_name} must have dtype {h.dtype} (like {h_name}) or float32, got {c.dtype}"
        )
    c_like = h if c.dtype != torch.float32 else c  # a float32 cell state is always welcome
    check_like(c_name, c, (B, H), "(B, H)", c_like)
    check_like("w_hh", w_hh, (4 * H, H), "(4H, H)", h)
    check_like("bias", bias, (4 * H,), "(4H,)", h)
    return B, H


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
    contiguous, one dtype except c, one CUDA device. See reference.lstm_step. On a GPU the
    first call per (batch bucket, H, dtypes) times the candidate configs.
    """
    B, H = _check_recurrent(h, c, w_hh, bias, ("h", "c"))
    check_like("x_proj_t", x_proj_t, (B, 4 * H), "(B, 4H)", h)
    h_new, c_new = torch.empty_like(h), torch.empty_like(c)
    _launch_step(x_proj_t, h, c, w_hh, bias, h_new, c_new)
    return h_new, c_new


def _launch_step(x_proj_t, h, c, w_hh, bias, h_new, c_new, config=None) -> None:
    """One lstm_step launch writing h_new and c_new (B, H). config: a triton.Config to run
    instead of the autotuned choice (a GPU smoke test can force each one)."""
    B, H = h.shape
    assert triton.cdiv(H, MIN_DOT) <= MAX_GRID_YZ, H  # grid axis 1: holds for H <= MAX_HIDDEN
    configs = step_configs(B, H) if config is None else [config]
    kernel, fixed = pick_kernel(configs, _lstm_step_tuned, _lstm_step_kernel)
    kernel[lambda meta: (triton.cdiv(B, meta["BLOCK_B"]), triton.cdiv(H, meta["BLOCK_H"]))](
        x_proj_t, h, c, w_hh, bias, h_new, c_new, B, H, triton.next_power_of_2(B),
        BLOCK_K=block_k(H), DOT_PRECISION=dot_precision(h.dtype), **fixed,
    )  # fmt: skip


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
    reference.lstm_layer and the module docstring for the design. On a GPU the first call per
    (batch bucket, H, dtypes) times the candidate configs, running the whole sequence each time.
    """
    B, H = _check_recurrent(h0, c0, w_hh, bias, ("h0", "c0"))
    if not isinstance(x_proj, torch.Tensor) or x_proj.dim() != 3 or x_proj.shape[1] < 1:
        shape = tuple(x_proj.shape) if isinstance(x_proj, torch.Tensor) else type(x_proj).__name__
        raise ValueError(f"x_proj must have shape (B, T, 4H) with T >= 1, got {shape}")
    T = x_proj.shape[1]
    check_like("x_proj", x_proj, (B, T, 4 * H), "(B, T, 4H)", h0)
    out = torch.empty(B, T, H, dtype=h0.dtype, device=h0.device)
    # the kernel updates this private fp32 copy of c0 in place, step after step
    c = c0.to(torch.float32, copy=True)
    _launch_sequence(x_proj, h0, c, w_hh, bias, out)
    return out, (out[:, -1].contiguous(), c.to(c0.dtype))


def _launch_sequence(x_proj, h0, c, w_hh, bias, out, config=None) -> None:
    """One lstm_sequence launch writing out (B, T, H) and updating c (B, H, float32) in place
    from c0 to c_T. config: as in _launch_step."""
    B, T, H = out.shape
    configs = sequence_configs(B, H) if config is None else [config]
    kernel, fixed = pick_kernel(configs, _lstm_sequence_tuned, _lstm_sequence_kernel)
    kernel[lambda meta: (triton.cdiv(B, meta["BLOCK_B"]),)](
        x_proj, h0, c, w_hh, bias, out, B, T, H, triton.next_power_of_2(B),
        BLOCK_K=block_k(H), DOT_PRECISION=dot_precision(h0.dtype), **fixed,
    )  # fmt: skip
