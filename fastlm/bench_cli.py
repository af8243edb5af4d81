"""`fastlm bench`: a quick latency/throughput table per backend, and the helpers bench/ shares.

    fastlm bench                                  # eager vs compile vs onnx, both models
    fastlm bench --batch-sizes 1 8 64 --plot docs/bench_plot.png

The helpers (backend keys, model loading that turns "not available" into one exception, a
timer that synchronises the device, FLOP counts, environment facts) are used by the `pytest
bench/` suites too, so the CLI and the regression suites measure the same way. Heavy imports
(torch, numpy, matplotlib) happen inside functions: `fastlm --help` stays fast.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# backend key -> (fastlm.load backend name, backend options). Keys name what a user compares.
BACKENDS: dict[str, tuple[str, dict]] = {
    "eager": ("eager", {}),
    "compile": ("compile", {}),
    "onnx-fp32": ("onnx", {"dtype": "fp32"}),
    "onnx-fp16": ("onnx", {"dtype": "fp16"}),
    "onnx-int8": ("onnx", {"dtype": "int8"}),
    "triton": ("triton", {}),
}
CUDA_ONLY = {"triton"}
ARCHS = ("lstm", "transformer")
# Modules whose docstrings make the fallback corpus (machines without ../shared/data).
DOC_MODULES = (
    "os inspect json collections pydoc typing argparse pathlib subprocess functools "
    "itertools re textwrap logging unittest"
).split()


class BackendUnavailable(Exception):
    """A backend cannot run here (not written yet, missing dependency, wrong device)."""


# ----------------------------------------------------------------------------- loading
def load_model(source, key: str, device: str, threads: int | None):
    """fastlm.load(source) on backend `key`; BackendUnavailable says why it cannot run here."""
    import fastlm
    from fastlm.engine.backends import get_backend_class

    if key not in BACKENDS:
        raise ValueError(f"unknown backend key {key!r}; choose from {sorted(BACKENDS)}")
    name, options = BACKENDS[key]
    if key in CUDA_ONLY and not device.startswith("cuda"):
        raise BackendUnavailable(f"{key} runs on CUDA only; the device is {device}")
    try:
        get_backend_class(name)
    except (ValueError, ImportError) as err:
        raise BackendUnavailable(f"backend {name!r} is not available: {err}") from None
    if key == "eager":  # the reference must always load: no error is turned into a skip
        return fastlm.load(source, backend=name, device=device, threads=threads)
    try:
        return fastlm.load(source, backend=name, device=device, threads=threads, **options)
    except (ImportError, ValueError, TypeError, NotImplementedError) as err:
        raise BackendUnavailable(f"{key} could not load: {type(err).__name__}: {err}") from None


def dtype_of(key: str) -> str:
    return BACKENDS[key][1].get("dtype", "fp32")


def docstring_corpus() -> str:
    """Plain English-ish text from Python's own docstrings, for machines without ../shared."""
    import importlib

    texts = []
    for name in DOC_MODULES:
        mod = importlib.import_module(name)
        for attr in sorted(dir(mod)):
            doc = getattr(getattr(mod, attr, None), "__doc__", None)
            if isinstance(doc, str) and len(doc) > 40:
                texts.append(doc.strip())
    return "\n\n".join(texts)


def scratch_checkpoints(root: Path, corpus: Path | None = None) -> dict[str, Path]:
    """SPEC-sized LSTM and Transformer checkpoints with random weights (speed does not depend on
    the weights) and a 2,000-token BPE trained on `corpus` (default: Python docstrings)."""
    import torch

    from fastlm.checkpoint import save_checkpoint
    from fastlm.models import CONFIGS_BY_NAME, build_model
    from fastlm.tokenizer import Tokenizer

    root.mkdir(parents=True, exist_ok=True)
    if corpus is None:
        corpus = root / "corpus.txt"
        corpus.write_text(docstring_corpus(), encoding="utf-8")
    tokenizer = Tokenizer.train([corpus], vocab_size=2000)
    torch.manual_seed(0)
    return {
        arch: save_checkpoint(root / arch, build_model(CONFIGS_BY_NAME[arch]()), tokenizer)
        for arch in ARCHS
    }


def model_sources(scratch_root: Path, corpus: Path | None = None) -> dict[str, object]:
    """{arch: shipped model name, or a scratch checkpoint when the package ships none}."""
    import fastlm

    shipped = set(fastlm.available_models())
    missing = [a for a in ARCHS if a not in shipped]
    built = scratch_checkpoints(scratch_root, corpus) if missing else {}
    return {a: (a if a in shipped else built[a]) for a in ARCHS}


# ----------------------------------------------------------------------------- timing
def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str = "cpu") -> float:
    """Seconds for one call, the device synchronised inside the timed region."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def speed_ratio(candidate: list[float], baseline: list[float]) -> float:
    """How many times faster the candidate is than the baseline.

    With bracketing runs (baseline, candidate, baseline, ..., candidate, baseline: one baseline
    more than candidates) each candidate run is compared with the mean of the baseline runs on
    either side, which cancels slow drifts in machine load and which-ran-first effects; the
    median of those per-run ratios is robust to the odd stalled run. Otherwise: medians.
    """
    if candidate and len(baseline) == len(candidate) + 1:
        return statistics.median(
            (b0 + b1) / 2 / c for b0, b1, c in zip(baseline, baseline[1:], candidate)
        )
    return median(baseline) / median(candidate)


def matmul_gflops(device: str = "cpu", n: int = 1024, repeats: int = 5) -> float:
    """The machine's fp32 matmul rate (GFLOP/s) on an n^3 product: the roof for FLOP figures."""
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up: thread pool, cuBLAS handles
    seconds = median([timed(lambda: a @ b, device) for _ in range(repeats)])
    return 2 * n**3 / seconds / 1e9


# ----------------------------------------------------------------------------- FLOPs
def matmul_params(model, head: bool = False) -> int:
    """Weights used in matmuls per token: 2-D parameters except the embedding table (a lookup)
    and, unless `head`, the output projection (embed() does not compute logits)."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.dim() == 2
        and not name.startswith("embedding")
        and (head or not name.startswith("fc."))
    )


def embed_flops(model, batch: int, tokens: int) -> float:
    """Forward FLOPs of one (batch, tokens) embedding pass: 2 * matmul params * B * T, plus the
    Transformer's attention 4 * T^2 * d * layers * B (QK^T and AV, causal half not discounted)."""
    flops = 2.0 * matmul_params(model) * batch * tokens
    cfg = model.config
    if cfg.architecture == "transformer":
        flops += 4.0 * tokens * tokens * cfg.d_model * cfg.num_layers * batch
    return flops


def decode_flops(model, prompt: int, new: int) -> float:
    """FLOPs to generate `new` tokens one at a time after a `prompt`-token prefill (logits too)."""
    per_token = 2.0 * matmul_params(model, head=True)
    cfg = model.config
    flops = per_token * (prompt + new)
    if cfg.architecture == "transformer":  # each token attends over the tokens before it
        seen = sum(range(1, prompt + new + 1))
        flops += 4.0 * seen * cfg.d_model * cfg.num_layers
    return flops


# ----------------------------------------------------------------------------- environment
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_info(device: str) -> dict:
    """Where a number was measured: CPU, GPU, threads and library versions."""
    import importlib.metadata as md

    import torch

    info = {
        "device": device,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    for pkg in ("fastlm", "torch", "onnxruntime", "triton", "tokenizers", "numpy"):
        try:
            info[f"{pkg}_version"] = md.version(pkg)
        except md.PackageNotFoundError:
            info[f"{pkg}_version"] = None
    return info


def random_batch(batch: int, tokens: int, vocab: int, seed: int = 0):
    """(ids, mask): (B, T) int64 ids in [2, vocab) (no special tokens) and an all-ones mask."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab, size=(batch, tokens), dtype=np.int64)
    return ids, np.ones_like(ids)


def greedy_decode(backend, prompt: list[int], new: int) -> list[int]:
    """`new` greedy tokens through the backend's decoder (1 prefill + new - 1 steps). Never
    stops at <|endoftext|>, so every call does the same work whatever the weights."""
    decoder = backend.new_decoder(len(prompt) + new)
    logits = decoder.prefill(prompt)
    out = []
    for i in range(new):
        out.append(int(logits.argmax()))
        if i + 1 < new:
            logits = decoder.step(out[-1])
    return out


def warm_up(lm, decode: bool = True) -> None:
    """First calls (torch.compile graphs, ORT sessions) happen here, not in a timed region. One
    decode warms every generation up to 256 tokens: the compile backend buckets its cache."""
    ids, mask = random_batch(2, 16, lm.config.vocab_size)
    lm.backend.embed_batch(ids, mask)
    if decode:
        greedy_decode(lm.backend, list(range(2, 18)), 2)


# ----------------------------------------------------------------------------- CLI
def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="quick embedding latency/throughput table per backend")
    p.add_argument(
        "--models",
        nargs="+",
        default=list(ARCHS),
        choices=ARCHS,
        help="architectures (shipped weights, else random-weight checkpoints)",
    )
    p.add_argument(
        "--backends",
        nargs="+",
        default=["eager", "compile", "onnx-fp32", "onnx-int8"],
        choices=sorted(BACKENDS),
    )
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16, 64])
    p.add_argument("--seq-len", type=int, default=64, help="tokens per text")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per point (median)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads")
    p.add_argument("--plot", metavar="FILE.png", help="draw latency and throughput vs batch size")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    if min(args.batch_sizes) < 1 or args.seq_len < 1 or args.repeats < 1:
        raise ValueError("batch sizes, --seq-len and --repeats must be >= 1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = model_sources(Path(tmp))
        for arch in args.models:
            rows += _bench_model(arch, sources[arch], args, device)
    info = env_info(device)
    print(
        f"device {device} ({info.get('gpu') or info['cpu']}), threads {info['threads']}, "
        f"torch {info['torch_version']}, onnxruntime {info['onnxruntime_version']}"
    )
    print(format_table(rows))
    if args.plot:
        plot(rows, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def _bench_model(arch: str, source, args, device: str) -> list[dict]:
    models = {}
    for key in sorted(dict.fromkeys(args.backends), key=lambda k: k != "eager"):  # eager first
        start = time.perf_counter()
        try:
            models[key] = load_model(source, key, device, args.threads)
        except BackendUnavailable as err:
            print(f"skip {arch}/{key}: {err}")
            continue
        loaded = time.perf_counter()
        warm_up(models[key], decode=False)
        print(
            f"{arch}/{key}: load {loaded - start:.1f} s (ONNX: export on first use), "
            f"first calls (torch.compile: compilation) {time.perf_counter() - loaded:.1f} s"
        )
    if not models:
        return []
    rows = []
    for batch in args.batch_sizes:
        ids, mask = random_batch(batch, args.seq_len, next(iter(models.values())).config.vocab_size)
        times = _round_robin(models, ids, mask, args.repeats, device)
        eager = times.get("eager")
        for key, ts in times.items():
            ms = 1000 * median(ts[: args.repeats])
            ratio = speed_ratio(ts, eager) if eager and key != "eager" else float("nan")
            rows.append(
                {
                    "model": arch,
                    "backend": key,
                    "batch": batch,
                    "seq_len": args.seq_len,
                    "ms": ms,
                    "texts_per_s": batch / ms * 1000,
                    "vs_eager": 1.0 if key == "eager" else ratio,
                }
            )
    return rows


def _round_robin(models: dict, ids, mask, repeats: int, device: str) -> dict[str, list[float]]:
    """Seconds per backend, one call of each per round so load drifts hit all alike. Round 0
    warms the new shape up and is dropped; eager runs once more at the end, so every other
    backend's runs are bracketed by eager runs (see speed_ratio)."""
    times: dict[str, list[float]] = {key: [] for key in models}
    for _ in range(repeats + 1):
        for key, lm in models.items():
            call = lm.backend.embed_batch
            times[key].append(timed(lambda c=call: c(ids, mask), device))
    times = {key: ts[1:] for key, ts in times.items()}
    if "eager" in models:
        call = models["eager"].backend.embed_batch
        times["eager"].append(timed(lambda: call(ids, mask), device))
    return times


def format_table(rows: list[dict]) -> str:
    head = f"{'model':<12}{'backend':<11}{'batch':>6}{'ms':>10}{'texts/s':>10}{'x eager':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<12}{r['backend']:<11}{r['batch']:>6}{r['ms']:>10.2f}"
            f"{r['texts_per_s']:>10.0f}{r['vs_eager']:>9.2f}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    """Latency (ms) and throughput (texts/s) vs batch size, one line per model/backend."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'fastlm[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax_ms, ax_tp) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"lstm": "--", "transformer": "-"}
    colors = {key: f"C{i}" for i, key in enumerate(BACKENDS)}  # one colour per backend
    for arch, key in dict.fromkeys((r["model"], r["backend"]) for r in rows):
        pts = [r for r in rows if r["model"] == arch and r["backend"] == key]
        xs = [r["batch"] for r in pts]
        for ax, field in ((ax_ms, "ms"), (ax_tp, "texts_per_s")):
            ax.plot(
                xs,
                [r[field] for r in pts],
                styles.get(arch, "-"),
                color=colors[key],
                marker="o",
                label=f"{arch} {key}",
            )
    seq = rows[0]["seq_len"] if rows else "?"
    for ax, label in ((ax_ms, "latency per batch (ms)"), (ax_tp, "throughput (texts/s)")):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_yscale("log")
        ax.set_xlabel(f"batch size ({seq} tokens per text)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_tp.legend(fontsize=8)
    fig.suptitle(f"fastlm embed, {cpu_name()}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
