"""SimpleLSTM_LM: embedding -> 2-layer unidirectional LSTM -> linear logits (SPEC.md)."""

from __future__ import annotations

import torch
from torch import nn

from fastlm.models.config import LSTMConfig
from fastlm.models.layers import (
    check_input_ids,
    check_sampling,
    eval_mode,
    make_generator,
    sample_next,
)

LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (num_layers, B, hidden_dim)


class SimpleLSTM_LM(nn.Module):
    """Next-token LSTM language model, ~2.1M parameters at vocab 2000.

    forward(input_ids (B, T), hidden=None) -> (logits (B, T, V), (h, c)); pass the returned state
    back in to continue a sequence (stateful generation and streaming).
    """

    def __init__(
        self,
        vocab_size: int = 2000,
        embedding_dim: int = 256,
        hidden_dim: int = 256,
        num_layers: int = 2,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.config = LSTMConfig(vocab_size, embedding_dim, hidden_dim, num_layers, dropout)
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        # Unidirectional on purpose: a bidirectional LSTM would let a next-token model see the
        # future (SPEC "fixed").
        self.lstm = nn.LSTM(
            embedding_dim,
            hidden_dim,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.fc = nn.Linear(hidden_dim, vocab_size)
        self._init_weights()

    @classmethod
    def from_config(cls, config: LSTMConfig) -> SimpleLSTM_LM:
        return cls(
            config.vocab_size,
            config.embedding_dim,
            config.hidden_dim,
            config.num_layers,
            config.dropout,
        )

    def _init_weights(self) -> None:
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.fc.weight, -0.1, 0.1)
        nn.init.zeros_(self.fc.bias)

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> LSTMState:
        """Zero (h, c), each (num_layers, batch_size, hidden_dim)."""
        shape = (self.config.num_layers, batch_size, self.config.hidden_dim)
        return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(
            shape, device=device, dtype=dtype
        )

    def hidden_states(
        self, input_ids: torch.Tensor, hidden: LSTMState | None = None
    ) -> tuple[torch.Tensor, LSTMState]:
        """Top-layer states (B, T, hidden_dim) and the final (h, c). No input checks."""
        x = self.embedding(input_ids)  # (B, T, E)
        out, state = self.lstm(x, hidden)  # (B, T, H)
        return out, state

    def forward(
        self, input_ids: torch.Tensor, hidden: LSTMState | None = None
    ) -> tuple[torch.Tensor, LSTMState]:
        check_input_ids(input_ids, self.config.vocab_size, None)
        if hidden is not None:
            _check_state(hidden, input_ids.shape[0], self.config)
        out, state = self.hidden_states(input_ids, hidden)
        return self.fc(out), state

    @torch.inference_mode()
    def generate(
        self,
        start_tokens: list[int],
        max_length: int = 100,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> list[int]:
        """Continue until the sequence holds `max_length` tokens (start tokens included).

        The (h, c) state is carried, so each new token costs one step. temperature 0 (the
        default) = greedy; > 0 samples.
        Runs with dropout off (eval mode) and restores the model's mode afterwards.
        """
        check_sampling(temperature, top_k, None)
        ids = _check_start_tokens(start_tokens, max_length)
        device = self.fc.weight.device
        gen = make_generator(seed, device)
        with eval_mode(self):
            logits, state = self(torch.tensor([ids], device=device))
            while len(ids) < max_length:
                nxt = sample_next(logits[:, -1], temperature, top_k, None, gen)
                ids.append(int(nxt))
                logits, state = self(nxt.view(1, 1), state)
        return ids


def _check_state(hidden, batch: int, cfg: LSTMConfig) -> None:
    if not (isinstance(hidden, (tuple, list)) and len(hidden) == 2):
        raise TypeError("hidden must be a tuple (h, c)")
    want = (cfg.num_layers, batch, cfg.hidden_dim)
    for name, t in zip(("h", "c"), hidden):
        if tuple(t.shape) != want:
            raise ValueError(f"hidden state {name} must have shape {want}, got {tuple(t.shape)}")


def _check_start_tokens(start_tokens, max_length: int) -> list[int]:
    if isinstance(start_tokens, torch.Tensor):
        start_tokens = start_tokens.flatten().tolist()
    ids = [int(t) for t in start_tokens]
    if not ids:
        raise ValueError("start_tokens is empty: give at least one token id")
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    return ids
