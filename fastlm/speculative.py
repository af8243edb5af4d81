"""Prompt-lookup decoding: the tokens of stepping one at a time, several checked per run.

One token of a 2-3M-parameter model on a CPU costs about as much as reading its weights once
(the Transformer's step multiplies by 2.1M fp32 weights, 8.3 MB: 79 us as numpy matrix-vector
products here, its whole ONNX decode step 120 us), and a run over 4 tokens reads them once too
(152 us). So a decoder that can `verify` (fastlm/ort/decoder.py: the in-place KV cache) is
given guessed tokens to check along with the real one. The guesses are copied from the text
itself: what followed the last earlier occurrence of the current 1-3 token n-gram (prompt
lookup decoding, as `prompt_lookup_num_tokens` in Hugging Face transformers and vLLM's n-gram
speculator). Small models' greedy continuations repeat their prompt and themselves often,
which is where the guesses land.

The caller still chooses every token from the logits the model computed after the true
prefix: a run computes each of its rows as that token's own step would, up to the order of
float additions (logits within 1e-4 of stepping's, tested; the parity certificate's greedy
check decodes through this path). A guess the caller does not pick is dropped (the decoder
`rewind`s) and only costs the extra width of that one run. Decoders whose rows depend on
each other (int8 graphs quantise a run's activations with one scale) do not verify. numpy
only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Tokens guessed per run, and the longest n-gram looked up. Measured on the Transformer's
# greedy 128-token continuations (see docs/benchmarks.md): 4 guesses beat 2 and 6.
DRAFT_TOKENS = 4
MAX_NGRAM = 3


class NgramIndex:
    """The tokens so far, and where each of their 1..max_n-grams last ended: a guess is what
    followed the previous occurrence of the longest n-gram the text ends with. O(max_n) per
    token, memory O(max_n x tokens)."""

    def __init__(self, tokens: Sequence[int], max_n: int = MAX_NGRAM):
        self.max_n, self.tokens = max_n, []
        self.last: list[dict[tuple, int]] = [{} for _ in range(max_n + 1)]  # by n
        self.previous: list[int | None] = [None] * (max_n + 1)  # by n, for the current tail
        for t in tokens:
            self.add(t)

    def add(self, token: int) -> None:
        self.tokens.append(int(token))
        end = len(self.tokens) - 1
        for n in range(1, self.max_n + 1):
            if end + 1 < n:
                self.previous[n] = None
                continue
            gram = tuple(self.tokens[end + 1 - n :])
            self.previous[n] = self.last[n].get(gram)
            self.last[n][gram] = end

    def draft(self, count: int) -> list[int]:
        """Up to `count` guessed next tokens; [] when the text's last token never occurred
        before. A guess that runs into the present continues with itself (a loop of period p
        repeats)."""
        if count <= 0:
            return []
        for n in range(self.max_n, 0, -1):
            end = self.previous[n]
            if end is None:
                continue
            guess: list[int] = []
            known = len(self.tokens)
            for i in range(end + 1, end + 1 + count):
                guess.append(self.tokens[i] if i < known else guess[i - known])
            return guess
        return []


class PromptLookupDecoder:
    """A decoder with the same prefill(ids) / step(token) -> logits (V,) as the one it wraps
    (which must `verify` and `rewind`), answering some steps from logits a previous run
    already computed."""

    def __init__(self, decoder, draft_tokens: int = DRAFT_TOKENS, max_ngram: int = MAX_NGRAM):
        if not getattr(decoder, "verifies", False):
            raise TypeError(f"{type(decoder).__name__} cannot verify drafted tokens")
        self.decoder, self.draft_tokens, self.max_ngram = decoder, draft_tokens, max_ngram
        self.index: NgramIndex | None = None
        self.pending: list[tuple[int, np.ndarray]] = []  # (guessed token, logits after it)
        self.length = 0  # tokens consumed, as the caller sees them

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        logits = self.decoder.prefill(ids)
        self.index = NgramIndex(ids, self.max_ngram)
        self.pending, self.length = [], self.decoder.length
        return logits

    def step(self, token: int) -> np.ndarray:
        if self.index is None:
            raise RuntimeError("call prefill() before step()")
        token = int(token)
        if self.pending and self.pending[0][0] == token:  # a guess the caller picked
            logits = self.pending.pop(0)[1]
            self.index.add(token)
            self.length += 1
            return logits
        if self.pending:  # the guesses from here on are wrong: drop their cache entries
            self.pending = []
            self.decoder.rewind(self.length)
        self.index.add(token)
        guess = self.index.draft(min(self.draft_tokens, self.decoder.room() - 1))
        if not guess:
            logits = self.decoder.step(token)
        else:
            rows = self.decoder.verify([token, *guess])
            self.pending = list(zip(guess, rows[1:]))
            logits = rows[0]
        self.length += 1
        return logits


def with_lookup(decoder):
    """`PromptLookupDecoder(decoder)` when it can verify, else the decoder itself: what greedy
    generation runs on."""
    return PromptLookupDecoder(decoder) if getattr(decoder, "verifies", False) else decoder
