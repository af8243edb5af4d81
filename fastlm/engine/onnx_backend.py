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
import onnxruntime  # noqa: F401  (a missing onnxruntime leaves this backend unregistered)
import torch

from fastlm.checkpoint import Checkpoint
from fastlm.engine.backends import SCORE_CHUNK, Backend, chunked_nll, register_backend
from fastlm.runtime import ExportDirError, OnnxDecoder, OnnxModel, default_providers

log = logging.getLogger("fastlm")

# lm.onnx has no state input: LSTM texts longer than this are scored by the eager LSTM in
# chunks (bounded memory); shorter ones by ONNX Runtime, whose logits take 8 KB per token.
LSTM_SCORE_MAX = 4096
# Score cells (batch x T^2) per scoring batch: the exported attention materialises its
# (B, heads, T, T) scores, 4 heads x 4 bytes = 16 bytes per cell per tensor; 2^24 cells bound a
# tensor to 256 MB (a single text longer than that runs alone).
ATTENTION_CELLS = 1 << 24


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "fastlm" / "onnx"


class OnnxBackend(Backend):
    name = "onnx"

    def __init__(
        self,
        checkpoint: Checkpoint,
        device: torch.device,
        threads: int | None,
        dtype: str | None = None,
        export_dir: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
    ):
        super().__init__(checkpoint, device, threads)
        from fastlm.export import DTYPES

        if dtype is not None and dtype not in DTYPES:
            raise ValueError(
                f"unknown dtype {dtype!r} for the onnx backend; choose one of {', '.join(DTYPES)}"
            )
        providers = default_providers()
        if device.type != "cuda":
            providers = ["CPUExecutionProvider"]
        weights_sha = checkpoint.weights_digest  # LM + embedding tower
        arch = checkpoint.config.architecture
        if export_dir is not None:  # dtype None: whatever the export holds
            path = Path(export_dir)
            self.onnx = OnnxModel.load(path, threads, providers)
            _check_source(self.onnx, weights_sha, arch, dtype, path)
        else:
            dtype = dtype or "fp32"
            path = Path(cache_dir or default_cache_dir()) / f"{weights_sha}-{dtype}"
            want = (weights_sha, arch, dtype)
            self.onnx = _load_or_export(checkpoint.path, path, want, threads, providers)
        self.dtype = self.onnx.dtype
        self.export_dir = path
        if device.type == "cuda" and "CUDAExecutionProvider" not in self.onnx.providers:
            log.warning(
                "device is %s but this onnxruntime has no CUDA provider: running on CPU "
                '(pip install "fastlm[gpu]" for onnxruntime-gpu)',
                device,
            )
        if self.config.architecture == "transformer":
            self.max_attention_cells = ATTENTION_CELLS  # read by LanguageModel.score

    def embed_batch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.onnx.embed_batch(input_ids, attention_mask)

    def nll_batch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if self.config.architecture == "lstm" and input_ids.shape[1] - 1 > LSTM_SCORE_MAX:
            # lm.onnx starts from a zero state, so it cannot score a long text in chunks:
            # the checkpoint's eager LSTM does, carrying (h, c) (bounded memory).
            return chunked_nll(self.checkpoint.model, input_ids, attention_mask, self.device)
        logits = self.onnx.logits(input_ids[:, :-1])  # (B, T-1, V) float32
        targets, weights = input_ids[:, 1:], attention_mask[:, 1:]
        total = np.zeros(input_ids.shape[0])
        for start in range(0, logits.shape[1], SCORE_CHUNK):  # bounds the numpy temporaries
            part = slice(start, start + SCORE_CHUNK)
            total += (_token_nll(logits[:, part], targets[:, part]) * weights[:, part]).sum(1)
        return total

    def new_decoder(self, max_seq: int) -> TorchLogitsDecoder:
        return TorchLogitsDecoder(self.onnx.new_decoder())

    def describe(self) -> dict:
        return {
            **super().describe(),
            "dtype": self.dtype,
            "providers": self.onnx.providers,
            "export_dir": str(self.export_dir),
        }


class TorchLogitsDecoder:
    """The runtime's numpy decoder, returning float32 torch logits (V,) on CPU like
    engine/decoding.py's decoders."""

    def __init__(self, decoder: OnnxDecoder):
        self._decoder = decoder

    def prefill(self, ids: list[int]) -> torch.Tensor:
        return torch.from_numpy(self._decoder.prefill(ids))

    def step(self, token: int) -> torch.Tensor:
        return torch.from_numpy(self._decoder.step(token))


def _token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """logits (B, T, V) float32, targets (B, T) -> (B, T) float64 NLL in nats."""
    shift = logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(logits - shift).sum(axis=-1)) + shift[..., 0]  # (B, T)
    target = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return (lse - target).astype(np.float64)


def _load_or_export(ckpt_path: Path, path: Path, want: tuple, threads, providers) -> OnnxModel:
    """Reuse a cached export when it verifies and was made from these weights in this dtype;
    otherwise (re)write it. want: (weights digest, architecture, dtype)."""
    from fastlm.export import export

    weights_sha, arch, dtype = want
    if path.exists():
        try:
            cached = OnnxModel.load(path, threads, providers)
            _check_source(cached, weights_sha, arch, dtype, path)
            return cached
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
    loaded = OnnxModel.load(path, threads, providers)
    _check_source(loaded, weights_sha, arch, dtype, path)
    return loaded


def _check_source(
    onnx_model: OnnxModel, weights_sha: str, arch: str, dtype: str | None, path: Path
) -> None:
    """The export must come from exactly these weights (the checkpoint's weights digest: LM +
    embedding tower), be of the same architecture and, when a dtype was asked for, be in it."""
    source = onnx_model.manifest.get("source", {}).get("weights_sha256")
    if source != weights_sha or onnx_model.architecture != arch:
        raise ValueError(
            f"{path} was exported from different weights (sha256 {str(source)[:12]}..., "
            f"{onnx_model.architecture}) than the checkpoint being loaded "
            f"({weights_sha[:12]}..., {arch})"
        )
    if dtype is not None and onnx_model.dtype != dtype:
        raise ValueError(
            f"{path} holds a {onnx_model.dtype} export, not the requested dtype {dtype!r}"
        )


register_backend("onnx", OnnxBackend)
