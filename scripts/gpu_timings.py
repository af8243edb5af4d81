"""Timing tables for scripts/gpu_check.py (CUDA only): Triton kernels against cuDNN and SDPA.

    LSTM decode step   2 layers, H=256, batch 1/8/64: Triton step vs cuDNN nn.LSTM, each with
                       and without a CUDA graph (target: >= 2x cuDNN at batch 1, both graphed)
    LSTM sequence      one 2-layer LSTM over a 256x128 batch: persistent kernel + one input
                       matmul per layer vs cuDNN (target: >= 1x)
    attention          causal, B=32, 4 heads, d=64, T=128/512/2048 vs
                       F.scaled_dot_product_attention(is_causal=True) (target: >= 0.9x at 512)

Times are medians of triton.testing.do_bench (p20-p80 beside them) in ms, L2 flushed between
calls; ratios are same-run. The LSTM tables run fp16 (the kernels' speed is the same in
bf16, and cuDNN's fp16 LSTM is the long-standing baseline). docs/gpu.md holds the
predictions these are judged against.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
import triton.testing

from fastlm.kernels.attention import causal_attention
from fastlm.kernels.lstm import lstm_sequence, lstm_step

HIDDEN, LAYERS = 256, 2
NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def bench(fn: Callable[[], object]) -> tuple[float, float, float]:
    """(median, p20, p80) in ms; do_bench warms up and synchronizes around every call."""
    p50, p20, p80 = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
    return p50, p20, p80


def fmt(t: tuple[float, float, float] | None) -> str:
    return "n/a" if t is None else f"{t[0]:.4f} ({t[1]:.4f}-{t[2]:.4f})"


def cuda_graph(fn: Callable[[], object]) -> Callable[[], None]:
    """Capture fn (already compiled) in a CUDA graph; returns its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph asks
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def make_lstm(dtype: torch.dtype):
    """A cuDNN nn.LSTM and its weights per layer as (w_ih, w_hh, bias = b_ih + b_hh)."""
    torch.manual_seed(0)
    rnn = torch.nn.LSTM(HIDDEN, HIDDEN, num_layers=LAYERS, batch_first=True)
    rnn = rnn.to("cuda", dtype).eval()
    layers = []
    for i in range(LAYERS):
        w_ih = getattr(rnn, f"weight_ih_l{i}").detach()
        w_hh = getattr(rnn, f"weight_hh_l{i}").detach().contiguous()
        bias = (getattr(rnn, f"bias_ih_l{i}") + getattr(rnn, f"bias_hh_l{i}")).detach()
        layers.append((w_ih, w_hh, bias.contiguous()))
    return rnn, layers


def triton_decode_step(layers, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    """One token through every layer: x (B, In), h (L, B, H), c (L, B, H) fp32."""
    hs, cs, inp = [], [], x
    for i, (w_ih, w_hh, bias) in enumerate(layers):
        h_i, c_i = lstm_step(inp @ w_ih.T, h[i], c[i], w_hh, bias)
        hs.append(h_i)
        cs.append(c_i)
        inp = h_i
    return inp, torch.stack(hs), torch.stack(cs)


def triton_layers(layers, x: torch.Tensor) -> torch.Tensor:
    """x (B, T, In) through every layer with the persistent kernel; zero initial state."""
    B, T, _ = x.shape
    h0 = torch.zeros(B, HIDDEN, dtype=x.dtype, device=x.device)
    c0 = torch.zeros(B, HIDDEN, dtype=torch.float32, device=x.device)
    inp = x
    for w_ih, w_hh, bias in layers:
        x_proj = (inp.reshape(B * T, -1) @ w_ih.T).view(B, T, 4 * HIDDEN)  # one matmul, all steps
        inp, _ = lstm_sequence(x_proj, h0, c0, w_hh, bias)
    return inp


def decode_table(dtype: torch.dtype = torch.float16) -> list[str]:
    lines = [f"### LSTM decode step ({LAYERS} layers, H={HIDDEN}, {NAMES[dtype]})", "",
             "| batch | cuDNN | cuDNN + graph | Triton | Triton + graph | speedup, both graphed |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    rnn, layers = make_lstm(dtype)
    for B in (1, 8, 64):
        x = torch.randn(B, HIDDEN, device="cuda", dtype=dtype)
        h = torch.randn(LAYERS, B, HIDDEN, device="cuda", dtype=dtype) * 0.5
        c = torch.randn(LAYERS, B, HIDDEN, device="cuda", dtype=dtype)
        c32 = c.float()
        times = {}
        with torch.inference_mode():
            fns = {
                "cudnn": lambda x=x, h=h, c=c: rnn(x[:, None, :], (h, c)),
                "triton": lambda x=x, h=h, c=c32: triton_decode_step(layers, x, h, c),
            }
            for name, fn in fns.items():
                times[name] = bench(fn)
                try:
                    times[name + "_graph"] = bench(cuda_graph(fn))
                except RuntimeError as err:  # a backend that refuses stream capture
                    print(f"{name} CUDA graph failed: {err}", file=sys.stderr)
                    times[name + "_graph"] = None
        graphs = (times["cudnn_graph"], times["triton_graph"])
        ratio = "n/a" if None in graphs else f"{graphs[0][0] / graphs[1][0]:.2f}x"
        cells = [fmt(times[k]) for k in ("cudnn", "cudnn_graph", "triton", "triton_graph")]
        lines.append(f"| {B} | " + " | ".join(cells) + f" | {ratio} |")
    return lines


def sequence_table(dtype: torch.dtype = torch.float16, B: int = 256, T: int = 128) -> list[str]:
    rnn, layers = make_lstm(dtype)
    x = torch.randn(B, T, HIDDEN, device="cuda", dtype=dtype)
    with torch.inference_mode():
        cudnn = bench(lambda: rnn(x))
        ours = bench(lambda: triton_layers(layers, x))
    tokens = B * T
    return [
        f"### LSTM over a {B}x{T} batch ({LAYERS} layers, H={HIDDEN}, {NAMES[dtype]})", "",
        "| implementation | ms | tokens/s | vs cuDNN |", "|---|---|---|---|",
        *(f"| {name} | {fmt(t)} | {tokens / t[0] * 1e3:,.0f} | {cudnn[0] / t[0]:.2f}x |"
          for name, t in (("cuDNN nn.LSTM", cudnn), ("Triton persistent + matmul", ours))),
    ]  # fmt: skip


def attention_table(B: int = 32, NH: int = 4, D: int = 64) -> list[str]:
    lines = [f"### Causal attention (B={B}, heads={NH}, d={D})", "",
             "| dtype | T | SDPA ms | Triton ms | SDPA TFLOP/s | Triton TFLOP/s | vs SDPA |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for dtype in (torch.float16, torch.bfloat16):
        for T in (128, 512, 2048):
            q, k, v = (torch.randn(B, NH, T, D, device="cuda", dtype=dtype) for _ in "qkv")
            causal_attention(q, k, v)  # autotune this length bucket outside the timed region
            sdpa = bench(
                lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
            )
            ours = bench(lambda q=q, k=k, v=v: causal_attention(q, k, v))
            flops = 4 * B * NH * T * T * D * 0.5  # two matmuls, half the scores are causal-masked
            tflops = [flops / t[0] * 1e-9 for t in (sdpa, ours)]
            lines.append(
                f"| {NAMES[dtype]} | {T} | {fmt(sdpa)} | {fmt(ours)} | "
                f"{tflops[0]:.1f} | {tflops[1]:.1f} | {sdpa[0] / ours[0]:.2f}x |"
            )
    return lines
