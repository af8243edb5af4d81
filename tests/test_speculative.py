"""Prompt-lookup decoding (fastlm/speculative.py): the n-gram guesses, and that a decoder which
checks them gives exactly the logits and tokens of stepping one token at a time, on a model
double whose logits depend on the whole prefix and on the Transformer's exported decode graph."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import fastlm
import fastlm.runtime
from fastlm import generation
from fastlm.ort.decoder import OnnxDecoder
from fastlm.speculative import NgramIndex, PromptLookupDecoder, with_lookup

V = 7


# ----------------------------------------------------------------------------- the guesses
def test_a_guess_is_what_followed_the_previous_occurrence_of_the_longest_ngram():
    index = NgramIndex([1, 2, 3, 4, 9, 2, 3, 5, 8, 6, 3])
    # the text ends with "3": as 1-gram it last came before 5; "6 3" and "8 6 3" never did
    assert index.draft(3) == [5, 8, 6]
    index.add(5)  # "6 3 5" is new, but "3 5" came before 8, 6
    assert index.draft(2) == [8, 6]


def test_the_longest_match_wins_over_a_more_recent_shorter_one():
    # "1 2" last came before 7, but "9 1 2" came before 4: the 3-gram decides
    index = NgramIndex([9, 1, 2, 4, 0, 1, 2, 7, 9, 1, 2])
    assert index.draft(1) == [4]


def test_no_guess_for_a_new_token_or_no_room():
    assert NgramIndex([1, 2, 3]).draft(4) == []
    assert NgramIndex([]).draft(4) == []
    assert NgramIndex([1, 2, 1]).draft(0) == []


def test_a_guess_that_reaches_the_present_repeats_the_loop():
    assert NgramIndex([5, 5]).draft(4) == [5, 5, 5, 5]  # period 1
    assert NgramIndex([1, 2, 1, 2]).draft(5) == [1, 2, 1, 2, 1]  # period 2


# ----------------------------------------------------------------------------- a double
def _logits(prefix: list[int]) -> np.ndarray:
    """Logits that depend on every token of the prefix (so a wrong state shows), with a strong
    pull towards repeating the token two back (so guesses are often right)."""
    seed = int.from_bytes(hashlib.sha256(bytes(prefix)).digest()[:4], "little")
    z = np.random.default_rng(seed).normal(size=V).astype(np.float32)
    if len(prefix) >= 2:
        z[prefix[-2]] += 2.0
    return z


class PrefixDecoder:
    """A decoder whose state is the token list itself; counts runs and the tokens they read."""

    verifies = True

    def __init__(self, capacity: int = 1000):
        self.tokens: list[int] = []
        self.capacity, self.runs, self.read = capacity, 0, 0

    @property
    def length(self) -> int:
        return len(self.tokens)

    def room(self) -> int:
        return self.capacity - self.length

    def _consume(self, ids) -> list[np.ndarray]:
        assert len(ids) <= self.room(), "a run past the capacity"
        self.runs, self.read = self.runs + 1, self.read + len(ids)
        out = []
        for t in ids:
            self.tokens.append(int(t))
            out.append(_logits(self.tokens))
        return out

    def prefill(self, ids):
        return self._consume(ids)[-1]

    def step(self, token):
        return self._consume([token])[-1]

    def verify(self, ids):
        return np.stack(self._consume(ids))

    def rewind(self, length):
        assert 1 <= length <= self.length
        del self.tokens[length:]


def _greedy(decoder, prompt, new) -> tuple[list[int], list[np.ndarray]]:
    logits, out, seen = decoder.prefill(prompt), [], []
    for i in range(new):
        seen.append(logits)
        out.append(int(logits.argmax()))
        if i + 1 < new:
            logits = decoder.step(out[-1])
    return out, seen


@pytest.mark.parametrize("seed", range(8))
def test_lookup_gives_the_logits_of_stepping(seed):
    prompt = np.random.default_rng(seed).integers(0, V, 12).tolist()
    want, want_logits = _greedy(PrefixDecoder(), prompt, 60)
    inner = PrefixDecoder()
    got, got_logits = _greedy(PromptLookupDecoder(inner), prompt, 60)
    assert got == want
    for a, b in zip(got_logits, want_logits):
        np.testing.assert_array_equal(a, b)
    assert inner.tokens[: len(prompt) + 59] == prompt + want[:59]
    assert inner.runs < 1 + 59  # some steps were answered from an earlier run


def test_any_token_choice_is_exact_not_only_argmax():
    """A caller that picks other tokens than the guesses (a sampler) still gets the logits of
    its own prefix: a wrong guess is dropped and rewound."""
    rng = np.random.default_rng(3)
    prompt = [1, 2, 3, 1, 2, 3, 1, 2]
    plain, wrapped = PrefixDecoder(), PromptLookupDecoder(PrefixDecoder())
    a, b = plain.prefill(prompt), wrapped.prefill(prompt)
    for _ in range(40):
        np.testing.assert_array_equal(a, b)
        token = int(rng.integers(0, V))
        a, b = plain.step(token), wrapped.step(token)
    np.testing.assert_array_equal(a, b)


def test_guesses_never_run_past_the_decoder_capacity():
    prompt = [4, 4, 4, 4]
    inner = PrefixDecoder(capacity=len(prompt) + 30)
    out, _ = _greedy(PromptLookupDecoder(inner), prompt, 31)  # fills it exactly
    assert out == _greedy(PrefixDecoder(), prompt, 31)[0]


def test_only_a_decoder_that_verifies_is_wrapped():
    class Plain:
        verifies = False

    plain = Plain()
    assert with_lookup(plain) is plain
    assert isinstance(with_lookup(PrefixDecoder()), PromptLookupDecoder)
    with pytest.raises(TypeError, match="cannot verify"):
        PromptLookupDecoder(plain)
    with pytest.raises(RuntimeError, match="prefill"):
        PromptLookupDecoder(PrefixDecoder()).step(1)


# ----------------------------------------------------------------------------- ONNX Runtime
@pytest.fixture(scope="module")
def transformer(export_of):
    return fastlm.runtime.load(export_of("transformer", "fp32"), threads=1)


def test_verify_returns_each_positions_step_logits(transformer):
    checked, stepped = (transformer.backend.new_decoder(30) for _ in range(2))
    assert checked.verifies
    checked.prefill([5, 6, 7])
    stepped.prefill([5, 6, 7])
    rows = checked.verify([8, 9, 10, 11])
    assert rows.shape == (4, transformer.info.vocab_size) and checked.length == 7
    for row, token in zip(rows, [8, 9, 10, 11]):
        np.testing.assert_allclose(row, stepped.step(token), atol=1e-4, rtol=0)


def test_rewind_forgets_the_dropped_tokens(transformer):
    fresh, rewound = (transformer.backend.new_decoder(30) for _ in range(2))
    fresh.prefill([5, 6, 7, 8])
    rewound.prefill([5, 6, 7, 8])
    rewound.verify([40, 41, 42])  # guesses that turn out wrong
    rewound.rewind(4)
    np.testing.assert_allclose(rewound.step(9), fresh.step(9), atol=1e-4, rtol=0)
    np.testing.assert_allclose(rewound.step(10), fresh.step(10), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="cannot rewind"):
        rewound.rewind(7)
    with pytest.raises(ValueError, match="cannot rewind"):
        rewound.rewind(0)


def test_the_lstm_decoder_does_not_verify(export_of):
    dec = fastlm.runtime.load(export_of("lstm", "fp32"), threads=1).backend.new_decoder(20)
    assert not dec.verifies and with_lookup(dec) is dec
    dec.prefill([4, 5])
    with pytest.raises(NotImplementedError):
        dec.verify([6, 7])
    with pytest.raises(NotImplementedError):
        dec.rewind(1)


@pytest.mark.parametrize("prompt", [list(range(3, 19)), [7, 8, 9] * 6, [30] * 10])
def test_greedy_generation_checks_guesses_and_keeps_eagers_tokens(
    transformer, small_checkpoints, monkeypatch, prompt
):
    eager = fastlm.load(small_checkpoints["transformer"], backend="eager", threads=1)
    want = eager.generate(prompt, max_new_tokens=40)
    calls = []
    inner = OnnxDecoder.verify
    monkeypatch.setattr(OnnxDecoder, "verify", lambda s, ids: calls.append(ids) or inner(s, ids))
    assert transformer.generate(prompt, max_new_tokens=40) == want
    assert calls, "no guess was checked"


def test_stop_strings_and_sampling_see_the_same_steps(transformer, monkeypatch):
    """generate()'s ends (a stop string inside a run of accepted guesses, max_new_tokens) and
    its steps are those of plain stepping; sampled generation does not guess."""
    prompt = "the cat sat on the mat, the cat sat on the mat, the cat"
    plain_steps = list(transformer.stream(prompt, max_new_tokens=30))
    text = "".join(s.text for s in plain_steps)
    stop = text[len(text) // 2 : len(text) // 2 + 3] or "x"
    with_stop = list(transformer.stream(prompt, max_new_tokens=30, stop=[stop]))
    monkeypatch.setattr(generation, "with_lookup", lambda d: d)
    assert list(transformer.stream(prompt, max_new_tokens=30)) == plain_steps
    assert list(transformer.stream(prompt, max_new_tokens=30, stop=[stop])) == with_stop
    wrapped = []
    monkeypatch.setattr(generation, "with_lookup", lambda d: wrapped.append(d) or d)
    transformer.generate(prompt, max_new_tokens=5, temperature=0.8, seed=1)
    assert not wrapped


def test_an_int8_decoder_steps_one_token_at_a_time(export_of):
    """int8 quantises a run's activations with one scale: checking guesses would change the
    real token's logits, so its decoder does not verify."""
    dec = fastlm.runtime.load(export_of("transformer", "int8"), threads=1).backend.new_decoder(9)
    assert dec.in_place and dec.picks and not dec.verifies
    assert with_lookup(dec) is dec


def test_two_threads_long_prompt_then_steps_and_guesses(export_of, small_checkpoints):
    """With more than one thread the decoder runs a one-thread copy of the session for steps
    and guesses, and the model's for prompt chunks over SMALL_RUN tokens: both write the same
    cache."""
    runtime = fastlm.runtime.load(export_of("transformer", "fp32"), threads=2)
    dec = runtime.backend.new_decoder(400)
    assert dec.step_session is not dec.session
    eager = fastlm.load(small_checkpoints["transformer"], backend="eager", threads=1)
    prompt = ([5, 6, 7, 8, 9] * 60)[:300]  # one chunk of 300 > SMALL_RUN, then guesses
    assert runtime.generate(prompt, max_new_tokens=40) == eager.generate(prompt, max_new_tokens=40)
    stepped = eager.backend.new_decoder(400)
    np.testing.assert_allclose(dec.prefill(prompt), stepped.prefill(prompt), atol=1e-4, rtol=0)
    rows = dec.verify([10, 11])
    np.testing.assert_allclose(rows, np.stack([stepped.step(10), stepped.step(11)]), atol=1e-4)
