"""`OnnxDecoder`: incremental decoding of one sequence with an exported decode.onnx graph.

The state inputs are read from the graph itself and the outputs after the logits are fed back
to them, so it needs no knowledge of the architecture: zeros, batch 1, growing axes empty; or,
when the graph has control inputs (fastlm/ort/format.py: the Transformer's in-place KV caches),
the cache axis sized for the whole generation, the outputs bound to the inputs' own buffers,
and the controls filled from the decoder's length. Such a decoder can also `verify` drafted
tokens (their logits from one run) and `rewind` to drop the rejected ones (fastlm/speculative.py).
onnxruntime and numpy only.
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

# runs of up to this many tokens go to the single-threaded step session: measured, a 256-token
# Transformer prompt prefilled in 6.1 ms on one thread and 7.8 ms on two, 1,000 tokens in 33 ms
# and 18 ms
SMALL_RUN = 256


class OnnxDecoder:
    """Incremental decoding of one sequence with decode.onnx; logits are float32 (V,). The state
    inputs are read from the graph (module docstring)."""

    # prompt tokens per decode.onnx run: one run over a 355k-token LSTM prompt took +2.1 GB
    # (fp32; +9.6 GB for 4M characters on int8) and a 4,900-token Transformer one 1.75 GB
    prefill_chunk = SCORE_CHUNK

    def __init__(
        self,
        session,
        max_len: int | None,
        max_seq: int | None = None,
        step_session=None,
        rows_independent: bool = True,
    ):
        """max_seq: tokens the generation may reach (prompt + new), the size of an in-place
        cache (default: max_len). step_session: the same graph on one thread, for runs of up
        to SMALL_RUN tokens (steps, verifications, short prompts) when state stays bound: a
        token's ~40 small ops gain nothing from a thread pool, and a spinning pool steals the
        core from whatever runs next (default: `session` for every run). rows_independent:
        whether a run computes each token's row as a run of that token alone would (fp32,
        fp16); False for an int8 graph, which quantises a run's activations with one scale, so
        checking guessed tokens would change the logits of the real one (no `verify`)."""
        self.session, self.max_len = session, max_len
        self.step_session = step_session or session
        self.rows_independent = rows_independent
        names = [i.name for i in session.get_inputs()]
        # an in-place cache: its axis holds the whole generation, allocated once
        self.in_place = "total_sequence_length" in names
        # the graph returns the logits of the positions it is given (B, K, V), not the last (B, V)
        self.picks = "logits_index" in names
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
        # copied out to numpy and back: an in-place cache is its own input and output; a
        # fixed-size state (the LSTM's h, c) alternates between two sets of buffers; a growing
        # past is bound anew each run. Kept bindings (one per session) take prompt chunks and
        # verifications; single-token steps run on bindings that bind nothing per step.
        # Measured, 16 + 128 greedy tokens, one thread: Transformer 0.202 -> 0.142 ms/token
        # (a growing past bound per run -> in place), LSTM 0.091 -> 0.082 (per run -> kept)
        self.bound = session.get_providers()[0] == "CPUExecutionProvider"
        fixed = all(
            isinstance(d, int) or d == "batch"
            for i in session.get_inputs()
            if i.name in self.state
            for d in i.shape
        )
        self.binding = self.spare = self.steps = None
        if self.bound and (self.in_place or fixed):
            self.state = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in self.state.items()}
            if not self.in_place:  # the outputs go to a second set, swapped after each run
                self.spare = {
                    k: ort.OrtValue.ortvalue_from_numpy(np.zeros_like(v.numpy()))
                    for k, v in self.state.items()
                }
            first = session.get_outputs()[0]
            shape = (1, 1, first.shape[-1]) if self.picks else (1, first.shape[-1])
            self.logits = ort.OrtValue.ortvalue_from_numpy(
                np.zeros(shape, _NUMPY_TYPES[first.type])
            )
            self.wide: dict[int, ort.OrtValue] = {}  # a verification's logits, by positions
            # one kept binding per session: large runs on `session`, small on `step_session`
            self.kept = {s: s.io_binding() for s in (session, self.step_session)}
            self.binding = self.kept[session]
            self.state_bound: set = set()  # the sessions whose kept binding has the state
            for binding in self.kept.values():
                binding.bind_ortvalue_output(self.outputs[0], self.logits)
            self.first_set = self.state
            self.steps = self._step_bindings()
        self.length = 0  # tokens consumed so far

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """The prompt, `prefill_chunk` tokens per run (the state carries it on)."""
        ids = list(ids)
        self._check_room(ids)  # before the first chunk runs
        for start in range(0, len(ids), self.prefill_chunk):
            logits = self._run(ids[start : start + self.prefill_chunk])
        return logits

    def step(self, token: int) -> np.ndarray:
        if self.steps is None or self.binding is None:
            return self._run([int(token)])
        self._check_room([token])
        ins = self.step_inputs  # the buffers the step bindings read
        ins["input_ids"][0, 0] = token
        if self.in_place:
            ins["position_ids"][0, 0] = ins["seqlens_k"][0] = self.length
            ins["total_sequence_length"][...] = self.length + 1
        binding = self.steps[0] if self.state is self.first_set else self.steps[-1]
        with allocation_errors("a decode step (1, 1)"):
            self.step_session.run_with_iobinding(binding)
        if self.spare is not None:
            self.state, self.spare = self.spare, self.state
        self.length += 1
        return self.logits.numpy().reshape(-1).copy()  # the buffer takes the next step's logits

    @property
    def verifies(self) -> bool:
        """Whether `verify` and `rewind` work: an in-place cache whose graph picks positions,
        with rows computed independently."""
        return self.in_place and self.picks and self.rows_independent

    def verify(self, ids: Sequence[int]) -> np.ndarray:
        """Consume `ids` in one run and return the logits after each of them (len(ids), V):
        row i is what `step` would have returned for ids[i]. The cost of one run over all
        the ids is what makes checking drafted tokens cheaper than stepping them."""
        if not self.verifies:
            raise NotImplementedError("this decode graph cannot verify drafted tokens")
        return self._run([int(t) for t in ids], every=True)

    def rewind(self, length: int) -> None:
        """Forget every token after the first `length` (the next run overwrites their cache
        entries, and no query reads past its own position)."""
        if not self.in_place:
            raise NotImplementedError("only an in-place cache can rewind")
        if not 1 <= length <= self.length:
            raise ValueError(f"cannot rewind to {length} tokens ({self.length} consumed)")
        self.length = length

    def room(self) -> int:
        """Tokens that can still be consumed (the context, and an in-place cache's size)."""
        limits = [n - self.length for n in (self.max_len, self.capacity) if n is not None]
        return min(limits, default=1 << 30)

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

    def _run(self, ids: list[int], every: bool = False) -> np.ndarray:
        """The logits after the last id (V,), or after every id (T, V)."""
        self._check_room(ids)
        feed = {"input_ids": np.asarray([ids], dtype=np.int64)}
        if self.in_place:
            end = self.length + len(ids)
            feed["position_ids"] = np.arange(self.length, end, dtype=np.int64)[None]
            feed["seqlens_k"] = np.array([end - 1], dtype=np.int32)
            feed["total_sequence_length"] = np.array(end, dtype=np.int32)
        if self.picks:
            first = 0 if every else len(ids) - 1
            feed["logits_index"] = np.arange(first, len(ids), dtype=np.int64)
        if self.binding is not None:  # the bound buffers take the new state
            logits = self._run_kept(feed, len(feed.get("logits_index", ())))
        elif self.bound:
            logits, *state = self._run_bound(feed)
            self.state = dict(zip(self.state, state))
        else:
            logits, *state = run_session(self.session, {**feed, **self.state}, "a decode step")
            self.state = dict(zip(self.state, state))
        self.length += len(ids)
        return logits[0] if every or not self.picks else logits[0, -1]

    def _step_bindings(self) -> list:
        """Bindings for one-token steps whose every input and output is a buffer of this
        decoder: a step writes the token and its controls into `step_inputs` and runs, binding
        nothing. One binding for an in-place cache; two for a fixed-size state, each reading
        one set of state buffers and writing the other. Measured, 16 + 128 greedy tokens, one
        thread, interleaved against the kept binding: Transformer 0.135 -> 0.127 ms/token,
        LSTM 0.079 -> 0.075."""
        inputs = {"input_ids": np.zeros((1, 1), np.int64)}
        if self.in_place:
            inputs["position_ids"] = np.zeros((1, 1), np.int64)
            inputs["seqlens_k"] = np.zeros(1, np.int32)
            inputs["total_sequence_length"] = np.zeros((), np.int32)
        if self.picks:
            inputs["logits_index"] = np.zeros(1, np.int64)  # the step's one position
        self.step_inputs = inputs  # the OrtValues below share these arrays' memory
        values = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in inputs.items()}
        if self.spare is None:
            pairs = [(self.state, self.state)]
        else:
            pairs = [(self.state, self.spare), (self.spare, self.state)]
        bindings = []
        for read, write in pairs:
            binding = self.step_session.io_binding()
            for name, value in values.items():
                binding.bind_ortvalue_input(name, value)
            for (name, value), out in zip(read.items(), self.outputs[1:]):
                binding.bind_ortvalue_input(name, value)
                binding.bind_ortvalue_output(out, write[name])
            binding.bind_ortvalue_output(self.outputs[0], self.logits)
            bindings.append(binding)
        return bindings

    def _bind_state(self, binding) -> None:
        """The state as a kept binding's inputs, and as its outputs (in place) or the spare set
        (fixed-size state)."""
        outputs = self.state if self.spare is None else self.spare
        for (name, value), out in zip(self.state.items(), self.outputs[1:]):
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(out, outputs[name])

    def _run_kept(self, feed: dict, picked: int) -> np.ndarray:
        """One run on a kept binding (the step session's for up to SMALL_RUN tokens): the
        state, ids and controls bound, then (fixed-size state) the two sets of state buffers
        swapped. picked: the positions whose logits the graph returns; more than one (a
        verification) go to a buffer of their own."""
        small = feed["input_ids"].size <= SMALL_RUN
        session = self.step_session if small else self.session
        binding = self.kept[session]
        if self.spare is not None or session not in self.state_bound:
            self._bind_state(binding)  # a fixed-size state: steps may have swapped the sets
            self.state_bound.add(session)
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        if picked > 1:
            wide = self.wide.get(picked)
            if wide is None:
                shape = (1, picked, self.logits.shape()[-1])
                wide = self.wide[picked] = ort.OrtValue.ortvalue_from_numpy(
                    np.zeros(shape, self.logits.numpy().dtype)
                )
            binding.bind_ortvalue_output(self.outputs[0], wide)
        shrink = feed["input_ids"].size > SHRINK_ABOVE_TOKENS
        try:
            with allocation_errors(f"a decode step {feed['input_ids'].shape}"):
                session.run_with_iobinding(binding, RUN_OPTIONS if shrink else None)
        finally:
            if picked > 1:  # the binding's next one-position run writes the usual buffer
                binding.bind_ortvalue_output(self.outputs[0], self.logits)
        if picked > 1:
            logits = wide.numpy().copy()  # the buffer takes the next verification's logits
        else:
            logits = self.logits.numpy().copy()  # the buffer takes the next run's logits
        if self.spare is not None:
            self.state, self.spare = self.spare, self.state
        return logits

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
