"""The one sampler: next-token choice from logits, in numpy, for every backend and the models'
own `generate`. Greedy (temperature 0) is argmax, so every backend gives the same greedy text;
sampling draws from numpy's PCG64 generator seeded by `seed`.

`SamplingParams` holds the options of one generation (`LanguageModel.stream` / `generate`),
checked once when it is made; the server's request models declare the same bounds.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fastlm.validation import (
    ArgumentTypeError,
    ArgumentValueError,
    check_float,
    check_optional_int,
    check_positive_int,
    check_seed,
)

DEFAULT_MAX_NEW_TOKENS = 50
MIN_TOP_K = 1
TOP_P_RANGE = (0.0, 1.0)  # top_p in (0, 1]: 0 would keep no token
MAX_SEED = 2**63 - 1  # check_seed's bound: seeds are ints in [0, MAX_SEED]


@dataclass(frozen=True)
class SamplingParams:
    """How to continue a prompt: greedy (temperature 0, the default) or sampled.

    Checked on construction (and by `dataclasses.replace`) with fastlm.validation's rules:
    TypeError for a wrong type, ValueError for a value out of range. `stop` takes a str or a
    sequence of str and is kept as a tuple."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_k: int | None = None  # sample among the k most likely tokens
    top_p: float | None = None  # ... and the smallest set whose probability reaches top_p
    seed: int | None = None  # None: fresh entropy
    stop: tuple[str, ...] = ()  # stop strings (text prompts): the text ends before the first
    # each Step's logprob: a log-softmax over the vocabulary per token, so only when asked
    logprobs: bool = False

    def __post_init__(self) -> None:
        checked = {"max_new_tokens": check_positive_int(self.max_new_tokens, "max_new_tokens")}
        check_sampling(self.temperature, self.top_k, self.top_p)
        if not isinstance(self.logprobs, bool):
            raise ArgumentTypeError(
                f"logprobs must be a bool, got {type(self.logprobs).__name__}", "logprobs"
            )
        checked |= {
            "temperature": float(self.temperature),
            "top_k": None if self.top_k is None else int(self.top_k),
            "top_p": None if self.top_p is None else float(self.top_p),
            "seed": check_seed(self.seed),
            "stop": check_stop(self.stop),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


def check_stop(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    """Stop strings as a tuple: None, one str or a sequence of non-empty str."""
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    for i, s in enumerate(stops):
        if not isinstance(s, str) or not s:
            raise ArgumentValueError(f"stop[{i}] must be a non-empty str")
    return stops


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Validate sampling parameters (fastlm.validation rules: TypeError for a wrong type,
    ValueError for a value out of range or not finite)."""
    if isinstance(temperature, numbers.Real) and not isinstance(temperature, bool):
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ArgumentValueError(
                f"temperature must be >= 0 (0 = greedy), got {temperature!r}", "temperature"
            )
    check_float(temperature, "temperature", min=0.0)
    check_optional_int(top_k, "top_k", min=MIN_TOP_K)
    if top_p is not None:
        check_float(top_p, "top_p", min=TOP_P_RANGE[0], max=TOP_P_RANGE[1], min_open=True)


def make_rng(seed: int | None) -> np.random.Generator:
    """numpy's generator for `seed` (None: fresh entropy)."""
    return np.random.default_rng(check_seed(seed))


def sample_next(
    logits: np.ndarray,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: np.random.Generator | None = None,
) -> int:
    """One token id from logits (V,): argmax when temperature is 0, else a softmax sample
    restricted to the top_k tokens and to the smallest set whose mass reaches top_p."""
    logits = np.asarray(logits).reshape(-1)
    if temperature == 0:
        return int(np.argmax(logits))
    # Shift so the best logit is 0 before dividing, in float64: a tiny temperature (1e-300)
    # then sends the others to -inf (greedy in the limit) instead of every logit to +/-inf.
    z = logits.astype(np.float64)
    with np.errstate(over="ignore"):
        z = (z - z.max()) / temperature
    if top_k is not None and top_k < z.shape[0]:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]  # mass of the tokens ranked above each one
        p[order[before >= top_p]] = 0.0  # the most likely token always stays
        p /= p.sum()
    rng = rng if rng is not None else np.random.default_rng()
    return int(rng.choice(p.shape[0], p=p))
