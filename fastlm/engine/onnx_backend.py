"""The "onnx" backend: ONNX Runtime sessions behind the engine's `Backend` interface.

    fastlm.load("transformer", backend="onnx", dtype="int8")

On first use the checkpoint is exported (fastlm.export, with its parity certificate) into a
cache directory, ~/.cache/fastlm/onnx/<sha256 of the weight files>-<dtype>/ (under
$XDG_CACHE_HOME when set); later loads reuse it after checking its sha256 manifest. Pass
export_dir= to run a directory written by `fastlm export` instead. Sessions are created once
(ORT_ENABLE_ALL, intra-op threads = `threads`) on CUDA when this onnxruntime has it and the
device is CUDA, else on CPU. ORT sessions are thread-safe; each decoder owns its own state.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from fastlm.checkpoint import Checkpoint
from fastlm.engine.eager import chunked_nll
from fastlm.models import architecture_of
from fastlm.ort.format import DTYPES, GRAPHS_REVISION, ExportDirError, verify_export_dir
from fastlm.ort.packs import PackedGraphs
from fastlm.ort.sessions import default_providers
from fastlm.runtime import OrtBackend

log = logging.getLogger("fastlm")

# lm.onnx has no state input: texts of an architecture whose state carries them on (the LSTM)
# longer than this are scored by the checkpoint's torch model in chunks (bounded memory);
# shorter ones by ONNX Runtime, whose logits take 8 KB per token.
ONNX_SCORE_MAX = 4096


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "fastlm" / "onnx"


class OnnxBackend(OrtBackend):
    """The runtime's `OrtBackend` over the checkpoint's cached (or given) export."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        device: torch.device,
        threads: int | None,
        dtype: str | None = None,
        export_dir: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        packed: PackedGraphs | None = None,
    ):
        """packed: the checkpoint's verified pack (`read_pack`), run instead of an export (what
        "auto" does on a CPU); dtype, export_dir and cache_dir do not apply to it."""
        if packed is not None and (dtype, export_dir, cache_dir) != (None, None, None):
            raise ValueError("a packed model takes no dtype, export_dir or cache_dir")
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(
                f"unknown dtype {dtype!r} for the onnx backend; choose one of {', '.join(DTYPES)}"
            )
        providers = default_providers() if device.type == "cuda" else ["CPUExecutionProvider"]
        weights_sha = checkpoint.weights_digest  # LM + embedding tower
        arch = checkpoint.config.architecture
        if packed is not None:
            path, manifest = checkpoint.path, packed.manifest
        elif export_dir is not None:  # dtype None: whatever the export holds
            path = Path(export_dir)
            manifest = verify_export_dir(path)
            _check_source(manifest, weights_sha, arch, dtype, path)
        else:
            dtype = dtype or "fp32"
            path = Path(cache_dir or default_cache_dir()) / f"{weights_sha}-{dtype}"
            manifest = _load_or_export(checkpoint.path, path, (weights_sha, arch, dtype))
        super().__init__(path, manifest, threads, providers, packed=packed)
        self.packed = packed
        # the export's lexical.safetensors is a copy of the checkpoint's (same digest): keep one
        # table in memory, not two
        self.lexical = checkpoint.lexical
        self.checkpoint, self.config, self.device = checkpoint, checkpoint.config, device
        # the torch model that scores what lm.onnx cannot (None: lm.onnx scores everything)
        # (an unbounded context: the architecture carries its state on, chunk by chunk)
        unbounded = self.info.context_length is None
        self._architecture = architecture_of(checkpoint.config)
        self._chunked_model = checkpoint.model.eval() if unbounded else None  # where it was loaded
        if device.type == "cuda" and "CUDAExecutionProvider" not in self.providers:
            log.warning(
                "device is %s but this onnxruntime has no CUDA provider: running on CPU "
                '(pip install "fastlm[gpu]" for onnxruntime-gpu)',
                device,
            )

    def nll_batch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if self._chunked_model is not None and input_ids.shape[1] - 1 > ONNX_SCORE_MAX:
            return chunked_nll(self._chunked_model, self._architecture, input_ids, attention_mask)
        return super().nll_batch(input_ids, attention_mask)

    def details(self) -> dict:
        where = self.packed.path if self.packed is not None else self.path
        return {**super().details(), "device": str(self.device), "export_dir": str(where)}


def _load_or_export(ckpt_path: Path, path: Path, want: tuple) -> dict:
    """The manifest of a cached export that verifies and was made from these weights in this
    dtype; otherwise (re)write it first. want: (weights digest, architecture, dtype)."""
    from fastlm.export import export  # onnx (an extra): only when the export is not cached

    weights_sha, arch, dtype = want
    if path.exists():
        try:
            manifest = verify_export_dir(path)
            _check_source(manifest, weights_sha, arch, dtype, path)
            if manifest.get("versions", {}).get("graphs") == GRAPHS_REVISION:
                return manifest
            log.info("%s was exported by an older fastlm: exporting it again", path)
        except ExportDirError:
            pass  # corrupt or half-edited cache entry: export again over it
        except ValueError:
            pass  # a valid export of other weights or another dtype under this key: replace it
    log.info(
        "first use of %s %s on ONNX Runtime: exporting to %s (seconds, once)",
        ckpt_path.name,
        dtype,
        path,
    )
    try:
        export(ckpt_path, path, dtype=dtype, force=path.exists())
    except FileExistsError:
        pass  # another process finished the same export first; it is verified below
    manifest = verify_export_dir(path)
    _check_source(manifest, weights_sha, arch, dtype, path)
    return manifest


def _check_source(
    manifest: dict, weights_sha: str, arch: str, dtype: str | None, path: Path
) -> None:
    """The export must come from exactly these weights (the checkpoint's weights digest: LM +
    embedding tower), be of the same architecture and, when a dtype was asked for, be in it."""
    source = manifest.get("source", {}).get("weights_sha256")
    exported = manifest["model"]["architecture"]
    if source != weights_sha or exported != arch:
        raise ValueError(
            f"{path} was exported from different weights (sha256 {str(source)[:12]}..., "
            f"{exported}) than the checkpoint being loaded ({weights_sha[:12]}..., {arch})"
        )
    have = manifest.get("dtype", "fp32")
    if dtype is not None and have != dtype:
        raise ValueError(f"{path} holds a {have} export, not the requested dtype {dtype!r}")
