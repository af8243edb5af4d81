"""Generation, torch-free: a prompt's token ids, the sampling loop and incremental decoding, as
the `Step`s that `LanguageModel.stream` yields (and `generate` collects).

A generation ends at the model's <|endoftext|> (a last step whose token_id is EOT_ID, its
finish_reason "stop"), at a stop string (the step whose token completes it: "stop"), or after
max_new_tokens steps ("length"). Each step's text is what its token releases: complete UTF-8
only ("" while a multi-byte character is unfinished), never a piece of a stop string (text that
could still become one is held back and released by a later step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from fastlm.backend import Decoder
from fastlm.sampling import DEFAULT_MAX_NEW_TOKENS, SamplingParams, make_rng, sample_next
from fastlm.speculative import with_lookup
from fastlm.tokenizer import EOT_ID, Tokenizer
from fastlm.validation import ArgumentTypeError, ArgumentValueError, check_int, check_optional_int

STOP, LENGTH = "stop", "length"  # finish reasons (OpenAI's words)
SEED_API_NEW_TOKENS = 100  # generate(start_tokens=...) without max_length or max_new_tokens


@dataclass(frozen=True)
class Step:
    """One generated token. `text`: the text it releases (see the module docstring); `logprob`:
    its natural-log probability under the model (temperature 1, before top_k / top_p), None
    unless `SamplingParams.logprobs`;
    `finish_reason`: None but on the last step, then "stop" or "length"."""

    token_id: int
    text: str
    finish_reason: str | None = None
    logprob: float | None = None


def prompt_ids(prompt, tokenizer: Tokenizer, vocab_size: int) -> tuple[list[int], bool]:
    """(the ids the model reads, whether the prompt is text). A text is preceded by
    <|endoftext|>, the document separator the models were trained with."""
    if isinstance(prompt, str):
        return [EOT_ID, *tokenizer.encode(prompt)], True
    return check_ids(prompt, vocab_size), False


def check_context(prompt_tokens: int, new_tokens: int, limit: int | None) -> None:
    if limit is not None and prompt_tokens + new_tokens > limit:
        raise ArgumentValueError(
            f"prompt ({prompt_tokens} tokens) + {new_tokens} new tokens exceeds the context "
            f"({limit})"
        )


def resolve_request(prompt, max_new_tokens, start_tokens, max_length, vocab_size: int):
    """generate()'s prompt forms -> (prompt for stream, new tokens, whether the result starts
    with the prompt). The seed API (start_tokens, max_length) counts the prompt in
    max_length, so it may ask for no new token at all (0)."""
    if start_tokens is not None:
        if prompt is not None:
            raise ArgumentTypeError("give either prompt_or_ids or start_tokens, not both")
        ids = check_ids(start_tokens, vocab_size)
        if max_length is None:
            more = check_optional_int(max_new_tokens, "max_new_tokens") or SEED_API_NEW_TOKENS
            max_length = len(ids) + more
        if check_int(max_length, "max_length") < 1:
            raise ArgumentValueError(
                f"max_length must be a positive int, got {max_length!r}", "max_length"
            )
        return ids, max(0, max_length - len(ids)), True
    if prompt is None:
        raise ArgumentTypeError("generate() needs a prompt (str or token ids) or start_tokens")
    return prompt, DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens, False


def run(
    new_decoder: Callable[[int], Decoder],
    ids: list[int],
    params: SamplingParams,
    tokenizer: Tokenizer,
) -> Iterator[Step]:
    """The sampling loop (a generator: nothing runs, not even the decoder's allocation, until
    the first step is asked for). Arguments are checked by the caller."""
    new = params.max_new_tokens
    decoder = new_decoder(len(ids) + new)
    if params.temperature == 0:  # greedy: guessed tokens pay off (fastlm/speculative.py)
        decoder = with_lookup(decoder)
    rng = make_rng(params.seed)
    text = _IncrementalText(tokenizer, params.stop)
    logits = decoder.prefill(ids)
    for i in range(new):
        token = sample_next(logits, params.temperature, params.top_k, params.top_p, rng)
        logprob = _logprob(logits, token) if params.logprobs else None
        if token == EOT_ID:
            yield Step(token, text.flush(), STOP, logprob)
            return
        piece, stopped = text.add(token)
        if stopped:
            yield Step(token, piece, STOP, logprob)
            return
        if i + 1 == new:
            yield Step(token, piece + text.flush(), LENGTH, logprob)
            return
        yield Step(token, piece, None, logprob)
        logits = decoder.step(token)


class _IncrementalText:
    """The text of the tokens so far, after each one: releases text once it is complete UTF-8
    and can no longer be the start of a stop string, and reports a stop string reached.

    Only the tokens after the last whole character are decoded again (byte-level BPE: the text
    of a sequence cut where a character ends is the texts of its two parts, joined)."""

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str]):
        self.tokenizer, self.stops = tokenizer, list(stops)
        self.tokens: list[int] = []
        self.whole, self.decoded = "", 0  # the text of tokens[:decoded], ending a character
        self.text = ""
        self.released = 0  # characters of the text released so far
        self.hold = max((len(s) for s in self.stops), default=1) - 1

    def add(self, token: int) -> tuple[str, bool]:
        """(the text this token releases, whether a stop string was reached)."""
        self.tokens.append(token)
        tail = self.tokenizer.decode(self.tokens[self.decoded :])
        text = self.text = self.whole + tail
        if not tail.endswith("\ufffd"):  # a character may still be unfinished
            self.whole, self.decoded = text, len(self.tokens)
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            return self._release(text, min(hits)), True
        return self._release(text, len(text) - self.hold - text.endswith("\ufffd")), False

    def flush(self) -> str:
        """Whatever is still held back (the generation has ended)."""
        return self._release(self.text, len(self.text))

    def _release(self, text: str, end: int) -> str:
        if end <= self.released:
            return ""
        piece, self.released = text[self.released : end], end
        return piece


def _logprob(logits: np.ndarray, token: int) -> float:
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    top = z.max()
    return float(z[token] - top - np.log(np.exp(z - top).sum()))


def check_ids(ids, vocab_size: int) -> list[int]:
    if hasattr(ids, "reshape") and hasattr(ids, "tolist"):  # a numpy array or torch tensor
        ids = ids.reshape(-1).tolist()
    if not isinstance(ids, Sequence) or isinstance(ids, str | bytes):
        raise ArgumentTypeError(f"token ids must be a list of int, got {type(ids).__name__}")
    out = []
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, int | np.integer):
            raise ArgumentTypeError(f"token ids[{i}] must be int, got {type(t).__name__}")
        if not 0 <= t < vocab_size:
            raise ArgumentValueError(
                f"token ids[{i}] = {t} is outside the vocabulary [0, {vocab_size})"
            )
        out.append(int(t))
    if not out:
        raise ArgumentValueError("token ids are empty: give at least one token")
    return out


def is_prompt_list(value) -> bool:
    """A non-empty list/tuple of str (a list of ints is token ids)."""
    return (
        isinstance(value, list | tuple)
        and len(value) > 0
        and all(isinstance(p, str) for p in value)
    )
