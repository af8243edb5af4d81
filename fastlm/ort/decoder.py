"""`OnnxDecoder`: incremental decoding of one sequence with an exported decode.onnx graph.

The state inputs are read from the graph itself (zeros, batch 1, growing axes empty) and the
outputs after the logits are fed back to them, so it needs no knowledge of the architecture.
onnxruntime and numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from fastlm.backend import SCORE_CHUNK
from fastlm.ort.sessions import (
    RUN_OPTIONS,
    SHRINK_ABOVE_TOKENS,
    allocation_errors,
    run_session,
)


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
            logits, *state = run_session(self.session, feed, "a decode step")
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
        with allocation_errors(f"a decode step {ids.shape}"):
            self.session.run_with_iobinding(binding, RUN_OPTIONS if shrink else None)
        logits, *state = binding.get_outputs()
        return [logits.numpy(), *state]


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _empty_shape(dims) -> tuple[int, ...]:
    """A state input's starting shape: the batch axis 1, other named (growing) axes 0."""
    return tuple(d if isinstance(d, int) else (1 if d == "batch" else 0) for d in dims)
