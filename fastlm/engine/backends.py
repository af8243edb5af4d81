"""The backend seam: every way of running a model implements `Backend`.

A backend takes padded numpy batches and returns numpy results, so the user-facing
`LanguageModel` (batching, sorting, validation, sampling loop) is written once for all of them.
Backends are registered by name; "onnx" and "triton" register themselves from their modules.

Padding note: both models are causal and batches are right-padded, so pad tokens never influence
the states of real tokens; backends need no key-padding mask, only masked pooling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from fastlm.checkpoint import Checkpoint

SCORE_CHUNK = 1024  # time steps per scoring chunk: bounds logits (and LSTM activation) memory


class Decoder(Protocol):
    """Incremental decoding for one sequence (batch 1). Logits are float32 torch (V,) on CPU."""

    def prefill(self, ids: list[int]) -> torch.Tensor: ...

    def step(self, token: int) -> torch.Tensor: ...


class Backend:
    """Runs one loaded checkpoint. Subclasses override the three methods below."""

    name = "base"

    def __init__(self, checkpoint: Checkpoint, device: torch.device, threads: int | None):
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.device = device

    def embed_batch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, T) int64 ids + mask -> (B, D) float32 output of the checkpoint's embedding tower
        (models/embedder.py: pooled over real tokens, projected), not normalised."""
        raise NotImplementedError

    def nll_batch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, T) -> (B,) float64 summed NLL (nats) of tokens 1..len-1 given their prefixes."""
        raise NotImplementedError

    def new_decoder(self, max_seq: int) -> Decoder:
        """A decoder able to hold `max_seq` tokens (prompt + generated)."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"backend": self.name, "device": str(self.device)}


class TorchBackend(Backend):
    """Eager PyTorch under inference_mode: the reference every other backend is tested against."""

    name = "eager"

    def __init__(self, checkpoint: Checkpoint, device: torch.device, threads: int | None):
        super().__init__(checkpoint, device, threads)
        if threads:
            torch.set_num_threads(threads)
        self.model = checkpoint.model.to(device).eval()
        self.embedder = checkpoint.embedder.to(device).eval()
        self._hidden: Callable = self.model.hidden_states
        self._step = None

    def _states(self, ids: torch.Tensor) -> torch.Tensor:
        out = self._hidden(ids)
        return out[0] if isinstance(out, tuple) else out  # LSTM returns (states, (h, c))

    def embed_batch(self, input_ids, attention_mask):
        with torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(self.device)
            mask = torch.from_numpy(attention_mask).to(self.device)
            return self.embedder(ids, mask).float().cpu().numpy()  # one host copy per batch

    def nll_batch(self, input_ids, attention_mask):
        return chunked_nll(self.model, input_ids, attention_mask, self.device)

    def new_decoder(self, max_seq: int) -> Decoder:
        from fastlm.engine.decoding import build_step, make_decoder

        if self._step is None:  # built once: the weights copied in step layout
            self._step = build_step(self.model)
        return make_decoder(self.model, self._step, max_seq, self.device)


def chunked_nll(model, input_ids: np.ndarray, attention_mask: np.ndarray, device) -> np.ndarray:
    """(B, T) -> (B,) float64 summed NLL, the logits made SCORE_CHUNK positions at a time.

    The LSTM also runs its recurrence chunk by chunk carrying (h, c), so memory is bounded for
    any length (a full-length pass costs ~23-39 KB per token); the Transformer's states are
    computed once (its context is bounded) and only the logits are chunked."""
    with torch.inference_mode():
        ids = torch.from_numpy(input_ids).to(device)
        mask = torch.from_numpy(attention_mask).to(device)
        inputs, targets, weights = ids[:, :-1], ids[:, 1:], mask[:, 1:]
        total = torch.zeros(ids.shape[0], dtype=torch.float64, device=device)
        for start, states in _state_chunks(model, inputs):
            stop = start + states.shape[1]
            logits = model.fc(states).float()  # (B, chunk, V)
            nll = F.cross_entropy(logits.transpose(1, 2), targets[:, start:stop], reduction="none")
            total += (nll * weights[:, start:stop]).sum(dim=1).double()
        return total.cpu().numpy()


def _state_chunks(model, inputs: torch.Tensor):
    """(start, top-layer states (B, chunk, D)) over the time axis of inputs (B, T)."""
    T = inputs.shape[1]
    if model.config.architecture == "lstm":
        state = None
        for start in range(0, T, SCORE_CHUNK):
            states, state = model.hidden_states(inputs[:, start : start + SCORE_CHUNK], state)
            yield start, states
        return
    states = model.hidden_states(inputs)
    for start in range(0, T, SCORE_CHUNK):
        yield start, states[:, start : start + SCORE_CHUNK]


_REGISTRY: dict[str, type[Backend]] = {"eager": TorchBackend}
# optional backend -> (module, extra); a missing dependency is reported with how to install it
_OPTIONAL = {
    "compile": ("fastlm.engine.compiled", None),
    "onnx": ("fastlm.engine.onnx_backend", "onnx"),
    "triton": ("fastlm.engine.triton_backend", "gpu"),
}
_MISSING: dict[str, ImportError] = {}


def register_backend(name: str, cls: type[Backend]) -> None:
    _REGISTRY[name] = cls


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backend_class(name: str) -> type[Backend]:
    _import_optional_backends()
    if name in _MISSING and name not in _REGISTRY:
        extra = _OPTIONAL[name][1]
        raise ImportError(
            f"backend {name!r} needs {_MISSING[name].name or 'a missing module'}: "
            f'pip install "fastlm[{extra}]"',
            name=_MISSING[name].name,
        )
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; available: {backend_names() + ['auto']}")
    return _REGISTRY[name]


def _import_optional_backends() -> None:
    """Optional backends register on import; a missing dependency simply leaves them out."""
    for name, (module, extra) in _OPTIONAL.items():
        try:
            __import__(module)
        except ImportError as err:
            if extra is not None:
                _MISSING[name] = err
