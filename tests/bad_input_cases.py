"""The bad-input cases: (id, call, expect) triples that test_bad_input_matrix.py runs on every
model x backend (eager, compile, onnx, the torch-free runtime).

`call(target)` runs one API call on `target.model` (a LanguageModel); `expect` is
`Raises(type, fragment)` (the exception's type must be exactly `type`, its message must hold
`fragment`) or a function checking the result. Cases marked `compute` run the network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

D = 256  # embedding size of both models


@dataclass(frozen=True)
class Raises:
    type: type[BaseException]
    fragment: str


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[Any], Any]
    expect: Raises | Callable[[Any, Any], None]
    compute: bool = False  # runs the network (skipped on the compile target)


def _bad_values(prefix: str, call, name: str, variants) -> list[Case]:
    """Cases "<prefix>-<suffix>": call(target, value) raises exactly `error`, naming `name`.
    variants: (suffix, value, error) triples."""
    return [
        Case(f"{prefix}-{suffix}", lambda t, v=value: call(t, v), Raises(error, name))
        for suffix, value, error in variants
    ]


# ---------------------------------------------------------------------- result checks
def _shape(*shape: int):
    def check(out, t):
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == shape

    return check


def _zero_vector(out, t):
    _shape(D)(out, t)
    assert not out.any() and np.isfinite(out).all()


def _unit_rows(n: int):
    def check(out, t):
        _shape(n, D)(out, t)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)

    return check


def _unit_vector(out, t):
    _shape(D)(out, t)
    assert abs(float(np.linalg.norm(out)) - 1.0) < 1e-5


def _zero_then_unit(out, t):
    _shape(2, D)(out, t)
    assert not out[0].any()
    assert abs(float(np.linalg.norm(out[1])) - 1.0) < 1e-5


def _same_rows(out, t):
    _unit_rows(3)(out, t)
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)


def _text(out, t):
    assert isinstance(out, str)


def _ids(max_len: int):
    def check(out, t):
        assert isinstance(out, list) and len(out) <= max_len
        assert all(type(i) is int and 0 <= i < 2000 for i in out)

    return check


def _equals_greedy(prompt, **kw):
    """A tiny positive temperature samples the argmax: the greedy continuation, not a crash."""

    def check(out, t):
        assert out == t.model.generate(prompt, max_new_tokens=3, temperature=0, **kw)

    return check


def _empty_score(out, t):
    assert out.log_likelihood == 0.0 and out.perplexity == 1.0 and out.bits_per_byte == 0.0
    assert out.tokens == 0 and out.bytes == 0


def _real_score(out, t):
    assert out.tokens >= 1 and out.log_likelihood < 0
    assert math.isfinite(out.perplexity) and out.perplexity > 1 and out.bits_per_byte > 0


def _empty_list(out, t):
    assert out == []


def _hits(n: int):
    def check(out, t):
        assert [sorted(h) for h in out] == [["corpus_id", "score", "text"]] * n
        scores = [h["score"] for h in out]
        assert scores == sorted(scores, reverse=True)

    return check


def _prompt_only(out, t):
    assert out == [1, 2]


def _stream_of_str(out, t):
    pieces = list(out)
    assert all(isinstance(p, str) for p in pieces) and len(pieces) <= 2


def _tensor(out, t):
    assert isinstance(out, torch.Tensor) and out.shape == (2, D) and out.dtype == torch.float32


# ---------------------------------------------------------------------- the cases
S = "\ud800"  # a lone surrogate: not encodable as UTF-8

# embed
EMBED_CASES = [
    Case("embed-empty-list", lambda t: t.model.embed([]), _shape(0, D)),
    Case("embed-empty-str", lambda t: t.model.embed(""), _zero_vector),
    Case("embed-empty-unnormalised", lambda t: t.model.embed("", normalize=False), _zero_vector),
    Case("embed-empty-and-text", lambda t: t.model.embed(["", "a"]), _zero_then_unit, True),
    Case("embed-whitespace", lambda t: t.model.embed(" \n\t"), _unit_vector, True),
    Case("embed-nul-char", lambda t: t.model.embed("\x00"), _unit_vector, True),
    Case("embed-emoji", lambda t: t.model.embed(["🤖🤖"]), _unit_rows(1), True),
    Case("embed-special-as-text", lambda t: t.model.embed(["<|endoftext|>"]), _unit_rows(1), True),
    Case("embed-max-length-1", lambda t: t.model.embed("abc", max_length=1), _unit_vector, True),
    Case(
        "embed-same-text-3x", lambda t: t.model.embed(["a b"] * 3, batch_size=2), _same_rows, True
    ),
    Case("embed-non-str-item", lambda t: t.model.embed(["ok", 3]), Raises(TypeError, "texts[1]")),
    Case("embed-none-item", lambda t: t.model.embed([None]), Raises(TypeError, "texts[0]")),
    Case("embed-bytes-item", lambda t: t.model.embed([b"x"]), Raises(TypeError, "texts[0]")),
    Case("embed-int", lambda t: t.model.embed(42), Raises(TypeError, "list of str")),
    Case("embed-iterator", lambda t: t.model.embed(iter(["x"])), Raises(TypeError, "list of str")),
    Case("embed-set", lambda t: t.model.embed({"x"}), Raises(TypeError, "list of str")),
    Case("embed-ndarray", lambda t: t.model.embed(np.array(["x"])), Raises(TypeError, "list")),
    Case("embed-surrogate", lambda t: t.model.embed(S), Raises(ValueError, "UTF-8")),
    Case("embed-surrogate-item", lambda t: t.model.embed(["a", S]), Raises(ValueError, "[1]")),
    *_bad_values(
        "embed-batch",
        lambda t, v: t.model.embed(["x"], batch_size=v),
        "batch_size",
        [
            ("0", 0, ValueError),
            ("neg", -1, ValueError),
            ("bool", True, TypeError),
            ("float", 2.0, TypeError),
            ("str", "8", TypeError),
        ],
    ),
    *_bad_values(
        "embed-maxlen",
        lambda t, v: t.model.embed(["x"], max_length=v),
        "max_length",
        [
            ("0", 0, ValueError),
            ("neg", -3, ValueError),
            ("bool", True, TypeError),
            ("float", 1.5, TypeError),
        ],
    ),
]

# generate
GENERATE_CASES = [
    *_bad_values(
        "gen-new",
        lambda t, v: t.model.generate("hi", max_new_tokens=v),
        "max_new_tokens",
        [
            ("0", 0, ValueError),
            ("neg", -5, ValueError),
            ("bool", True, TypeError),
            ("float", 2.0, TypeError),
            ("str", "3", TypeError),
        ],
    ),
    *_bad_values(
        "gen-temp",
        lambda t, v: t.model.generate("hi", temperature=v),
        "temperature",
        [
            ("neg", -1, ValueError),
            ("nan", math.nan, ValueError),
            ("inf", math.inf, ValueError),
            ("str", "hot", TypeError),
            ("bool", True, TypeError),
        ],
    ),
    Case(
        "gen-topk-0",
        lambda t: t.model.generate("hi", temperature=1, top_k=0),
        Raises(ValueError, "top_k"),
    ),
    Case("gen-topk-bool", lambda t: t.model.generate("hi", top_k=True), Raises(TypeError, "top_k")),
    Case("gen-topk-float", lambda t: t.model.generate("hi", top_k=1.5), Raises(TypeError, "top_k")),
    *_bad_values(
        "gen-seed",
        lambda t, v: t.model.generate("hi", temperature=1, seed=v),
        "seed",
        [
            ("float", 1.5, TypeError),
            ("neg", -1, ValueError),
            ("str", "7", TypeError),
        ],
    ),
    Case("gen-prompt-int", lambda t: t.model.generate(123), Raises(TypeError, "token ids")),
    Case("gen-prompt-surrogate", lambda t: t.model.generate(S), Raises(ValueError, "UTF-8")),
    Case(
        "gen-ids-vocab",
        lambda t: t.model.generate([1, 2000]),
        Raises(ValueError, "outside the voc"),
    ),
    Case(
        "gen-ids-neg",
        lambda t: t.model.generate([-1]),
        Raises(ValueError, "outside the vocabulary"),
    ),
    Case("gen-ids-empty", lambda t: t.model.generate([]), Raises(ValueError, "empty")),
    Case("gen-ids-float", lambda t: t.model.generate([1.5]), Raises(TypeError, "token ids[0]")),
    Case("gen-ids-bool", lambda t: t.model.generate([1, True]), Raises(TypeError, "token ids[1]")),
    Case(
        "gen-ids-str-item", lambda t: t.model.generate([1, "2"]), Raises(TypeError, "token ids[1]")
    ),
    Case(
        "gen-temp-1e-300",
        lambda t: t.model.generate("Once", max_new_tokens=3, temperature=1e-300),
        _equals_greedy("Once"),
        compute=True,
    ),
    Case(
        "gen-temp-subnormal",
        lambda t: t.model.generate([1, 40], max_new_tokens=3, temperature=5e-324, seed=0),
        _equals_greedy([1, 40]),
        compute=True,
    ),
    Case(
        "gen-topk-huge",
        lambda t: t.model.generate([1, 40], max_new_tokens=2, temperature=1.0, top_k=10**9, seed=3),
        _ids(2),
        compute=True,
    ),
    Case(
        "gen-ids-ndarray",
        lambda t: t.model.generate(np.array([1, 40]), max_new_tokens=2, temperature=0),
        _ids(2),
        compute=True,
    ),
    Case(
        "gen-greedy-text",
        lambda t: t.model.generate("a", max_new_tokens=2, temperature=0),
        _text,
        True,
    ),
]


LONG = "a " * 6000  # > 5000 tokens: beyond the Transformer's position table
# generate's top_p, stop and stream; score; rank; tensors
MORE_CASES = [
    Case("gen-topp-0", lambda t: t.model.generate("hi", top_p=0), Raises(ValueError, "top_p")),
    Case("gen-topp-big", lambda t: t.model.generate("hi", top_p=1.5), Raises(ValueError, "top_p")),
    Case(
        "gen-topp-nan",
        lambda t: t.model.generate("hi", top_p=math.nan),
        Raises(ValueError, "top_p"),
    ),
    Case("gen-topp-str", lambda t: t.model.generate("hi", top_p="x"), Raises(TypeError, "top_p")),
    Case(
        "gen-stop-empty", lambda t: t.model.generate("hi", stop=""), Raises(ValueError, "stop[0]")
    ),
    Case(
        "gen-stop-ids", lambda t: t.model.generate([1], stop="a"), Raises(TypeError, "stop strings")
    ),
    Case(
        "gen-both", lambda t: t.model.generate("x", start_tokens=[1]), Raises(TypeError, "either")
    ),
    Case("gen-nothing", lambda t: t.model.generate(), Raises(TypeError, "needs a prompt")),
    Case(
        "gen-maxlen-0",
        lambda t: t.model.generate(start_tokens=[1, 2], max_length=0),
        Raises(ValueError, "max_length"),
    ),
    Case(
        "gen-maxlen-bool",
        lambda t: t.model.generate(start_tokens=[1, 2], max_length=True),
        Raises(TypeError, "max_length"),
    ),
    Case(
        "gen-maxlen-prompt",
        lambda t: t.model.generate(start_tokens=[1, 2], max_length=2),
        _prompt_only,
    ),
    Case(
        "gen-stream",
        lambda t: t.model.generate("a", max_new_tokens=2, temperature=0, stream=True),
        _stream_of_str,
        compute=True,
    ),
    Case("score-empty-list", lambda t: t.model.score([]), _empty_list),
    Case("score-empty-str", lambda t: t.model.score(""), _empty_score),
    Case("score-whitespace", lambda t: t.model.score(" "), _real_score, compute=True),
    Case(
        "score-batch-neg",
        lambda t: t.model.score(["a b"], batch_size=-1),
        Raises(ValueError, "batch_size"),
    ),
    Case(
        "score-batch-0",
        lambda t: t.model.score(["a b"], batch_size=0),
        Raises(ValueError, "batch_size"),
    ),
    Case(
        "score-batch-bool",
        lambda t: t.model.score(["a"], batch_size=True),
        Raises(TypeError, "batch_size"),
    ),
    Case(
        "score-batch-float",
        lambda t: t.model.score(["a"], batch_size=2.5),
        Raises(TypeError, "batch_size"),
    ),
    Case("score-non-str", lambda t: t.model.score([3]), Raises(TypeError, "texts[0]")),
    Case("score-iterator", lambda t: t.model.score(iter(["x"])), Raises(TypeError, "list of str")),
    Case("score-surrogate", lambda t: t.model.score(S), Raises(ValueError, "UTF-8")),
    Case("rank-no-docs", lambda t: t.model.rank("q", []), _empty_list),
    Case("rank-topk-0", lambda t: t.model.rank("q", ["a"], top_k=0), Raises(ValueError, "top_k")),
    Case(
        "rank-topk-bool", lambda t: t.model.rank("q", ["a"], top_k=True), Raises(TypeError, "top_k")
    ),
    Case("rank-query-int", lambda t: t.model.rank(3, ["a"]), Raises(TypeError, "query")),
    Case("rank-doc-int", lambda t: t.model.rank("q", ["a", 2]), Raises(TypeError, "texts[1]")),
    Case("rank-topk-big", lambda t: t.model.rank("q", ["a", "b"], top_k=5), _hits(2), compute=True),
    Case(
        "embed-tensor",
        lambda t: t.model.embed(["a", ""], convert_to_tensor=True),
        _tensor,
        compute=True,
    ),
]
# Architecture-specific: only the Transformer has a position table.
POSITION_TABLE_CASES = [
    Case("score-too-long", lambda t: t.model.score(LONG), Raises(ValueError, "scores at most")),
    Case(
        "gen-too-long",
        lambda t: t.model.generate([5] * 4990),
        Raises(ValueError, "exceeds the context"),
    ),
]


def cases_for(arch: str, backend: str) -> list[Case]:
    cases = EMBED_CASES + GENERATE_CASES + MORE_CASES
    cases += POSITION_TABLE_CASES if arch == "transformer" else []
    if backend == "compile":
        cases = [c for c in cases if not c.compute]
    return cases
