"""Smoke launches for scripts/gpu_check.py: every kernel variant once, against the reference.

The variants are the AOT check's (tools/aot.py): each batch / hidden-size branch of the
LSTM launchers and, for attention, every config the autotuner may pick, forced one at a time,
with and without a key-padding mask. Shapes are odd on purpose (masks at every tile edge).
`tiny=True` (the dry run, under the Triton interpreter) keeps the shapes small and skips bf16,
which the interpreter cannot compute.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: tools/ is not installed

import torch  # noqa: E402

from fastlm.kernels import attention, lstm, reference  # noqa: E402
from tools import aot  # noqa: E402

TOLERANCES = {  # I/O dtype -> (atol, rtol): the kernel tests' table
    torch.float32: (3e-4, 1e-3),
    torch.float16: (5e-3, 1e-2),
    torch.bfloat16: (1e-2, 5e-2),
}
Row = tuple[str, str, float, bool]  # (launch, dtype, max abs error, within tolerance)


def max_error(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> tuple:
    """(max abs error, within the I/O dtype's tolerance); NaN fails."""
    atol, rtol = TOLERANCES[dtype]
    diff = (actual.float() - expected.float()).abs()
    ok = bool((diff <= atol + rtol * expected.float().abs()).all())
    return diff.max().item(), ok


def _row(name: str, dtype: torch.dtype, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> Row:
    errors = [max_error(got, want, dtype) for got, want in pairs]
    return name, aot.TYPE_NAMES[dtype], max(e for e, _ in errors), all(ok for _, ok in errors)


def _lstm_inputs(B: int, T: int, H: int, dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    """x_proj (B, T, 4H), h0 (B, H), c0 (B, H) fp32, w_hh (4H, H), bias (4H,)."""
    gen = torch.Generator().manual_seed(B * 1000 + H)
    bound = H**-0.5
    x_proj = torch.randn(B, T, 4 * H, generator=gen)
    h0 = torch.randn(B, H, generator=gen) * 0.5
    c0 = torch.randn(B, H, generator=gen)
    w_hh = (torch.rand(4 * H, H, generator=gen) * 2 - 1) * bound
    bias = (torch.rand(4 * H, generator=gen) * 2 - 1) * bound * 2
    low = [t.to(device, dtype) for t in (x_proj, h0, w_hh, bias)]
    return [low[0], low[1], c0.to(device), low[2], low[3]]


def lstm_rows(dtypes, hidden, batches, device: str) -> Iterator[Row]:
    for dtype in dtypes:
        for H in hidden:
            for B in batches:
                x_proj, h, c, w_hh, bias = _lstm_inputs(B, 1, H, dtype, device)
                args = (x_proj[:, 0].contiguous(), h, c, w_hh, bias)
                want = reference.lstm_step(*args)
                for config in lstm.step_configs(B, H):  # each config the autotuner may pick
                    got = torch.empty_like(h), torch.empty_like(c)
                    lstm._launch_step(*args, *got, config=config)
                    blocks = config.kwargs
                    name = f"lstm_step B={B} H={H} ({blocks['BLOCK_B']}x{blocks['BLOCK_H']})"
                    yield _row(name, dtype, list(zip(got, want)))
            x_proj, h0, c0, w_hh, bias = _lstm_inputs(3, 5, H, dtype, device)
            out, (h_t, c_t) = lstm.lstm_sequence(x_proj, h0, c0, w_hh, bias)
            out_ref, (h_ref, c_ref) = reference.lstm_layer(x_proj, h0, c0, w_hh, bias)
            pairs = [(out, out_ref), (h_t, h_ref), (c_t, c_ref)]
            yield _row(f"lstm_sequence B=3 T=5 H={H}", dtype, pairs)


def attention_rows(dtypes, head_dims, T: int, device: str) -> Iterator[Row]:
    for dtype in dtypes:
        for D in head_dims:
            gen = torch.Generator().manual_seed(D)
            q, k, v = (torch.randn(2, 2, T, D, generator=gen).to(device, dtype) for _ in "qkv")
            lengths = torch.tensor([[T], [T // 2 + 1]])
            mask = (torch.arange(T)[None, :] < lengths).to(device)  # (2, T): right padding
            scale = D**-0.5
            for config in attention.attention_configs(dtype, D):
                for keep in (None, mask):
                    out = torch.empty_like(q)
                    key_mask = q if keep is None else keep.view(torch.int8)
                    # one forced config, as the autotuner would launch it
                    attention._launch(q, k, v, key_mask, out, scale, keep is not None, config)
                    want = reference.causal_attention(q, k, v, keep)
                    blocks = f"{config.kwargs['BLOCK_M']}x{config.kwargs['BLOCK_N']}"
                    opts = f"w{config.num_warps}s{config.num_stages}"
                    masked = " mask" if keep is not None else ""
                    name = f"attention T={T} d={D} {blocks} {opts}{masked}"
                    yield _row(name, dtype, [(out, want)])


def run_all(device: str, tiny: bool) -> Iterator[Row]:
    """Every variant on `device`, one row at a time (tiny: the interpreter's subset); see the
    module docstring."""
    if tiny:
        dtypes = (torch.float32, torch.float16)
        yield from lstm_rows(dtypes, (24, 40), (1, 33), device)
        yield from attention_rows(dtypes, (16, 64), 33, device)
        return
    yield from lstm_rows(aot.DTYPES, aot.HIDDEN_SIZES, aot.STEP_BATCHES, device)
    yield from attention_rows(aot.DTYPES, attention.SUPPORTED_HEAD_DIMS, 300, device)
