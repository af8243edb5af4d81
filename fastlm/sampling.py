"""The one sampler: next-token choice from logits, in numpy, for every backend and the models'
own `generate`. Greedy (temperature 0) is argmax, so every backend gives the same greedy text;
sampling draws from numpy's PCG64 generator seeded by `seed`.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from fastlm.validation import check_float, check_optional_int, check_seed


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Validate sampling parameters (fastlm.validation rules: TypeError for a wrong type,
    ValueError for a value out of range or not finite)."""
    if isinstance(temperature, numbers.Real) and not isinstance(temperature, bool):
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    check_float(temperature, "temperature", min=0.0)
    check_optional_int(top_k, "top_k", min=1)
    if top_p is not None:
        check_float(top_p, "top_p", min=0.0, max=1.0, min_open=True)


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
