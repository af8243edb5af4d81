"""`TorchDecoder`: batch-1 incremental decoding for every torch backend and architecture.

The model's plain `hidden_states(ids, state)` fills a fresh state with the prompt, at most
`prefill_chunk` tokens per call (the state carries the prompt on, so a prompt of any length
prefills in bounded memory: a 355k-token LSTM prompt in one pass took +2.8 GB); then the
architecture's step module (`model.step_module()`: weights pre-laid out for one token, and for
the Transformer a static KV cache sized once, gpt-fast style) adds one token per call. Single-
token decoding on a CPU is bound by per-op overhead and by reading the weights, not by FLOPs,
which is what the step modules are written for.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from torch import nn

from fastlm.backend import SCORE_CHUNK


class TorchDecoder:
    """prefill(ids) then step(token) ...; each returns the next-token logits (V,) float32 numpy.
    The state belongs to this decoder, so concurrent generations never share one."""

    # prompt tokens per hidden_states call: bounds activations (and the Transformer's attention
    # scores, chunk x prompt) the way scoring's chunks do
    prefill_chunk = SCORE_CHUNK

    def __init__(
        self,
        model: nn.Module,
        step: Callable,
        max_seq: int,
        device: torch.device,
        scope: Callable[[], AbstractContextManager] = nullcontext,
    ):
        self.model, self._step, self.max_seq, self.device = model, step, max_seq, device
        self.scope = scope
        self.state = None
        self.length = 0  # tokens consumed

    def prefill(self, ids: list[int]) -> np.ndarray:
        if not ids:
            raise ValueError("no tokens to prefill")
        if len(ids) > self.max_seq:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds the decoder ({self.max_seq})")
        with self.scope(), torch.inference_mode():
            state = self.model.new_state(1, self.max_seq, self.device)
            for start in range(0, len(ids), self.prefill_chunk):
                x = torch.tensor([ids[start : start + self.prefill_chunk]], device=self.device)
                states, state = self.model.hidden_states(x, state)  # (1, chunk, D)
            self.state, self.length = state, len(ids)
            return self.model.fc(states[0, -1]).float().cpu().numpy()

    def step(self, token: int) -> np.ndarray:
        if self.length == 0:
            raise RuntimeError("call prefill() before step()")
        if self.length >= self.max_seq:
            raise ValueError(f"the generation reached the decoder's size ({self.max_seq})")
        with self.scope(), torch.inference_mode():
            tok = torch.tensor([token], device=self.device)
            logits, self.state = self._step(tok, self.state)
            self.length += 1
            return logits[0].float().cpu().numpy()
