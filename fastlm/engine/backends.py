"""The torch backends' base (`TorchBackend`, the eager reference) and the backend registry.

Every backend implements fastlm/backend.py's `Backend` (numpy in, numpy out); what a model
computes is asked of its architecture (fastlm/models/), never tested here. Backends are
registered by name; "compile", "onnx" and "triton" register themselves from their modules.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fastlm.backend import SCORE_CHUNK, Backend, ModelInfo
from fastlm.checkpoint import Checkpoint
from fastlm.engine.decoding import TorchDecoder
from fastlm.models import architecture_of
from fastlm.threads import torch_threads


class TorchBackend(Backend):
    """Eager PyTorch under inference_mode: the reference every other backend is tested against.

    threads: torch intra-op threads for this backend's calls only (`torch_threads`)."""

    name = "eager"

    def __init__(self, checkpoint: Checkpoint, device: torch.device, threads: int | None):
        self.checkpoint, self.config, self.device = checkpoint, checkpoint.config, device
        self.threads = threads
        self.architecture = architecture_of(checkpoint.config)
        self.info = ModelInfo.from_facts(
            self.architecture.facts(checkpoint.config, checkpoint.embedder.dim)
        )
        self.tokenizer = checkpoint.tokenizer
        self.lexical = checkpoint.lexical
        self.model = checkpoint.model.to(device).eval()
        self.embedder = checkpoint.embedder.to(device).eval()
        self._step = None

    def scope(self):
        """The context every call into torch runs in (this backend's thread count)."""
        return torch_threads(self.threads)

    def embed_batch(self, input_ids, attention_mask):
        with self.scope(), torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(self.device)
            mask = torch.from_numpy(attention_mask).to(self.device)
            return self._embed(ids, mask).float().cpu().numpy()  # one host copy per batch

    def _embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.embedder(ids, mask)

    def nll_batch(self, input_ids, attention_mask):
        with self.scope():
            return chunked_nll(
                self.model, self.architecture.carries_state, input_ids, attention_mask
            )

    def new_decoder(self, max_seq: int) -> TorchDecoder:
        if self._step is None:  # built once: the weights copied in step layout
            self._step = self.model.step_module()
        return TorchDecoder(self.model, self._step, max_seq, self.device, self.scope)

    def details(self) -> dict:
        return {"backend": self.name, "device": str(self.device), "threads": self.threads}


def chunked_nll(model, carries_state: bool, input_ids: np.ndarray, attention_mask: np.ndarray):
    """(B, T) -> (B,) float64 summed NLL, the logits made SCORE_CHUNK positions at a time.

    A model whose state carries a text on (the LSTM) runs its states chunk by chunk too, so
    memory is bounded for any length (a full-length pass costs ~23-39 KB per token); otherwise
    the states are computed once (the context is bounded) and only the logits are chunked."""
    device = model.fc.weight.device
    with torch.inference_mode():
        ids = torch.from_numpy(input_ids).to(device)
        mask = torch.from_numpy(attention_mask).to(device)
        inputs, targets, weights = ids[:, :-1], ids[:, 1:], mask[:, 1:]
        total = torch.zeros(ids.shape[0], dtype=torch.float64, device=device)
        for start, states in _state_chunks(model, carries_state, inputs):
            stop = start + states.shape[1]
            logits = model.fc(states).float()  # (B, chunk, V)
            nll = F.cross_entropy(logits.transpose(1, 2), targets[:, start:stop], reduction="none")
            total += (nll * weights[:, start:stop]).sum(dim=1).double()
        return total.cpu().numpy()


def _state_chunks(model, carries_state: bool, inputs: torch.Tensor):
    """(start, top-layer states (B, chunk, D)) over the time axis of inputs (B, T)."""
    T = inputs.shape[1]
    if carries_state:
        state = None
        for start in range(0, T, SCORE_CHUNK):
            states, state = model.hidden_states(inputs[:, start : start + SCORE_CHUNK], state)
            yield start, states
        return
    states = model.hidden_states(inputs)[0]
    for start in range(0, T, SCORE_CHUNK):
        yield start, states[:, start : start + SCORE_CHUNK]


_REGISTRY: dict[str, type[Backend]] = {"eager": TorchBackend}
# optional backend -> (module, extra); a missing dependency is reported with how to install it
_OPTIONAL = {
    "compile": ("fastlm.engine.compiled", None),
    "onnx": ("fastlm.engine.onnx_backend", "onnx"),
    "triton": ("fastlm.engine.triton_backend", None),  # imports no triton: checks it on use
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
