"""Run an exported model with ONNX Runtime alone: no PyTorch needed.

    import fastlm.runtime
    model = fastlm.runtime.load("exports/transformer-int8")  # checks every file's sha256 first
    vecs = model.embed(["a text", "another"])                # (2, D) float32, L2-normalised
    text = model.generate("Once upon a time", max_new_tokens=50)
    model.score("some text")

`load` returns the same `LanguageModel` that `fastlm.load` does (fastlm/language_model.py), over
`OrtBackend`: one set of defaults, checks and edge cases (README's table) for every backend.
Needs onnxruntime, numpy and tokenizers only (`import fastlm` itself is lazy). The directory
comes from `fastlm export` (fastlm/ort/format.py, docs/onnx.md); a shipped model runs by name
too, from the ONNX pack it carries (`fastlm.runtime.load("transformer")`: int8 embedding, fp32
scoring and decoding, the graphs `backend="auto"` runs; fastlm/ort/packs.py).

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

from fastlm.backend import SCORE_CHUNK, Backend, ModelInfo, token_nll
from fastlm.char_ngrams import LEXICAL_FILE, LexicalBranch, LexicalBranchError
from fastlm.checkpoint_files import CHECKPOINT_FORMAT, verify_checkpoint
from fastlm.hub import WEIGHTS_DIR, available_models, read_latest
from fastlm.language_model import LanguageModel
from fastlm.ort.decoder import OnnxDecoder
from fastlm.ort.format import (
    DECODE_FILE,
    EMBED_FILE,
    LM_FILE,
    TOKENIZER_FILE,
    ExportDirError,
    check_graph,
    verify_export_dir,
)
from fastlm.ort.packs import PACK_DIR, PACK_MANIFEST, PackedGraphs, open_pack
from fastlm.ort.sessions import SHRINK_ABOVE_TOKENS, default_providers, make_session, run_session
from fastlm.tokenizer import Tokenizer
from fastlm.validation import ArgumentTypeError, check_optional_int

# Score cells (batch x T^2) per scoring batch on graphs that materialise attention: 4 heads x
# 4 bytes = 16 bytes per cell per tensor; 2^24 cells bound a tensor to 256 MB (a single text
# longer than that runs alone).
ATTENTION_CELLS = 1 << 24


def read_lexical(directory: Path, dim: int) -> LexicalBranch:
    """The lexical branch in `directory` (a verified file), its rows `dim` wide: else
    ExportDirError naming the file."""
    try:
        branch = LexicalBranch.load(directory / LEXICAL_FILE)
    except LexicalBranchError as err:
        raise ExportDirError(str(err)) from None
    if branch.dim != dim:
        raise ExportDirError(
            f"{directory / LEXICAL_FILE}: rows of {branch.dim}, the embeddings have {dim}"
        )
    return branch


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
            self.lexical = read_lexical(self.path, self.info.embedding_dim)
        if manifest["model"]["attention_scores"]:
            self.max_attention_cells = ATTENTION_CELLS

    @property
    def providers(self) -> list[str]:
        return self.sessions["embed"].get_providers()

    def embed_batch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": _i64(input_ids), "attention_mask": _i64(attention_mask)}
        return run_session(self.sessions["embed"], feed, "an embedding batch")[0]

    _outsize_lm = None  # the lm session without arena, built on the first outsize run
    _step_decode = None  # decode.onnx on one thread, built for the first decoder
    _lazy_lock = threading.Lock()  # guards the sessions built on first use

    def logits(self, input_ids: np.ndarray) -> np.ndarray:
        """(B, T) int64 ids -> (B, T, V) float32 logits at every position."""
        feed = {"input_ids": _i64(input_ids)}
        if self._outsize(*input_ids.shape):
            return run_session(self._outsize_session(), feed, "a logits batch", shrink=False)[0]
        return run_session(self.sessions["lm"], feed, "a logits batch")[0]

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
        with self._lazy_lock:
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
        return OnnxDecoder(
            self.sessions["decode"],
            self.info.context_length,
            max_seq,
            self._step_session(),
            rows_independent=self.dtypes["decode"] != "int8",
        )

    def _step_session(self):
        """decode.onnx on one thread for the decoder's steps (OnnxDecoder: step_session); the
        decode session itself when that is one thread already or not on a CPU. Built once, on
        first use."""
        decode = self.sessions["decode"]
        if self.threads == 1 or decode.get_providers()[0] != "CPUExecutionProvider":
            return decode
        with self._lazy_lock:
            if self._step_decode is None:
                file, graph = self._graphs["decode"]
                self._step_decode = make_session(file, 1, ["CPUExecutionProvider"], packed=graph)
            return self._step_decode

    def details(self) -> dict:
        return {
            "backend": self.name,
            "dtype": self.dtype,
            "dtypes": self.dtypes,
            "providers": self.providers,
        }


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
        if LEXICAL_FILE in ckpt_manifest["files"]:  # verified with the checkpoint
            backend.lexical = read_lexical(path, backend.info.embedding_dim)
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
    """The model of an export directory (fastlm/ort/format.py), or of a shipped model name /
    checkpoint directory that carries an ONNX pack (fastlm/ort/packs.py), on ONNX
    Runtime, verified."""
    return OnnxModel.load(path, threads, providers)


def _resolve(path: str | os.PathLike) -> Path:
    """What `fastlm.load` would open for the same argument: a shipped model's directory by
    name, a run directory's latest checkpoint, or the directory as given."""
    if not isinstance(path, str | os.PathLike):
        raise ArgumentTypeError(
            f"path must be a str or os.PathLike, got {type(path).__name__}", "path"
        )
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
