"""How fastlm measures speed: the helpers `python -m tools.bench` and `pytest bench/` share.

Backend keys (what a user compares) and their loading, which turns "cannot run here" into one
exception; scratch checkpoints for packages without shipped weights; a timer that synchronises
the device, medians and bracketed speed ratios; FLOP counts and the machine's matmul roof;
environment facts recorded with each number; random batches, greedy decoding and warm-up.
Sharing them keeps the quick table and the regression suites measuring the same way. Heavy
imports (torch, numpy) happen inside functions: `python -m tools.bench --help` imports this
module.
"""

from __future__ import annotations

import os
import platform
import statistics
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
    """A backend cannot run here (a missing optional dependency, the wrong device)."""


# ----------------------------------------------------------------------------- loading
def load_model(source, key: str, device: str, threads: int | None):
    """fastlm.load(source) on backend `key`; BackendUnavailable says why it cannot run here."""
    import fastlm
    from fastlm.engine.registry import get_backend_class

    if key not in BACKENDS:
        raise ValueError(f"unknown backend key {key!r}; choose from {sorted(BACKENDS)}")
    name, options = BACKENDS[key]
    if key in CUDA_ONLY and not device.startswith("cuda"):
        raise BackendUnavailable(f"{key} runs on CUDA only; the device is {device}")
    try:
        get_backend_class(name)  # an unknown name (ValueError) is a failure, never a skip
    except ImportError as err:
        if not missing_extra(err):
            raise
        raise BackendUnavailable(f"backend {name!r} is not available: {err}") from None
    if key == "eager":  # the reference must always load: no error is turned into a skip
        return fastlm.load(source, backend=name, device=device, threads=threads)
    try:
        return fastlm.load(source, backend=name, device=device, threads=threads, **options)
    except ImportError as err:  # a missing optional dependency; any other error is a failure
        if not missing_extra(err):
            raise
        raise BackendUnavailable(f"{key} could not load: {err}") from None


# what a backend's extra installs: only their absence turns into a skip
OPTIONAL_MODULES = ("onnx", "onnxscript", "onnxruntime", "triton")


def missing_extra(err: ImportError) -> bool:
    """Whether `err` is an optional extra's module missing (not a broken import of fastlm's)."""
    return (err.name or "").split(".")[0] in OPTIONAL_MODULES


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
def matmul_weights(model, head: bool = False) -> list:
    """The weights a token is multiplied by: 2-D parameters except the embedding table (a
    lookup) and, unless `head`, the output projection (embed() does not compute logits)."""
    return [
        p
        for name, p in model.named_parameters()
        if p.dim() == 2
        and not name.startswith("embedding")
        and (head or not name.startswith("fc."))
    ]


def matmul_params(model, head: bool = False) -> int:
    """How many weights a token is multiplied by (`matmul_weights`)."""
    return sum(p.numel() for p in matmul_weights(model, head))


def embed_flops(model, batch: int, tokens: int) -> float:
    """Forward FLOPs of one (batch, tokens) embedding pass: 2 * matmul params * B * T, plus the
    architecture's token mixing (attention's QK^T and AV: every token looks at all T)."""
    from fastlm.models import architecture_of

    mixing = architecture_of(model).mixing_flops(model.config, tokens, tokens)
    return 2.0 * matmul_params(model) * batch * tokens + mixing * batch


def decode_flops(model, prompt: int, new: int) -> float:
    """FLOPs to generate `new` tokens one at a time after a `prompt`-token prefill (logits too)."""
    from fastlm.models import architecture_of

    per_token = 2.0 * matmul_params(model, head=True)
    seen = sum(range(1, prompt + new + 1))  # each token looks at the tokens up to itself
    mixing = architecture_of(model).mixing_flops(model.config, 1, seen)
    return per_token * (prompt + new) + mixing


def weights_floor(model, rounds: int = 200) -> float:
    """Seconds per token that reading the weights costs on this CPU: one matrix-vector product
    (numpy, fp32) with every matrix a decode step multiplies by (`matmul_weights(head=True)`),
    best of `rounds`. A one-token step can only beat it by reading fewer bytes (int8) or by
    checking several tokens per read (fastlm/speculative.py)."""
    import numpy as np

    # (in, out): x @ W, as the graphs lay them out
    mats = [p.detach().float().numpy().T.copy() for p in matmul_weights(model, head=True)]
    xs = {m.shape[0]: np.ones((1, m.shape[0]), np.float32) for m in mats}
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for m in mats:
            xs[m.shape[0]] @ m
        best = min(best, time.perf_counter() - start)
    return best


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
    """`new` greedy tokens through the backend's decoder (1 prefill + new - 1 steps), with the
    guessed tokens generate() checks when the decoder can (fastlm/speculative.py). Never stops
    at <|endoftext|>, so every call does the same work whatever the weights."""
    from fastlm.speculative import with_lookup

    decoder = with_lookup(backend.new_decoder(len(prompt) + new))  # as generate()'s greedy
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
    ids, mask = random_batch(2, 16, lm.info.vocab_size)
    lm.backend.embed_batch(ids, mask)
    if decode:
        greedy_decode(lm.backend, list(range(2, 18)), 2)
