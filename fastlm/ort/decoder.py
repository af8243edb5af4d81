"""`OnnxDecoder`: incremental decoding of one sequence with an exported decode.onnx graph.

The state inputs are read from the graph itself and the outputs after the logits are fed back
to them, so it needs no knowledge of the architecture: zeros, batch 1, growing axes empty; or,
when the graph has control inputs (fastlm/ort/format.py: the Transformer's in-place KV caches),
the cache axis sized for the whole generation, the outputs bound to the inputs' own buffers,
and the controls filled from the decoder's length. onnxruntime and numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from fastlm.backend import SCORE_CHUNK
from fastlm.ort.format import CONTROL_INPUTS
from fastlm.ort.sessions import (
    RUN_OPTIONS,
    SHRINK_ABOVE_TOKENS,
    allocation_errors,
    run_session,
)


class OnnxDecoder:
    """Incremental decoding of one sequence with decode.onnx; logits are float32 (V,). The state
    inputs are read from the graph (module docstring)."""

    # prompt tokens per decode.onnx run: one run over a 355k-token LSTM prompt took +2.1 GB
    # (fp32; +9.6 GB for 4M characters on int8) and a 4,900-token Transformer one 1.75 GB
    prefill_chunk = SCORE_CHUNK

    def __init__(self, session, max_len: int | None, max_seq: int | None = None):
        """max_seq: tokens the generation may reach (prompt + new), the size of an in-place
        cache (default: max_len)."""
        self.session, self.max_len = session, max_len
        names = [i.name for i in session.get_inputs()]
        # an in-place cache: its axis holds the whole generation, allocated once
        self.in_place = "total_sequence_length" in names
        self.capacity = (max_seq or max_len) if self.in_place else None
        if self.in_place and not self.capacity:
            raise ValueError("an in-place decode cache needs max_seq or a context length")
        self.state = {
            i.name: np.zeros(_start_shape(i.shape, self.capacity), _NUMPY_TYPES[i.type])
            for i in session.get_inputs()
            if i.name != "input_ids" and i.name not in CONTROL_INPUTS
        }
        self.outputs = [o.name for o in session.get_outputs()]
        # On CPU the state stays in ONNX Runtime's own buffers between runs (IO binding), never
        # copied out to numpy and back: an in-place cache is bound once as input and output; a
        # fixed-size state (the LSTM's h, c) runs on one binding kept for the generation,
        # alternating between two sets of buffers; a growing past is bound anew each run.
        # Measured, 16 + 128 greedy tokens, one thread: Transformer 0.202 -> 0.142 ms/token
        # (a growing past bound per run -> in place), LSTM 0.091 -> 0.082 (per run -> kept)
        self.bound = session.get_providers()[0] == "CPUExecutionProvider"
        fixed = all(
            isinstance(d, int) or d == "batch"
            for i in session.get_inputs()
            if i.name in self.state
            for d in i.shape
        )
        self.binding = self.spare = None
        if self.bound and (self.in_place or fixed):
            self.state = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in self.state.items()}
            self.binding = session.io_binding()
            if not self.in_place:  # the outputs go to a second set, swapped after each run
                self.spare = {
                    k: ort.OrtValue.ortvalue_from_numpy(np.zeros_like(v.numpy()))
                    for k, v in self.state.items()
                }
            self._bind_state()
            first = session.get_outputs()[0]
            shape = (1, first.shape[-1])
            self.logits = ort.OrtValue.ortvalue_from_numpy(
                np.zeros(shape, _NUMPY_TYPES[first.type])
            )
            self.binding.bind_ortvalue_output(self.outputs[0], self.logits)
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
        if self.capacity is not None and self.length + len(ids) > self.capacity:
            raise ValueError(
                f"the sequence would exceed the decoder's cache ({self.capacity} tokens: "
                "its max_seq)"
            )

    def _run(self, ids: list[int]) -> np.ndarray:
        self._check_room(ids)
        feed = {"input_ids": np.asarray([ids], dtype=np.int64)}
        if self.in_place:
            end = self.length + len(ids)
            feed["position_ids"] = np.arange(self.length, end, dtype=np.int64)[None]
            feed["seqlens_k"] = np.array([end - 1], dtype=np.int32)
            feed["total_sequence_length"] = np.array(end, dtype=np.int32)
        if self.binding is not None:  # the bound buffers take the new state
            logits = self._run_kept(feed)
        elif self.bound:
            logits, *state = self._run_bound(feed)
            self.state = dict(zip(self.state, state))
        else:
            logits, *state = run_session(self.session, {**feed, **self.state}, "a decode step")
            self.state = dict(zip(self.state, state))
        self.length += len(ids)
        return logits[0]

    def _bind_state(self) -> None:
        """The state as the kept binding's inputs, and as its outputs (in place) or the spare
        set (fixed-size state)."""
        outputs = self.state if self.spare is None else self.spare
        for (name, value), out in zip(self.state.items(), self.outputs[1:]):
            self.binding.bind_ortvalue_input(name, value)
            self.binding.bind_ortvalue_output(out, outputs[name])

    def _run_kept(self, feed: dict) -> np.ndarray:
        """One run on the kept binding: the ids and controls bound anew, then (fixed-size
        state) the two sets of state buffers swapped."""
        for name, value in feed.items():
            self.binding.bind_cpu_input(name, value)
        shrink = feed["input_ids"].size > SHRINK_ABOVE_TOKENS
        with allocation_errors(f"a decode step {feed['input_ids'].shape}"):
            self.session.run_with_iobinding(self.binding, RUN_OPTIONS if shrink else None)
        if self.spare is not None:
            self.state, self.spare = self.spare, self.state
            self._bind_state()
        return self.logits.numpy().copy()  # the buffer takes the next run's logits

    def _run_bound(self, feed: dict) -> list:
        """One run with a growing state bound: [logits (numpy), *state (OrtValues)]."""
        binding = self.session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        for name, value in self.state.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:  # the zeros of the first run
                binding.bind_cpu_input(name, value)
        for name in self.outputs:
            binding.bind_output(name, "cpu")
        shape = feed["input_ids"].shape
        shrink = feed["input_ids"].size > SHRINK_ABOVE_TOKENS
        with allocation_errors(f"a decode step {shape}"):
            self.session.run_with_iobinding(binding, RUN_OPTIONS if shrink else None)
        logits, *state = binding.get_outputs()
        return [logits.numpy(), *state]


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _start_shape(dims, capacity: int | None) -> tuple[int, ...]:
    """A state input's starting shape: the batch axis 1, other named axes 0 (a growing state)
    or `capacity` (an in-place cache)."""
    other = capacity or 0
    return tuple(d if isinstance(d, int) else (1 if d == "batch" else other) for d in dims)
