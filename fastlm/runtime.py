"""Run an exported model with ONNX Runtime alone: no PyTorch needed.

    import fastlm.runtime
    model = fastlm.runtime.load("exports/transformer-int8")  # checks every file's sha256 first
    vecs = model.embed(["a text", "another"])                # (2, D) float32, L2-normalised
    text = model.generate("Once upon a time", max_new_tokens=50)
    model.score("some text")

`load` returns the same `LanguageModel` that `fastlm.load` does (fastlm/language_model.py), over
`OrtBackend`: one set of defaults, checks and edge cases (README's table) for every backend.
Needs onnxruntime, numpy and tokenizers only (`import fastlm` itself is lazy). The directory
comes from `fastlm export` (fastlm/export/format.py, docs/onnx.md); a shipped model runs by name
too, from the ONNX pack it carries (`fastlm.runtime.load("transformer")`: int8 embedding, fp32
scoring and decoding, the graphs `backend="auto"` runs; fastlm/export/pack_format.py).

Scoring: lm.onnx starts from an empty state, so every text is scored in one pass (logits take
~8 KB per token); the torch engine's "onnx" backend scores long LSTM texts in chunks instead.

Memory: a run over more than SHRINK_ABOVE_TOKENS input tokens asks ONNX Runtime to shrink its
arena afterwards (`run_options`), so the memory an outsize batch took goes back to the system
instead of staying in the arena; an allocation failure is raised as MemoryError (never an ORT
arena trace). An outsize scoring run (that many tokens, or more attention cells than a planned
batch holds: a text longer than 4,096 tokens) goes to a second lm session without the CPU arena
instead (shrinking left ~0.5 GB of a 4,999-token text's 1.5 GB peak in the arena; without it the
memory is freed as the run ends). Prompts are decoded `OnnxDecoder.prefill_chunk` tokens per
run, so a prompt of any length prefills in bounded memory.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from fastlm.backend import SCORE_CHUNK, Backend, ModelInfo, token_nll
from fastlm.batching import DEFAULT_TOKEN_BUDGET
from fastlm.char_ngrams import LEXICAL_FILE, LexicalBranch, LexicalBranchError
from fastlm.checkpoint_files import CHECKPOINT_FORMAT, verify_checkpoint
from fastlm.export.format import (
    DECODE_FILE,
    EMBED_FILE,
    LM_FILE,
    TOKENIZER_FILE,
    ExportDirError,
    check_graph,
    verify_export_dir,
)
from fastlm.export.pack_format import PACK_DIR, PACK_MANIFEST, PackedGraphs, open_pack
from fastlm.hub import WEIGHTS_DIR, available_models, read_latest
from fastlm.language_model import LanguageModel
from fastlm.tokenizer import Tokenizer
from fastlm.validation import check_optional_int

# Score cells (batch x T^2) per scoring batch on graphs that materialise attention: 4 heads x
# 4 bytes = 16 bytes per cell per tensor; 2^24 cells bound a tensor to 256 MB (a single text
# longer than that runs alone).
ATTENTION_CELLS = 1 << 24
# Shrinking costs a fresh allocation on the next call (measured 1.3-1.5x slower 64 x 256
# batches), so only runs above this many input tokens shrink: batches within the default
# token budget reuse the arena; a larger one (an outsize text, a bigger budget) gives its
# memory back.
SHRINK_ABOVE_TOKENS = DEFAULT_TOKEN_BUDGET


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


def _run(session, feed: dict, what: str, shrink: bool | None = None) -> list[np.ndarray]:
    """session.run (shrinking the arena after an outsize input; shrink=False for a session
    without arena, which has nothing to shrink), with an allocation failure raised as
    MemoryError."""
    if shrink is None:
        shrink = feed["input_ids"].size > SHRINK_ABOVE_TOKENS
    try:
        return session.run(None, feed, run_options=RUN_OPTIONS if shrink else None)
    except (ort_state.RuntimeException, ort_state.Fail) as err:
        if "alloc" not in str(err).lower():
            raise
        shapes = {k: tuple(v.shape) for k, v in feed.items()}
        raise MemoryError(f"ONNX Runtime could not allocate memory for {what} {shapes}") from err


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
    (a packed graph, fastlm/export/pack_format.py; the arrays must outlive the session)."""
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


class OrtBackend(Backend):
    """An export directory's three graphs on ONNX Runtime sessions (thread-safe; each decoder
    owns its state)."""

    name = "onnx"

    def __init__(
        self,
        path: str | os.PathLike,
        manifest: dict,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        packed: PackedGraphs | None = None,
    ):
        """Open the graphs of `path` as `manifest` describes them, with no sha256 check (the
        exporter certifies a directory before its manifest exists; `load` verifies first).
        packed: a checkpoint's verified pack (its manifest is `manifest`; `path` the checkpoint,
        whose tokenizer.json it reads) whose graphs are opened instead of the directory's."""
        check_optional_int(threads, "threads", min=1)
        self.path, self.manifest, self.threads = Path(path), manifest, threads
        self.tokenizer = Tokenizer.load(self.path / TOKENIZER_FILE)
        providers = list(providers) if providers else default_providers()
        where = packed.path if packed is not None else self.path
        self._graphs = {
            key: (where / name, packed.graphs[key] if packed is not None else None)
            for key, name in (("embed", EMBED_FILE), ("lm", LM_FILE), ("decode", DECODE_FILE))
        }
        self.sessions = {
            key: make_session(file, threads, providers, packed=graph)
            for key, (file, graph) in self._graphs.items()
        }
        for key, (file, _) in self._graphs.items():
            # digests prove nothing once a manifest is re-hashed: the graphs must fit the facts
            check_graph(self.sessions[key], file, key, manifest)
        self.info = ModelInfo.from_facts(manifest["model"]).with_identity(
            manifest["source"]["weights_sha256"], self.tokenizer
        )
        self.dtypes: dict[str, str] = (
            packed.dtypes
            if packed is not None
            else dict.fromkeys(self._graphs, manifest.get("dtype", "fp32"))
        )
        self.dtype: str = "+".join(dict.fromkeys(self.dtypes.values()))  # "int8+fp32" mixed
        if LEXICAL_FILE in manifest.get("files", {}):  # unlisted: unverified, never read
            try:
                self.lexical = LexicalBranch.load(self.path / LEXICAL_FILE)
            except LexicalBranchError as err:
                raise ExportDirError(str(err)) from None
            if self.lexical.dim != self.info.embedding_dim:
                raise ExportDirError(
                    f"{self.path / LEXICAL_FILE}: rows of {self.lexical.dim}, the embeddings "
                    f"have {self.info.embedding_dim}"
                )
        if manifest["model"]["attention_scores"]:
            self.max_attention_cells = ATTENTION_CELLS

    @property
    def providers(self) -> list[str]:
        return self.sessions["embed"].get_providers()

    def embed_batch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": _i64(input_ids), "attention_mask": _i64(attention_mask)}
        return _run(self.sessions["embed"], feed, "an embedding batch")[0]

    _outsize_lm = None  # the lm session without arena, built on the first outsize run
    _outsize_lock = threading.Lock()

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        """(B, T) int64 ids -> (B, T, V) float32 logits at every position."""
        feed = {"input_ids": _i64(input_ids)}
        if self._outsize(*input_ids.shape):
            return _run(self._outsize_session(), feed, "a logits batch", shrink=False)[0]
        return _run(self.sessions["lm"], feed, "a logits batch")[0]

    def _outsize(self, batch: int, length: int) -> bool:
        """More tokens than SHRINK_ABOVE_TOKENS, or more attention cells than a planned batch
        holds (the score cells grow as length^2: 4,999 tokens peak at 1.5 GB)."""
        cells = self.max_attention_cells
        return batch * length > SHRINK_ABOVE_TOKENS or (
            cells is not None and batch * length * length > cells
        )

    def _outsize_session(self):
        """lm.onnx on a session without CPU arena: an outsize run's memory goes back to the
        system when the run ends, where the arena would keep its peak for the process's life
        (and shrinking it left a third of it). Built once, on first use."""
        with self._outsize_lock:
            if self._outsize_lm is None:
                providers = self.sessions["lm"].get_providers()
                file, graph = self._graphs["lm"]
                self._outsize_lm = make_session(
                    file, self.threads, providers, arena=False, packed=graph
                )
            return self._outsize_lm

    def nll_batch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        logits = self.logits(input_ids[:, :-1])  # (B, T-1, V) float32
        targets, weights = input_ids[:, 1:], attention_mask[:, 1:]
        total = np.zeros(input_ids.shape[0])
        for start in range(0, logits.shape[1], SCORE_CHUNK):  # bounds the numpy temporaries
            part = slice(start, start + SCORE_CHUNK)
            total += (token_nll(logits[:, part], targets[:, part]) * weights[:, part]).sum(1)
        return total

    def new_decoder(self, max_seq: int) -> OnnxDecoder:
        return OnnxDecoder(self.sessions["decode"], self.info.context_length)

    def details(self) -> dict:
        return {
            "backend": self.name,
            "dtype": self.dtype,
            "dtypes": self.dtypes,
            "providers": self.providers,
        }


class OnnxDecoder:
    """Incremental decoding of one sequence with decode.onnx; logits are float32 (V,). The state
    inputs are read from the graph: zeros, batch 1, growing axes empty."""

    # prompt tokens per decode.onnx run: one run over a 355k-token LSTM prompt took +2.1 GB
    # (fp32; +9.6 GB for 4M characters on int8) and a 4,900-token Transformer one 1.75 GB
    prefill_chunk = SCORE_CHUNK

    def __init__(self, session, max_len: int | None):
        self.session, self.max_len = session, max_len
        self.state = {
            i.name: np.zeros(_empty_shape(i.shape), _NUMPY_TYPES[i.type])
            for i in session.get_inputs()
            if i.name != "input_ids"
        }
        self.outputs = [o.name for o in session.get_outputs()]
        # On CPU the state stays in ONNX Runtime's own buffers between runs (IO binding): the
        # Transformer's past is not copied out to numpy and back every token (measured 0.212
        # -> 0.178 ms/token over 128 greedy tokens; the LSTM's (h, c) is too small to matter)
        self.bound = session.get_providers()[0] == "CPUExecutionProvider"
        self.length = 0  # tokens consumed so far

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """The prompt, `prefill_chunk` tokens per run (the state carries it on)."""
        ids = list(ids)
        self._check_room(ids)  # before the first chunk runs
        for start in range(0, len(ids), self.prefill_chunk):
            logits = self._run(ids[start : start + self.prefill_chunk])
        return logits

    def step(self, token: int) -> np.ndarray:
        return self._run([int(token)])

    def _check_room(self, ids: list[int]) -> None:
        if not ids:
            raise ValueError("no tokens to decode")
        if self.max_len is not None and self.length + len(ids) > self.max_len:
            raise ValueError(f"the sequence would exceed the context ({self.max_len} tokens)")

    def _run(self, ids: list[int]) -> np.ndarray:
        self._check_room(ids)
        ids_array = np.asarray([ids], dtype=np.int64)
        if self.bound:
            logits, *state = self._run_bound(ids_array)
        else:
            feed = {"input_ids": ids_array, **self.state}
            logits, *state = _run(self.session, feed, "a decode step")
        self.state = dict(zip(self.state, state))
        self.length += len(ids)
        return logits[0]

    def _run_bound(self, ids: np.ndarray) -> list:
        """One run with the state bound in place: [logits (numpy), *state (OrtValues)]."""
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        for name, value in self.state.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:  # the zeros of the first run
                binding.bind_cpu_input(name, value)
        for name in self.outputs:
            binding.bind_output(name, "cpu")
        shrink = ids.size > SHRINK_ABOVE_TOKENS
        try:
            self.session.run_with_iobinding(binding, RUN_OPTIONS if shrink else None)
        except (ort_state.RuntimeException, ort_state.Fail) as err:
            if "alloc" not in str(err).lower():
                raise
            raise MemoryError(
                f"ONNX Runtime could not allocate memory for a decode step {ids.shape}"
            ) from err
        logits, *state = binding.get_outputs()
        return [logits.numpy(), *state]


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _empty_shape(dims) -> tuple[int, ...]:
    """A state input's starting shape: the batch axis 1, other named (growing) axes 0."""
    return tuple(d if isinstance(d, int) else (1 if d == "batch" else 0) for d in dims)


def _i64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


class OnnxModel(LanguageModel):
    """The `LanguageModel` of an export directory (what `load` returns): every method of
    LanguageModel, plus the export's path, manifest, dtype and providers."""

    backend: OrtBackend

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> OnnxModel:
        """Open an export directory, or a shipped model / checkpoint carrying an ONNX pack,
        after checking every file against its manifest."""
        check_optional_int(threads, "threads", min=1)
        path = _resolve(path)
        if not _is_checkpoint(path):
            manifest = verify_export_dir(path)
            return cls(os.fspath(path), OrtBackend(path, manifest, threads, providers))
        if not (path / PACK_DIR / PACK_MANIFEST).is_file():
            raise ExportDirError(
                f"{path} is a checkpoint without an ONNX pack: export it (`fastlm export`) and "
                "load the export directory"
            )
        ckpt_manifest = verify_checkpoint(path)  # every file, the lexical branch's included
        packed = open_pack(path, ckpt_manifest)
        backend = OrtBackend(path, packed.manifest, threads, providers, packed=packed)
        if LEXICAL_FILE in ckpt_manifest["files"]:
            try:
                backend.lexical = LexicalBranch.load(path / LEXICAL_FILE)
            except LexicalBranchError as err:
                raise ExportDirError(str(err)) from None
            if backend.lexical.dim != backend.info.embedding_dim:
                raise ExportDirError(
                    f"{path / LEXICAL_FILE}: rows of {backend.lexical.dim}, the embeddings have "
                    f"{backend.info.embedding_dim}"
                )
        return cls(os.fspath(path), backend)

    @property
    def path(self) -> Path:
        return self.backend.path

    @property
    def manifest(self) -> dict:
        return self.backend.manifest

    @property
    def dtype(self) -> str:
        return self.backend.dtype

    @property
    def providers(self) -> list[str]:
        return self.backend.providers


def load(
    path: str | os.PathLike, threads: int | None = None, providers: Sequence[str] | None = None
) -> OnnxModel:
    """The model of an export directory (fastlm/export/format.py), or of a shipped model name /
    checkpoint directory that carries an ONNX pack (fastlm/export/pack_format.py), on ONNX
    Runtime, verified."""
    return OnnxModel.load(path, threads, providers)


def _resolve(path: str | os.PathLike) -> Path:
    """What `fastlm.load` would open for the same argument: a shipped model's directory by
    name, a run directory's latest checkpoint, or the directory as given."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    text = os.fspath(path)
    if text in available_models():
        return WEIGHTS_DIR / text
    if (Path(text) / "latest").is_file():
        return read_latest(Path(text))
    return Path(text)


def _is_checkpoint(path: Path) -> bool:
    """A checkpoint directory (its manifest says so), not an export directory."""
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # verify_export_dir says what is wrong
    return isinstance(manifest, dict) and manifest.get("format") == CHECKPOINT_FORMAT


__all__ = ["ExportDirError", "OnnxDecoder", "OnnxModel", "OrtBackend", "load", "verify_export_dir"]
