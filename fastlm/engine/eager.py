"""The torch backends' base: `TorchBackend`, eager PyTorch, the reference every other backend
is tested against.

Every backend implements fastlm/backend.py's `Backend` (numpy in, numpy out); what a model
computes is asked of its architecture (fastlm/models/), never tested here.
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
            return chunked_nll(self.model, self.architecture, input_ids, attention_mask)

    def new_decoder(self, max_seq: int) -> TorchDecoder:
        if self._step is None:  # built once: the weights copied in step layout
            self._step = self.model.step_module()
        return TorchDecoder(self.model, self._step, max_seq, self.device, self.scope)

    def details(self) -> dict:
        return {"backend": self.name, "device": str(self.device), "threads": self.threads}


def chunked_nll(model, architecture, input_ids: np.ndarray, attention_mask: np.ndarray):
    """(B, T) -> (B,) float64 summed NLL, the logits made SCORE_CHUNK positions at a time; the
    states come chunk by chunk as the architecture makes them (`Architecture.state_chunks`)."""
    device = model.fc.weight.device
    with torch.inference_mode():
        ids = torch.from_numpy(input_ids).to(device)
        mask = torch.from_numpy(attention_mask).to(device)
        inputs, targets, weights = ids[:, :-1], ids[:, 1:], mask[:, 1:]
        total = torch.zeros(ids.shape[0], dtype=torch.float64, device=device)
        for start, states in architecture.state_chunks(model, inputs, SCORE_CHUNK):
            stop = start + states.shape[1]
            logits = model.fc(states).float()  # (B, chunk, V)
            nll = F.cross_entropy(logits.transpose(1, 2), targets[:, start:stop], reduction="none")
            total += (nll * weights[:, start:stop]).sum(dim=1).double()
        return total.cpu().numpy()
