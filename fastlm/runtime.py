"""Run an exported model with ONNX Runtime alone: no PyTorch needed.

    from fastlm.runtime import OnnxModel
    model = OnnxModel.load("exports/transformer-int8")   # checks every file's sha256 first
    vecs = model.embed(["a text", "another"])              # (2, D) float32, L2-normalised
    text = model.generate("Once upon a time", max_new_tokens=50, temperature=0)

Needs onnxruntime, numpy and tokenizers only (fastlm.tokenizer and fastlm.io import no torch;
`import fastlm` itself is lazy). The directory comes from `fastlm export` (see docs/onnx.md).
Edge cases match `LanguageModel`: embed([]) -> (0, D); "" -> a zero vector; texts longer than
the embedding window are embedded window by window and pooled (fastlm/batching.py, the same
code as the engine); text prompts are preceded by <|endoftext|> and generation stops at it.

Memory: a run over more than SHRINK_ABOVE_TOKENS input tokens asks ONNX Runtime to shrink its
arena afterwards (`run_options`), so the memory an outsize batch took goes back to the system
instead of staying in the arena; an allocation failure is raised as MemoryError (never an ORT
arena trace).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from fastlm.batching import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_TOKEN_BUDGET,
    embed_window,
    embed_windowed,
    l2_normalize,
    truncate,
)
from fastlm.io import sha256_file
from fastlm.tokenizer import EOT_ID, Tokenizer, _check_text, _check_texts
from fastlm.validation import (
    check_float,
    check_int,
    check_manifest_files,
    check_optional_int,
    check_positive_int,
    check_seed,
)

FORMAT = "fastlm-onnx/1"
EMBED_FILE, LM_FILE, DECODE_FILE = "embed.onnx", "lm.onnx", "decode.onnx"
TOKENIZER_FILE, CONFIG_FILE = "tokenizer.json", "config.json"
MANIFEST_FILE, PARITY_FILE = "manifest.json", "parity.json"
MODEL_FACTS = ("architecture", "vocab_size", "embed_dim", "max_len", "num_layers", "state")
REQUIRED_FILES = (EMBED_FILE, LM_FILE, DECODE_FILE, TOKENIZER_FILE, CONFIG_FILE, PARITY_FILE)


class ExportDirError(ValueError):
    """An export directory is missing a file, fails its sha256 check, or cannot be parsed."""


def verify_export_dir(path: str | os.PathLike) -> dict:
    """Check every file of an export directory against manifest.json; return the manifest."""
    path = Path(path)
    if not path.is_dir():
        raise ExportDirError(f"export directory not found: {path}")
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportDirError(f"{path} has no {MANIFEST_FILE}: not a fastlm export") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportDirError(f"{path / MANIFEST_FILE} is corrupt: {err!r}") from None
    # schema first (plain names, hex digests), so no listed path is ever opened outside `path`
    files = check_manifest_files(manifest, str(path / MANIFEST_FILE), ExportDirError, MANIFEST_FILE)
    model = manifest.get("model")
    if not isinstance(model, dict):
        raise ExportDirError(f"{path / MANIFEST_FILE} is corrupt: 'model' must be an object")
    if manifest.get("format") != FORMAT:
        raise ExportDirError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT}")
    for name in sorted(set(REQUIRED_FILES) | set(files)):
        f = path / name
        if not f.is_file():
            raise ExportDirError(f"export file missing: {f}")
        if name not in files:
            raise ExportDirError(f"{f} is not listed in {MANIFEST_FILE}")
        if sha256_file(f) != files[name]:
            raise ExportDirError(f"sha256 mismatch for {f}: the file is corrupt or was edited")
    if model.get("architecture") not in ("lstm", "transformer"):
        raise ExportDirError(f"{path / MANIFEST_FILE}: unknown architecture {model!r}")
    missing = [k for k in MODEL_FACTS if k not in model]
    if missing:
        raise ExportDirError(f"{path / MANIFEST_FILE}: 'model' lacks {missing}")
    return manifest


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


# Shrinking costs a fresh allocation on the next call (measured 1.3-1.5x slower 64 x 256
# batches), so only runs above this many input tokens shrink: batches within the default
# token budget reuse the arena; a larger one (an outsize text, a bigger budget) gives its
# memory back.
SHRINK_ABOVE_TOKENS = DEFAULT_TOKEN_BUDGET


def _run(session, feed: dict, what: str) -> list[np.ndarray]:
    """session.run (shrinking the arena after an outsize input), with an allocation failure
    raised as MemoryError."""
    shrink = feed["input_ids"].size > SHRINK_ABOVE_TOKENS
    try:
        return session.run(None, feed, run_options=RUN_OPTIONS if shrink else None)
    except (ort_state.RuntimeException, ort_state.Fail) as err:
        if "alloc" not in str(err).lower():
            raise
        shapes = {k: tuple(v.shape) for k, v in feed.items()}
        raise MemoryError(f"ONNX Runtime could not allocate memory for {what} {shapes}") from err


def make_session(path: Path, threads: int | None, providers: Sequence[str]):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or 0  # 0 = ORT's default (one per physical core)
    return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))


class OnnxModel:
    """An exported model: three ONNX Runtime sessions and the tokenizer."""

    def __init__(self, path: Path, manifest: dict, tokenizer: Tokenizer, sessions: dict):
        self.path, self.manifest, self.tokenizer = path, manifest, tokenizer
        self.sessions = sessions  # "embed", "lm", "decode" -> InferenceSession, thread-safe
        facts = manifest["model"]
        self.architecture: str = facts["architecture"]
        self.vocab_size: int = facts["vocab_size"]
        self.embedding_dim: int = facts["embed_dim"]
        self.context_length: int | None = facts["max_len"]  # None: the LSTM, unbounded
        self.dtype: str = manifest.get("dtype", "fp32")
        self.embed_window: int = embed_window(self.architecture, facts.get("train_seq_len"))
        self._facts = facts

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> OnnxModel:
        """Open an export directory after checking every file against its manifest."""
        return cls.open(path, verify_export_dir(path), threads, providers)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        manifest: dict,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> OnnxModel:
        """Open the graphs of `path` as described by `manifest`, with no sha256 check (the
        exporter's parity check runs before the manifest exists)."""
        path = Path(path)
        check_optional_int(threads, "threads", min=1)
        tokenizer = Tokenizer.load(path / TOKENIZER_FILE)
        providers = list(providers) if providers else default_providers()
        sessions = {
            key: make_session(path / name, threads, providers)
            for key, name in (("embed", EMBED_FILE), ("lm", LM_FILE), ("decode", DECODE_FILE))
        }
        return cls(path, manifest, tokenizer, sessions)

    @property
    def providers(self) -> list[str]:
        return self.sessions["embed"].get_providers()

    # ------------------------------------------------------------------ raw graphs
    def embed_batch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, T) int64 ids + mask -> (B, D) float32 pooled states (not normalised)."""
        feed = {"input_ids": _i64(input_ids), "attention_mask": _i64(attention_mask)}
        return _run(self.sessions["embed"], feed, "an embedding batch")[0]

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        """(B, T) int64 ids -> (B, T, V) float32 logits at every position."""
        return _run(self.sessions["lm"], {"input_ids": _i64(input_ids)}, "a logits batch")[0]

    def new_decoder(self) -> OnnxDecoder:
        return OnnxDecoder(self.sessions["decode"], self._facts)

    # ------------------------------------------------------------------ embed
    def embed(
        self,
        texts: str | Sequence[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        normalize: bool = True,
        max_length: int | None = None,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
    ) -> np.ndarray:
        """Embeddings (n, D) float32 (or (D,) for a single str), in the caller's order; long
        texts window by window, as `LanguageModel.embed`."""
        single = isinstance(texts, str)
        items = _check_texts([texts] if single else texts)
        check_positive_int(batch_size, "batch_size")
        check_positive_int(token_budget, "token_budget")
        check_optional_int(max_length, "max_length", min=1)
        seqs = truncate(self.tokenizer.encode_many(items), max_length)
        out = embed_windowed(
            seqs, self.embedding_dim, self.embed_batch, self.embed_window, batch_size, token_budget
        )
        if normalize:
            out = l2_normalize(out)
        return out[0] if single else out

    # ------------------------------------------------------------------ generate
    def generate(
        self,
        prompt: str | Sequence[str],
        max_new_tokens: int = 50,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> str | list[str]:
        """Continue `prompt` (text out, prompt excluded; a list of prompts -> a list of str).
        temperature 0 (the default everywhere in fastlm) = greedy; otherwise sampling with
        numpy's generator seeded by `seed`."""
        if isinstance(prompt, list | tuple) and prompt and all(isinstance(p, str) for p in prompt):
            return [self.generate(p, max_new_tokens, temperature, top_k, seed) for p in prompt]
        ids = [EOT_ID] + self.tokenizer.encode(_check_text(prompt, "prompt"))
        return self.tokenizer.decode(
            self.generate_ids(ids, max_new_tokens, temperature, top_k, seed)
        )

    def generate_ids(
        self,
        ids: Sequence[int],
        max_new_tokens: int = 50,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> list[int]:
        """New token ids after `ids`, stopping early at <|endoftext|>."""
        ids = _check_ids(ids, self.vocab_size)
        _check_generation(max_new_tokens, temperature, top_k)
        check_seed(seed)
        if self.context_length is not None and len(ids) + max_new_tokens > self.context_length:
            raise ValueError(
                f"prompt ({len(ids)} tokens) + {max_new_tokens} new tokens exceeds "
                f"the context ({self.context_length})"
            )
        rng = np.random.default_rng(seed)
        decoder = self.new_decoder()
        logits, out = decoder.prefill(ids), []
        for i in range(max_new_tokens):
            token = sample_next(logits, temperature, top_k, rng)
            if token == EOT_ID:
                break
            out.append(token)
            if i + 1 < max_new_tokens:
                logits = decoder.step(token)
        return out


class OnnxDecoder:
    """Incremental decoding of one sequence with decode.onnx; logits are float32 (V,)."""

    def __init__(self, session, facts: dict):
        self.session, self.facts = session, facts
        self.max_len = facts["max_len"]
        L, state = facts["num_layers"], facts["state"]
        if facts["architecture"] == "lstm":
            zeros = np.zeros((L, 1, state["hidden_dim"]), np.float32)
            self.state = {"h": zeros, "c": zeros.copy()}
        else:
            zeros = np.zeros((L, 1, state["nhead"], 0, state["head_dim"]), np.float32)
            self.state = {"past_key": zeros, "past_value": zeros.copy()}
        self.length = 0  # tokens consumed so far

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        return self._run(list(ids))

    def step(self, token: int) -> np.ndarray:
        return self._run([int(token)])

    def _run(self, ids: list[int]) -> np.ndarray:
        if not ids:
            raise ValueError("no tokens to decode")
        if self.max_len is not None and self.length + len(ids) > self.max_len:
            raise ValueError(f"the sequence would exceed the context ({self.max_len} tokens)")
        feed = {"input_ids": np.asarray([ids], dtype=np.int64), **self.state}
        logits, *state = _run(self.session, feed, "a decode step")
        self.state = dict(zip(self.state, state))
        self.length += len(ids)
        return logits[0]


def sample_next(
    logits: np.ndarray, temperature: float, top_k: int | None, rng: np.random.Generator
) -> int:
    """One token id from logits (V,): argmax when temperature is 0, else a softmax sample."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64)
    with np.errstate(over="ignore"):  # shift first: a subnormal temperature gives -inf, not NaN
        z = (z - z.max()) / temperature
    if top_k is not None and top_k < z.shape[0]:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    return int(rng.choice(z.shape[0], p=p / p.sum()))


def _check_generation(max_new_tokens, temperature, top_k) -> None:
    check_int(max_new_tokens, "max_new_tokens")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    check_float(temperature, "temperature", min=0.0)
    check_optional_int(top_k, "top_k", min=1)


def _check_ids(ids: Sequence[int], vocab_size: int) -> list[int]:
    if isinstance(ids, np.ndarray):
        ids = ids.reshape(-1).tolist()
    if not isinstance(ids, Sequence) or isinstance(ids, str | bytes):
        raise TypeError(f"token ids must be a list of int, got {type(ids).__name__}")
    out = [check_int(t, f"token ids[{i}]") for i, t in enumerate(ids)]
    if not out:
        raise ValueError("token ids are empty: give at least one token")
    bad = [t for t in out if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return out


RUN_OPTIONS = run_options()


def _i64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


__all__ = ["ExportDirError", "OnnxDecoder", "OnnxModel", "sample_next", "verify_export_dir"]
