"""Pieces shared by both language models: input checks, pooling, sampling, positions."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from fastlm.validation import check_float, check_optional_int, check_seed


def check_input_ids(input_ids: torch.Tensor, vocab_size: int, max_len: int | None) -> None:
    """Raise a clear error for ids a model cannot take. input_ids: (B, T) integer tensor."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be 2-D (batch, seq), got shape {tuple(input_ids.shape)}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must be int64 or int32, got {input_ids.dtype}")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids has no tokens (seq length 0)")
    if max_len is not None and input_ids.shape[1] > max_len:
        raise ValueError(
            f"sequence of {input_ids.shape[1]} tokens is longer than the model's position table "
            f"({max_len}); truncate or window the input"
        )
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """(max_len, dim) table: PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...)."""
    pos = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)
    return table


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of hidden (B, T, D) over real tokens (mask (B, T), 1 = real) -> (B, D) float32.

    A row with no real tokens pools to zeros (no NaN).
    """
    hidden = hidden.float()
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    total = (hidden * mask).sum(dim=1)
    count = mask.sum(dim=1).clamp_min(1.0)
    return total / count


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick next tokens from logits (B, V) -> (B,) int64. temperature 0 means greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    # Shift so the best logit is 0 before dividing, in float64: a tiny temperature (1e-300)
    # then sends the others to -inf (greedy in the limit) instead of every logit to +/-inf and
    # the softmax to NaN.
    logits = logits.double()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the mass before it already reaches top_p (the first always stays)
        drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Validate sampling parameters with messages a user can act on (fastlm.validation rules:
    TypeError for a wrong type, ValueError for a value out of range or not finite)."""
    if isinstance(temperature, numbers.Real) and not isinstance(temperature, bool):
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    check_float(temperature, "temperature", min=0.0)
    check_optional_int(top_k, "top_k", min=1)
    if top_p is not None:
        check_float(top_p, "top_p", min=0.0, max=1.0, min_open=True)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Dropout off inside the block, the caller's train/eval mode restored after it.

    generate() runs under it: greedy decoding and `seed` must not depend on whether the model
    was left in training mode (a freshly built model is).
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    if check_seed(seed) is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen
