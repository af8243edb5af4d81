"""`LanguageModel.stream`, the one generation primitive: `generate` is what it yields, collected.

The shipped models (eager) check that stream and generate agree, greedy and sampled, text and
ids; a scripted backend (its decoder's logits pick a given token sequence) checks each Step's
fields exactly: the end of text, multi-byte characters, stop strings, when the model runs.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import fastlm
from fastlm.backend import Backend, ModelInfo
from fastlm.generation import Step
from fastlm.language_model import LanguageModel
from fastlm.sampling import MAX_SEED, SamplingParams
from fastlm.tokenizer import EOT_ID
from fastlm.validation import check_seed

PROMPT = "Once upon a time"
SAMPLING = [
    {},  # greedy
    {"temperature": 1.0, "seed": 3},
    {"temperature": 0.8, "top_k": 20, "top_p": 0.9, "seed": 11},
]


@pytest.fixture(scope="module", params=["lstm", "transformer"])
def model(request):
    return fastlm.load(request.param, backend="eager", device="cpu", threads=1)


@pytest.fixture(scope="module")
def tokenizer():
    return fastlm.load("lstm", backend="eager", device="cpu", threads=1).tokenizer


def texts(steps) -> str:
    return "".join(step.text for step in steps)


def tokens(steps) -> list[int]:
    """The generated ids: the end of text is a step, not a token of the continuation."""
    return [step.token_id for step in steps if step.token_id != EOT_ID]


# ----------------------------------------------------------------------------- shipped models
@pytest.mark.parametrize("opts", SAMPLING, ids=["greedy", "sampled", "top-k-top-p"])
def test_stream_and_generate_agree(model, opts):
    steps = list(model.stream(PROMPT, max_new_tokens=30, **opts))
    assert texts(steps) == model.generate(PROMPT, max_new_tokens=30, **opts)
    assert "".join(model.generate(PROMPT, max_new_tokens=30, stream=True, **opts)) == texts(steps)
    # a text prompt is its ids after <|endoftext|>: the same tokens either way
    ids = [EOT_ID, *model.tokenizer.encode(PROMPT)]
    assert tokens(steps) == model.generate(ids, max_new_tokens=30, **opts)
    id_steps = list(model.stream(ids, max_new_tokens=30, **opts))
    assert tokens(id_steps) == tokens(steps) and texts(id_steps) == texts(steps)
    assert list(model.generate(ids, max_new_tokens=30, stream=True, **opts)) == tokens(steps)
    seed = dict(start_tokens=ids, max_length=len(ids) + 30, **opts)
    assert model.generate(**seed) == ids + tokens(steps)


def test_params_and_overrides(model):
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=5)
    want = model.generate(PROMPT, max_new_tokens=12, temperature=1.0, seed=5)
    assert texts(model.stream(PROMPT, params)) == want
    overridden = model.stream(PROMPT, SamplingParams(), max_new_tokens=12, temperature=1.0, seed=5)
    assert texts(overridden) == want
    assert texts(model.stream(PROMPT, params, seed=6)) == model.generate(
        PROMPT, max_new_tokens=12, temperature=1.0, seed=6
    )
    assert params.seed == 5  # overrides make a new SamplingParams
    with pytest.raises(TypeError, match="SamplingParams"):
        model.stream(PROMPT, {"max_new_tokens": 3})
    with pytest.raises(TypeError):
        model.stream(PROMPT, max_tokens=3)  # not a field


def test_steps_end_with_length_at_max_new_tokens(model):
    steps = list(model.stream([5, 6, 7], max_new_tokens=4, logprobs=True))
    assert all(isinstance(s, Step) for s in steps)
    assert [s.finish_reason for s in steps[:-1]] == [None] * (len(steps) - 1)
    if steps[-1].token_id == EOT_ID:
        assert steps[-1].finish_reason == "stop"
    else:
        assert len(steps) == 4 and steps[-1].finish_reason == "length"
    for s in steps:
        assert type(s.token_id) is int and isinstance(s.text, str)
        assert s.logprob is not None and s.logprob <= 0 and math.isfinite(s.logprob)


def test_logprobs_only_when_asked(model):
    assert all(s.logprob is None for s in model.stream([5, 6, 7], max_new_tokens=3))
    with_logprobs = list(model.stream([5, 6, 7], max_new_tokens=3, logprobs=True))
    assert [s.token_id for s in with_logprobs] == [
        s.token_id for s in model.stream([5, 6, 7], max_new_tokens=3)
    ]
    with pytest.raises(TypeError, match="logprobs must be a bool"):
        model.stream([5, 6, 7], logprobs=1)


def test_stop_string_ends_the_stream_with_stop(model):
    full = model.generate(PROMPT, max_new_tokens=30)
    # greedy on shipped weights is deterministic: a short text means PROMPT needs changing
    assert len(full) >= 8, f"greedy continuation too short to pick a stop string: {full!r}"
    stop = full[5:8]
    steps = list(model.stream(PROMPT, max_new_tokens=30, stop=stop))
    assert steps[-1].finish_reason == "stop"
    assert all(s.finish_reason is None for s in steps[:-1])
    assert texts(steps) == full[: full.index(stop)] == model.generate(PROMPT, 30, stop=stop)


def test_the_context_is_checked_before_anything_runs(model):
    limit = model.context_length
    if limit is None:  # the LSTM: any length, so a prompt past the Transformer's context runs
        steps = list(model.stream([5] * 6_000, max_new_tokens=2))
        assert 1 <= len(steps) <= 2 and steps[-1].finish_reason is not None
        return
    with pytest.raises(ValueError, match="exceeds the context"):
        model.stream([5] * (limit - 2), max_new_tokens=3)  # raised here: no step taken
    with pytest.raises(ValueError, match="exceeds the context"):
        model.generate([5] * (limit - 2), max_new_tokens=3)
    assert len(list(model.stream([5] * (limit - 3), max_new_tokens=3))) <= 3


BAD_PARAMS = [
    ({"max_new_tokens": 0}, ValueError),
    ({"max_new_tokens": True}, TypeError),
    ({"max_new_tokens": 2.0}, TypeError),
    ({"temperature": -1}, ValueError),
    ({"temperature": math.nan}, ValueError),
    ({"temperature": "hot"}, TypeError),
    ({"top_k": 0}, ValueError),
    ({"top_k": 1.5}, TypeError),
    ({"top_p": 0}, ValueError),
    ({"top_p": 1.5}, ValueError),
    ({"seed": -1}, ValueError),
    ({"seed": 1.5}, TypeError),
    ({"stop": ""}, ValueError),
    ({"stop": ["a", 3]}, ValueError),
]


@pytest.mark.parametrize(("kwargs", "error"), BAD_PARAMS, ids=lambda v: str(v))
def test_bad_sampling_params_raise_what_generate_raises(tokenizer, kwargs, error):
    lm = LanguageModel("scripted", ScriptedBackend(tokenizer, [EOT_ID]))
    messages = []
    for call in (
        lambda: SamplingParams(**kwargs),
        lambda: dataclasses.replace(SamplingParams(), **kwargs),
        lambda: lm.stream("hi", **kwargs),
        lambda: lm.stream("hi", SamplingParams(), **kwargs),
        lambda: lm.generate("hi", **kwargs),
    ):
        with pytest.raises(error) as err:
            call()
        messages.append(str(err.value))
    assert len(set(messages)) == 1, messages
    assert lm.backend.decoders == 0


def test_sampling_params_are_checked_and_kept_in_one_form():
    p = SamplingParams(max_new_tokens=np.int64(3), temperature=1, top_p=1, seed=np.int64(2))
    assert (p.max_new_tokens, p.temperature, p.top_p, p.seed) == (3, 1.0, 1.0, 2)
    assert type(p.max_new_tokens) is int and type(p.temperature) is float
    assert SamplingParams(stop="a").stop == ("a",) and SamplingParams(stop=None).stop == ()
    assert SamplingParams() == SamplingParams(50, 0.0, None, None, None, ())
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.seed = 3
    assert check_seed(MAX_SEED) == MAX_SEED  # the server's bound is the library's
    with pytest.raises(ValueError):
        check_seed(MAX_SEED + 1)


# ----------------------------------------------------------------------------- scripted model
class ScriptedDecoder:
    """Logits that make greedy decoding pick `script[i]` at step i (the last one thereafter)."""

    def __init__(self, script: list[int], vocab_size: int):
        self.script, self.vocab_size, self.i = script, vocab_size, 0

    def _logits(self) -> np.ndarray:
        z = np.zeros(self.vocab_size, np.float32)
        z[self.script[min(self.i, len(self.script) - 1)]] = 10.0
        self.i += 1
        return z

    def prefill(self, ids: list[int]) -> np.ndarray:
        return self._logits()

    def step(self, token: int) -> np.ndarray:
        return self._logits()


class ScriptedBackend(Backend):
    name = "scripted"

    def __init__(self, tokenizer, script: list[int], context_length: int | None = None):
        self.tokenizer, self.script, self.decoders = tokenizer, script, 0
        self.info = ModelInfo("scripted", tokenizer.vocab_size, 4, context_length, 16)

    def new_decoder(self, max_seq: int) -> ScriptedDecoder:
        self.decoders += 1
        return ScriptedDecoder(self.script, self.info.vocab_size)


def scripted(tokenizer, script: list[int], context_length: int | None = None) -> LanguageModel:
    return LanguageModel("scripted", ScriptedBackend(tokenizer, script, context_length))


def test_end_of_text_is_a_last_step_with_stop(tokenizer):
    cat = tokenizer.encode(" the cat")
    lm = scripted(tokenizer, [*cat, EOT_ID])
    steps = list(lm.stream("x", max_new_tokens=10))
    assert [s.token_id for s in steps] == [*cat, EOT_ID]
    assert [s.finish_reason for s in steps] == [None] * len(cat) + ["stop"]
    assert steps[-1].text == "" and texts(steps) == " the cat" == lm.generate("x", 10)
    assert lm.generate([5], 10) == cat  # the ids forms leave the end of text out
    assert list(lm.generate([5], 10, stream=True)) == cat
    first = list(scripted(tokenizer, [EOT_ID]).stream("x"))  # ends at once: still a last step
    assert [(s.token_id, s.text, s.finish_reason) for s in first] == [(EOT_ID, "", "stop")]


def test_length_when_max_new_tokens_runs_out(tokenizer):
    cat = tokenizer.encode(" the cat")
    steps = list(scripted(tokenizer, cat).stream("x", max_new_tokens=len(cat)))
    assert [s.finish_reason for s in steps] == [None] * (len(cat) - 1) + ["length"]
    assert texts(steps) == " the cat"


def test_an_unfinished_character_is_no_text_until_it_completes(tokenizer):
    ids = tokenizer.encode("日本")  # byte tokens: each character takes several
    steps = list(scripted(tokenizer, [*ids, EOT_ID]).stream("x", max_new_tokens=20))
    assert texts(steps) == "日本"
    assert [s.text for s in steps[:-1] if s.text] == ["日", "本"]
    assert all("\ufffd" not in s.text for s in steps)
    # cut mid-character by max_new_tokens: what there is, replacement character included
    cut = list(scripted(tokenizer, ids).stream("x", max_new_tokens=len(ids) - 1))
    assert texts(cut) == tokenizer.decode(ids[:-1]) and cut[-1].finish_reason == "length"


def test_text_that_may_become_a_stop_string_is_held_back(tokenizer):
    ids = tokenizer.encode(" the cat sat")
    lm = scripted(tokenizer, [*ids, EOT_ID])
    steps = list(lm.stream("x", max_new_tokens=20, stop=["cat"]))
    assert texts(steps) == " the " and steps[-1].finish_reason == "stop"
    assert tokenizer.decode([steps[-1].token_id]).strip() in "cat"  # the token completing it
    held = list(lm.stream("x", max_new_tokens=20, stop=["zzzzzzzzzzzzzzzz"]))
    assert texts(held) == " the cat sat" and held[-1].token_id == EOT_ID
    assert held[-1].text == " the cat sat"  # all held back (shorter than the stop string)


def test_the_model_runs_only_as_steps_are_taken(tokenizer):
    lm = scripted(tokenizer, tokenizer.encode(" the cat"))
    steps = lm.stream("x", max_new_tokens=3)
    assert lm.backend.decoders == 0  # checked, not started
    next(steps)
    assert lm.backend.decoders == 1
    steps.close()
    assert lm.generate(start_tokens=[5, 6], max_length=2) == [5, 6]  # nothing to generate
    assert lm.backend.decoders == 1


def test_ids_prompts_take_no_stop_strings_and_are_checked(tokenizer):
    lm = scripted(tokenizer, [EOT_ID])
    with pytest.raises(TypeError, match="stop strings"):
        lm.stream([5], stop="a")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lm.stream([tokenizer.vocab_size])
    with pytest.raises(TypeError, match="token ids"):
        lm.stream(123)
    with pytest.raises(ValueError, match="exceeds the context"):
        scripted(tokenizer, [EOT_ID], context_length=8).stream([5] * 4, max_new_tokens=5)
