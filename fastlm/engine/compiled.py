"""The "compile" backend: torch.compile for the embedding forward and for the decode step.

- Embedding/scoring forward: compiled once with dynamic shapes. Dynamo specialises sizes 0 and
  1, so batches are padded to >= 2 rows and sequence lengths to a multiple of `bucket`, but
  never past the context (`padded_width`): a longer pad would index the position table beyond
  its end; after the first call no new shape recompiles (tests count compiled frames).
  Right-padding is exact here: the models are causal, so pad rows/columns never touch real
  tokens' states.
- Decode step: `model.step_module(static=True)` compiled with fullgraph=True on fixed shapes;
  a cache sized for the whole generation (`Architecture.decode_state_tokens`) is rounded up to a
  multiple of 256 tokens so generations of different lengths share one graph.
- Architectures whose full-sequence pass torch.compile does not speed up
  (`Architecture.compile_sequence` gives None: the LSTM, whose nn.LSTM stays one opaque op, no
  gain measured) embed and score eagerly; their decode step, written out, is compiled.

Compile time is measured apart (`compile_seconds`) and reported by describe().
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from fastlm.engine.decoding import TorchDecoder
from fastlm.engine.eager import TorchBackend

CACHE_BUCKET = 256


class CompileBackend(TorchBackend):
    name = "compile"

    def __init__(self, checkpoint, device, threads, compile_backend="inductor", bucket: int = 16):
        super().__init__(checkpoint, device, threads)
        self.bucket = bucket
        self.compile_seconds: dict[str, float] = {}
        self._seen: set = set()
        compile_sequence = self.architecture.compile_sequence
        pool = compile_sequence(self._pool_eager, backend=compile_backend)
        self._pool = pool if pool is not None else self._pool_eager
        self._nll = compile_sequence(self._nll_eager, backend=compile_backend)  # None: eager
        step = self.model.step_module(static=True)
        self._step = torch.compile(step, fullgraph=True, dynamic=False, backend=compile_backend)

    # eager bodies that torch.compile traces
    def _pool_eager(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.embedder(ids, mask)

    def _nll_eager(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.model.fc(self.model.hidden_states(ids[:, :-1])[0]).float()
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        return (nll * mask[:, 1:]).sum(dim=1)

    def _padded(self, input_ids: np.ndarray, mask: np.ndarray, extra: int = 0):
        """Pad to >= 2 rows and `padded_width` columns."""
        B, T = input_ids.shape
        rows = max(B, 2)
        width = padded_width(T, self.bucket, extra, self.config.max_len)
        ids = np.zeros((rows, width), np.int64)
        m = np.zeros((rows, width), np.int64)
        ids[:B, :T], m[:B, :T] = input_ids, mask
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(m).to(self.device), B

    def _timed(self, key: str, fn, *args):
        if key in self._seen:
            return fn(*args)
        start = time.perf_counter()
        out = fn(*args)
        self.compile_seconds[key] = time.perf_counter() - start
        self._seen.add(key)
        return out

    def embed_batch(self, input_ids, attention_mask):
        with self.scope(), torch.inference_mode():
            ids, mask, B = self._padded(input_ids, attention_mask)
            return self._timed("embed", self._pool, ids, mask)[:B].cpu().numpy()

    def nll_batch(self, input_ids, attention_mask):
        if self._nll is None:
            return super().nll_batch(input_ids, attention_mask)  # eager, chunked (see __doc__)
        with self.scope(), torch.inference_mode():
            # +1 so the shifted (T-1) length is the bucketed one
            ids, mask, B = self._padded(input_ids, attention_mask, extra=1)
            return self._timed("score", self._nll, ids, mask)[:B].double().cpu().numpy()

    def new_decoder(self, max_seq: int):
        limit = self.config.max_len or max_seq
        cache_len = min(limit, -(-max_seq // CACHE_BUCKET) * CACHE_BUCKET)
        tokens = self.architecture.decode_state_tokens(cache_len)
        key = "decode" if tokens is None else f"decode-{tokens}"
        step = _TimedStep(self, key)
        return TorchDecoder(self.model, step, cache_len, self.device, self.scope)

    def details(self) -> dict:
        return {**super().details(), "compile_seconds": dict(self.compile_seconds)}


def padded_width(T: int, bucket: int, extra: int, limit: int | None) -> int:
    """T rounded up to (a multiple of bucket) + extra, the model running width - extra
    positions, capped so those stay within `limit` (the context; None: unbounded). The cap is
    one more shape for dynamo, but a dynamic one: it does not recompile."""
    width = -(-(T - extra) // bucket) * bucket + extra
    if limit is not None:
        width = min(width, max(T, limit + extra))
    return width


class _TimedStep:
    """Calls the compiled step, timing the first call per cache size as compile time."""

    def __init__(self, backend: CompileBackend, key: str):
        self.backend, self.key = backend, key

    def __call__(self, *args):
        return self.backend._timed(self.key, self.backend._step, *args)
