"""GPU report for fastlm's Triton kernels: parity first, then timings, as one markdown file.

    python bench/gpu_report.py          # on a CUDA machine; about 2-4 minutes on an H100

Sections: (1) parity of both kernels with fastlm.kernels.reference (fp32/fp16/bf16) and with
cuDNN / SDPA at the benchmark shapes, plus the kernel test files under pytest; (2) LSTM
decode step, 2 layers, H=256, batch 1/8/64: Triton step vs cuDNN nn.LSTM, each with and
without a CUDA graph; (3) one 2-layer LSTM over a 256x128 batch: persistent kernel + one
input-projection matmul per layer vs cuDNN; (4) causal attention, B=32, 4 heads, d=64,
T=128/512/2048 vs F.scaled_dot_product_attention(is_causal=True); (5) end-to-end embedding
of 10,000 texts through fastlm.load(..., backend="triton") when that engine exists.

Times are medians of triton.testing.do_bench (p20-p80 beside them), in ms. The report goes
to stdout and to $OUT/gpu_report.md (./gpu_report.md without OUT). Exit status 1 when a
parity check fails, 2 without CUDA.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.testing

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing fastlm

from fastlm.kernels import reference  # noqa: E402
from fastlm.kernels.attention import causal_attention  # noqa: E402
from fastlm.kernels.lstm import lstm_sequence, lstm_step  # noqa: E402

TOLERANCES = {  # dtype -> (atol, rtol), the tests' table
    torch.float32: (3e-4, 1e-3),
    torch.float16: (5e-3, 1e-2),
    torch.bfloat16: (1e-2, 5e-2),
}
HIDDEN, LAYERS = 256, 2
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


# ----------------------------------------------------------------------------- helpers


def max_error(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype
) -> tuple[float, bool]:
    """(max abs error, within the dtype's atol/rtol)."""
    atol, rtol = TOLERANCES[dtype]
    diff = (actual.float() - expected.float()).abs()
    ok = bool((diff <= atol + rtol * expected.float().abs()).all())
    return diff.max().item(), ok


def bench(fn: Callable[[], object]) -> tuple[float, float, float]:
    """(median, p20, p80) in ms; do_bench warms up and synchronizes around every call."""
    p50, p20, p80 = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
    return p50, p20, p80


def fmt_time(t: tuple[float, float, float] | None) -> str:
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


def make_lstm(dtype: torch.dtype, input_size: int = HIDDEN):
    """A cuDNN nn.LSTM and its weights per layer as (w_ih, w_hh, bias = b_ih + b_hh)."""
    torch.manual_seed(0)
    rnn = torch.nn.LSTM(input_size, HIDDEN, num_layers=LAYERS, batch_first=True)
    rnn = rnn.to("cuda", dtype).eval()
    layers = []
    for i in range(LAYERS):
        w_ih = getattr(rnn, f"weight_ih_l{i}").detach()
        w_hh = getattr(rnn, f"weight_hh_l{i}").detach().contiguous()
        bias = (getattr(rnn, f"bias_ih_l{i}") + getattr(rnn, f"bias_hh_l{i}")).detach()
        layers.append((w_ih, w_hh, bias.contiguous()))
    return rnn, layers


def triton_decode_step(layers, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    """One token through every layer: x (B, In), h/c (L, B, H) -> (top h, new h, new c)."""
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
    zeros = torch.zeros(B, HIDDEN, dtype=x.dtype, device=x.device)
    inp = x
    for w_ih, w_hh, bias in layers:
        x_proj = (inp.reshape(B * T, -1) @ w_ih.T).view(B, T, 4 * HIDDEN)  # one matmul, all steps
        inp, _ = lstm_sequence(x_proj, zeros, zeros, w_hh, bias)
    return inp


def triton_layers_stepwise(layers, x: torch.Tensor) -> torch.Tensor:
    """Same as triton_layers with one lstm_step launch per (layer, step): the launch-bound path."""
    B, T, _ = x.shape
    inp = x
    for w_ih, w_hh, bias in layers:
        x_proj = (inp.reshape(B * T, -1) @ w_ih.T).view(B, T, 4 * HIDDEN)
        h = c = torch.zeros(B, HIDDEN, dtype=x.dtype, device=x.device)
        outs = []
        for t in range(T):
            h, c = lstm_step(x_proj[:, t].contiguous(), h, c, w_hh, bias)
            outs.append(h)
        inp = torch.stack(outs, dim=1)
    return inp


# ----------------------------------------------------------------------------- sections


def parity_section() -> tuple[list[str], bool]:
    rows, all_ok = [], True
    gen = torch.Generator(device="cuda").manual_seed(0)

    def check(name: str, dtype: torch.dtype, actual, expected, strict: bool = True) -> None:
        """strict=False: against another fast kernel (cuDNN, SDPA), reported but never failing."""
        nonlocal all_ok
        err, ok = max_error(actual, expected, dtype)
        all_ok &= ok or not strict
        verdict = "ok" if ok else ("FAIL" if strict else "outside tolerance (info)")
        rows.append(f"| {name} | {DTYPE_NAMES[dtype]} | {err:.2e} | {verdict} |")

    torch.backends.cudnn.allow_tf32 = False  # fp32 cuDNN LSTM in full precision for the check

    for dtype in TOLERANCES:
        rnn, layers = make_lstm(dtype)
        w_ih, w_hh, bias = layers[0]
        x = torch.randn(64, 32, HIDDEN, device="cuda", dtype=dtype, generator=gen)
        h0 = torch.randn(64, HIDDEN, device="cuda", dtype=dtype, generator=gen) * 0.5
        c0 = torch.randn(64, HIDDEN, device="cuda", dtype=dtype, generator=gen)
        x_proj = (x @ w_ih.T).contiguous()  # (64, 32, 4H)
        step_args = (x_proj[:, 0].contiguous(), h0, c0, w_hh, bias)
        for got, want, what in zip(lstm_step(*step_args), reference.lstm_step(*step_args), "hc"):
            check(f"lstm_step {what} B=64 H=256", dtype, got, want)
        out, (h_t, c_t) = lstm_sequence(x_proj, h0, c0, w_hh, bias)
        out_ref, (h_ref, c_ref) = reference.lstm_layer(x_proj, h0, c0, w_hh, bias)
        check("lstm_sequence out B=64 T=32", dtype, out, out_ref)
        check("lstm_sequence h_T", dtype, h_t, h_ref)
        check("lstm_sequence c_T", dtype, c_t, c_ref)
        with torch.inference_mode():
            # cuDNN keeps c in fp32 between steps, the kernel in the input dtype: strict in fp32
            strict = dtype == torch.float32
            check("2-layer persistent vs cuDNN", dtype, triton_layers(layers, x), rnn(x)[0], strict)

        q, k, v = (
            torch.randn(3, 4, 300, 64, device="cuda", dtype=dtype, generator=gen) for _ in "qkv"
        )
        mask = torch.arange(300, device="cuda")[None, :] < torch.tensor(
            [[300], [171], [5]], device="cuda"
        )
        check(
            "attention T=300 d=64",
            dtype,
            causal_attention(q, k, v),
            reference.causal_attention(q, k, v),
        )
        check("attention T=300 padded", dtype, causal_attention(q, k, v, mask),
              reference.causal_attention(q, k, v, mask))  # fmt: skip
        if dtype != torch.float32:
            for T in (128, 512, 2048):
                q, k, v = (torch.randn(32, 4, T, 64, device="cuda", dtype=dtype) for _ in "qkv")
                want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                check(f"attention vs SDPA T={T}", dtype, causal_attention(q, k, v), want, False)

    torch.backends.cudnn.allow_tf32 = True
    lines = [
        "## Parity",
        "",
        "| check | dtype | max abs err | result |",
        "|---|---|---|---|",
        *rows,
    ]
    test_line, tests_ok = run_kernel_tests()
    lines += ["", test_line]
    return lines, all_ok and tests_ok


def run_kernel_tests() -> tuple[str, bool]:
    """Run the two kernel test files on this GPU (bf16 and compiled-path cases included)."""
    if importlib.util.find_spec("pytest") is None:
        return "kernel tests: skipped: pytest is not installed", True
    files = ["tests/test_kernels_lstm.py", "tests/test_kernels_attention.py"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "kernel tests: FAIL: timed out after 300 s", False
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    if done.returncode != 0:
        print(done.stdout[-6000:], done.stderr[-2000:], sep="\n", file=sys.stderr)
    return f"kernel tests (pytest, rc={done.returncode}): {summary}", done.returncode == 0


def decode_section(dtype: torch.dtype = torch.float16) -> list[str]:
    lines = [f"## LSTM decode step ({LAYERS} layers, H={HIDDEN}, {DTYPE_NAMES[dtype]})", "",
             "| batch | cuDNN | cuDNN + graph | Triton | Triton + graph | speedup, both graphed |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    rnn, layers = make_lstm(dtype)
    for B in (1, 8, 64):
        x = torch.randn(B, HIDDEN, device="cuda", dtype=dtype)
        h = torch.randn(LAYERS, B, HIDDEN, device="cuda", dtype=dtype) * 0.5
        c = torch.randn(LAYERS, B, HIDDEN, device="cuda", dtype=dtype)
        with torch.inference_mode():

            def cudnn_step(x=x, h=h, c=c):
                return rnn(x[:, None, :], (h, c))

            def triton_step(x=x, h=h, c=c):
                return triton_decode_step(layers, x, h, c)

            times = {}
            for name, fn in (("cudnn", cudnn_step), ("triton", triton_step)):
                times[name] = bench(fn)
                try:
                    times[name + "_graph"] = bench(cuda_graph(fn))
                except RuntimeError as err:  # a backend that refuses stream capture
                    print(f"{name} CUDA graph failed: {err}", file=sys.stderr)
                    times[name + "_graph"] = None
        graphs = (times["cudnn_graph"], times["triton_graph"])
        ratio = "n/a" if None in graphs else f"{graphs[0][0] / graphs[1][0]:.2f}x"
        cells = [fmt_time(times[k]) for k in ("cudnn", "cudnn_graph", "triton", "triton_graph")]
        lines.append(f"| {B} | " + " | ".join(cells) + f" | {ratio} |")
    return lines


def sequence_section(dtype: torch.dtype = torch.float16, B: int = 256, T: int = 128) -> list[str]:
    rnn, layers = make_lstm(dtype)
    x = torch.randn(B, T, HIDDEN, device="cuda", dtype=dtype)
    with torch.inference_mode():
        cudnn = bench(lambda: rnn(x))
        persistent = bench(lambda: triton_layers(layers, x))
        stepwise = bench(lambda: triton_layers_stepwise(layers, x))
    tokens = B * T
    return [
        f"## LSTM over a {B}x{T} batch ({LAYERS} layers, H={HIDDEN}, {DTYPE_NAMES[dtype]})", "",
        "| implementation | ms | tokens/s | vs cuDNN |", "|---|---|---|---|",
        *(f"| {name} | {fmt_time(t)} | {tokens / t[0] * 1e3:,.0f} | {cudnn[0] / t[0]:.2f}x |"
          for name, t in (("cuDNN nn.LSTM", cudnn), ("Triton persistent + matmul", persistent),
                          ("Triton lstm_step per step", stepwise))),
    ]  # fmt: skip


def attention_section(B: int = 32, NH: int = 4, D: int = 64) -> list[str]:
    lines = [f"## Causal attention (B={B}, heads={NH}, d={D})", "",
             "| dtype | T | SDPA ms | Triton ms | SDPA TFLOP/s | Triton TFLOP/s | speedup |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for dtype in (torch.float16, torch.bfloat16):
        for T in (128, 512, 2048):
            q, k, v = (torch.randn(B, NH, T, D, device="cuda", dtype=dtype) for _ in "qkv")
            sdpa = bench(
                lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
            )
            ours = bench(lambda q=q, k=k, v=v: causal_attention(q, k, v))
            flops = 4 * B * NH * T * T * D * 0.5  # two matmuls, half the scores are causal-masked
            tflops = [flops / t[0] * 1e-9 for t in (sdpa, ours)]
            lines.append(
                f"| {DTYPE_NAMES[dtype]} | {T} | {fmt_time(sdpa)} | {fmt_time(ours)} | "
                f"{tflops[0]:.1f} | {tflops[1]:.1f} | {sdpa[0] / ours[0]:.2f}x |"
            )
    return lines


def load_texts(n: int) -> list[str]:
    """n lines of ../shared/data/tiny (or shared/data/tiny), repeated; synthetic without it."""
    for root in (REPO.parent / "shared", REPO / "shared"):
        path = root / "data" / "tiny" / "valid.txt"
        if path.is_file():
            lines = [s for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
            if lines:
                return [lines[i % len(lines)] for i in range(n)]
    return [f"sample text number {i} for the embedding benchmark" for i in range(n)]


def end_to_end_section(n: int = 10_000) -> list[str]:
    lines = [f"## End to end: embed {n:,} texts (transformer, backend='triton')", ""]
    try:
        import fastlm

        engine = fastlm.load("transformer", backend="triton", device="cuda")
        texts = load_texts(n)
        engine.embed(texts[:256])  # compile and warm up outside the timed region
        torch.cuda.synchronize()
        start = time.perf_counter()
        engine.embed(texts)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    except Exception as err:  # noqa: BLE001 - a report: record any failure, keep the table
        return lines + [f"failed: {type(err).__name__}: {err}"]
    return lines + [f"{seconds:.2f} s, {n / seconds:,.0f} texts/s"]


def environment() -> list[str]:
    props = torch.cuda.get_device_properties(0)
    return [
        "# fastlm Triton kernel report", "",
        f"- device: {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}",
        f"- torch {torch.__version__}, triton {triton.__version__}, "
        f"python {sys.version.split()[0]}",
        "- times: median ms of triton.testing.do_bench (p20-p80), L2 flushed between calls", "",
    ]  # fmt: skip


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_report.py needs a CUDA device", file=sys.stderr)
        return 2
    start = time.perf_counter()
    lines = environment()
    parity_lines, parity_ok = parity_section()
    lines += parity_lines
    for section in (decode_section, sequence_section, attention_section, end_to_end_section):
        lines += ["", *section()]
    lines += ["", f"total wall time: {time.perf_counter() - start:.0f} s", ""]
    report = "\n".join(lines)
    print(report)
    out_dir = Path(os.environ.get("OUT", "."))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_report.md").write_text(report, encoding="utf-8")
    if not parity_ok:
        print("PARITY FAILED: see the Parity table", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
