"""Pieces every language model shares: input checks, pooling, positions, the reference generate."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from fastlm.sampling import check_sampling, make_rng, sample_next


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


class NextTokenLogits(torch.nn.Module):
    """Any model of the protocol as input_ids (B, T) -> logits (B, T, V): what training wraps
    in DDP (the seed models' own forward differ by SPEC: the LSTM also returns its state)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.fc(self.model.hidden_states(input_ids)[0])


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


@torch.inference_mode()
def reference_generate(
    model: torch.nn.Module,
    start_tokens: Sequence[int] | torch.Tensor,
    max_length: int,
    temperature: float,
    top_k: int | None,
    seed: int | None,
) -> list[int]:
    """The models' own `generate` (the SPEC seed API): continue until the sequence holds
    `max_length` tokens, start tokens included, through the plain `hidden_states(ids, state)`
    protocol and fastlm's one sampler. The reference the fast engine is tested against.
    Runs with dropout off and restores the model's mode afterwards."""
    check_sampling(temperature, top_k, None)
    ids = _check_start_tokens(start_tokens, max_length)
    limit = model.config.max_len
    if limit is not None and max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds the context ({limit})")
    device = model.fc.weight.device
    rng = make_rng(seed)
    with eval_mode(model):
        state = model.new_state(1, max(max_length, len(ids)), device)
        x = torch.tensor([ids], device=device)
        check_input_ids(x, model.config.vocab_size, limit)
        while len(ids) < max_length:
            states, state = model.hidden_states(x, state)
            logits = model.fc(states[0, -1]).float().cpu().numpy()
            ids.append(sample_next(logits, temperature, top_k, None, rng))
            x = torch.tensor([[ids[-1]]], device=device)
    return ids


def _check_start_tokens(start_tokens, max_length: int) -> list[int]:
    if isinstance(start_tokens, torch.Tensor):
        start_tokens = start_tokens.flatten().tolist()
    ids = [int(t) for t in start_tokens]
    if not ids:
        raise ValueError("start_tokens is empty: give at least one token id")
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    return ids
