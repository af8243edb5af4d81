"""ONNX Runtime sessions as fastlm opens and runs them: threads, providers, the CPU arena, and
allocation failures raised as MemoryError. Used by the runtime (fastlm/runtime.py) and its
decoder (fastlm/ort/decoder.py); onnxruntime and numpy only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from fastlm.batching import DEFAULT_TOKEN_BUDGET
from fastlm.ort.format import ExportDirError

# Shrinking costs a fresh allocation on the next call (measured 1.3-1.5x slower 64 x 256
# batches), so only runs above this many input tokens shrink: batches within the default
# token budget reuse the arena; a larger one (an outsize text, a bigger budget) gives its
# memory back.
SHRINK_ABOVE_TOKENS = DEFAULT_TOKEN_BUDGET


# Before 1.20, ONNX Runtime's CPU GroupQueryAttention ignored the cache for a run of several
# tokens after a past (measured on the Transformer's decode graph: 1.18.1 and 1.19.2 off by 5.8
# in the logits, 1.20.1 within 1e-5), which prompt chunks and checked guesses are.
MIN_ONNXRUNTIME = (1, 20)


def onnxruntime_too_old(version: str | None = None) -> str | None:
    """Why this onnxruntime (or `version`) cannot run fastlm's graphs, or None."""
    version = version or ort.__version__
    found = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    if found >= MIN_ONNXRUNTIME:
        return None
    need = ".".join(map(str, MIN_ONNXRUNTIME))
    return f"onnxruntime {version} is older than {need} (pip install 'onnxruntime>={need}')"


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build has it, then CPU."""
    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


def run_options() -> ort.RunOptions:
    """Per-call options that shrink the CPU arena back after the run. Without them the arena
    keeps its high-water mark (measured: 3.2 GB after one 64 x 1,024-token Transformer batch,
    0.9 GB for the LSTM) and the next call of the process can fail under a memory cap."""
    opts = ort.RunOptions()
    opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return opts


RUN_OPTIONS = run_options()


def run_session(session, feed: dict, what: str, shrink: bool | None = None) -> list[np.ndarray]:
    """session.run (shrinking the arena after an outsize input; shrink=False for a session
    without arena, which has nothing to shrink), with an allocation failure raised as
    MemoryError."""
    if shrink is None:
        shrink = feed["input_ids"].size > SHRINK_ABOVE_TOKENS
    shapes = {k: tuple(v.shape) for k, v in feed.items()}
    with allocation_errors(f"{what} {shapes}"):
        return session.run(None, feed, run_options=RUN_OPTIONS if shrink else None)


@contextmanager
def allocation_errors(what: str) -> Iterator[None]:
    """An ONNX Runtime allocation failure inside the block, raised as MemoryError naming `what`
    (never an arena trace); other ORT errors pass through."""
    try:
        yield
    except (ort_state.RuntimeException, ort_state.Fail) as err:
        if "alloc" not in str(err).lower():
            raise
        raise MemoryError(f"ONNX Runtime could not allocate memory for {what}") from err


def make_session(
    path: Path,
    threads: int | None,
    providers: Sequence[str],
    arena: bool = True,
    packed: tuple[bytes, dict[str, np.ndarray]] | None = None,
):
    """An ORT session; its intra-op threads are this session's own (0: ORT's default, one per
    physical core), never a process-wide setting. arena=False: CPU buffers are freed after each
    run instead of pooled (for outsize runs; pooling is 15-35% faster on planned batches).
    packed: (graph bytes, {initializer name: array}) to open instead of the file at `path`
    (a packed graph, fastlm/ort/packs.py; the arrays must outlive the session)."""
    old = onnxruntime_too_old()
    if old:
        raise RuntimeError(f"cannot open {path}: {old}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or 0
    opts.enable_cpu_mem_arena = arena
    model: str | bytes = str(path)
    if packed is not None:
        model, arrays = packed
        opts.add_external_initializers(
            list(arrays), [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays.values()]
        )
    try:
        session = ort.InferenceSession(model, sess_options=opts, providers=list(providers))
    except (ort_state.InvalidProtobuf, ort_state.InvalidGraph) as err:
        raise ExportDirError(f"{path} is not a valid ONNX graph: {err}") from None
    except (ort_state.Fail, ort_state.InvalidArgument, ort_state.RuntimeException) as err:
        if packed is None:  # e.g. a packed graph missing a tensor, or given one of another shape
            raise
        raise ExportDirError(f"{path} cannot be opened: {err}") from None
    if packed is not None:  # the arrays live as long as the session that was handed them
        session._fastlm_initializers = arrays
    return session
