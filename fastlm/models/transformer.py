"""SimpleTransformer_LM: causal post-norm Transformer encoder LM (SPEC.md).

The encoder layer is written out (not nn.TransformerEncoderLayer) so that torch.compile and the
ONNX exporter see every op (nn's inference "fast path" is one opaque kernel), and so that the
decode path can use a static KV cache. Parameter count matches nn.TransformerEncoderLayer's.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fastlm.models.config import TransformerConfig
from fastlm.models.layers import (
    check_input_ids,
    check_sampling,
    eval_mode,
    make_generator,
    sample_next,
    sinusoidal_table,
)


class KVCache(NamedTuple):
    """Static cache for one layer: k, v (B, NH, max_seq, head_dim), sized once (gpt-fast style).

    A tuple of tensors (not a module) so torch.compile treats it as plain inputs."""

    k: torch.Tensor
    v: torch.Tensor

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, NH, T, D) at positions pos (T,); return the whole cache."""
        self.k.index_copy_(2, pos, k)
        self.v.index_copy_(2, pos, v)
        return self.k, self.v


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float):
        super().__init__()
        self.nhead = nhead
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, pos=None, mask=None):
        """x (B, T, C) -> (B, T, C). With a cache, pos (T,) are the absolute positions of x and
        mask (T, max_seq) bool says which cache slots each query may see."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.nhead, C // self.nhead).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(pos, k, v)  # (B, NH, max_seq, D)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            drop = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.out(y)


class EncoderLayer(nn.Module):
    """Post-norm block: x = LN(x + attn(x)); x = LN(x + FF(x)), ReLU feed-forward."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.attn = CausalSelfAttention(d_model, nhead, dropout)
        self.ff1 = nn.Linear(d_model, dim_feedforward)
        self.ff2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache=None, pos=None, mask=None) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x, cache, pos, mask)))
        ff = self.ff2(self.drop(F.relu(self.ff1(x))))
        return self.norm2(x + self.drop(ff))


class SimpleTransformer_LM(nn.Module):
    """Causal Transformer LM, ~2.6M trained parameters + a 5000 x 256 sinusoidal buffer.

    forward(input_ids (B, T)) -> logits (B, T, V) for all positions in parallel.
    """

    def __init__(
        self,
        vocab_size: int = 2000,
        d_model: int = 256,
        nhead: int = 4,
        num_layers: int = 3,
        dim_feedforward: int = 512,
        dropout: float = 0.2,
        max_len: int = 5000,
    ):
        super().__init__()
        self.config = TransformerConfig(
            vocab_size, d_model, nhead, num_layers, dim_feedforward, dropout, max_len
        )
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.register_buffer("pos_table", sinusoidal_table(max_len, d_model), persistent=False)
        self.emb_scale = math.sqrt(d_model)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_layers)
        )
        self.fc = nn.Linear(d_model, vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)

    @classmethod
    def from_config(cls, config: TransformerConfig) -> SimpleTransformer_LM:
        c = config
        return cls(
            c.vocab_size, c.d_model, c.nhead, c.num_layers, c.dim_feedforward, c.dropout, c.max_len
        )

    def hidden_states(self, input_ids: torch.Tensor, caches=None, pos=None, mask=None):
        """Top-layer states (B, T, d_model). No input checks. caches/pos/mask are the KV-cache
        decode path's: one KVCache per layer, absolute positions pos (T,), visibility mask."""
        T = input_ids.shape[1]
        pe = self.pos_table[:T] if pos is None else self.pos_table[pos]  # (T, C)
        x = self.drop(self.embedding(input_ids) * self.emb_scale + pe)  # (B, T, C)
        for i, layer in enumerate(self.layers):
            x = layer(x, None if caches is None else caches[i], pos, mask)
        return x

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        check_input_ids(input_ids, self.config.vocab_size, self.config.max_len)
        return self.fc(self.hidden_states(input_ids))

    # ------------------------------------------------------------------ KV cache
    def new_caches(self, batch: int, max_seq: int, device=None, dtype=None) -> list[KVCache]:
        """A static KV cache (B, NH, max_seq, D) per layer, owned by the caller (gpt-fast's
        setup_caches, but not stored on the model so concurrent generations never share one)."""
        if max_seq > self.config.max_len:
            raise ValueError(
                f"max_seq={max_seq} exceeds the position table ({self.config.max_len})"
            )
        p = self.fc.weight
        head_dim = self.config.d_model // self.config.nhead
        shape = (batch, self.config.nhead, max_seq, head_dim)
        kw = {"device": device or p.device, "dtype": dtype or p.dtype}
        return [KVCache(torch.zeros(shape, **kw), torch.zeros(shape, **kw)) for _ in self.layers]

    def forward_cached(self, input_ids: torch.Tensor, pos: torch.Tensor, caches) -> torch.Tensor:
        """Logits (B, T, V) for input_ids (B, T) at absolute positions pos (T,), reading and
        filling `caches`. Each query sees the cache slots at or before its own position."""
        max_seq = caches[0].k.shape[2]
        slots = torch.arange(max_seq, device=pos.device)
        mask = slots.unsqueeze(0) <= pos.unsqueeze(1)  # (T, max_seq)
        return self.fc(self.hidden_states(input_ids, caches, pos, mask))

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

        Naive full recompute each step: the reference the fast engine is tested against.
        temperature 0 (the default) = greedy; > 0 samples. max_length may not exceed the
        position table. Runs with dropout off (eval mode) and restores the model's mode afterwards.
        """
        from fastlm.models.lstm import _check_start_tokens

        check_sampling(temperature, top_k, None)
        ids = _check_start_tokens(start_tokens, max_length)
        if max_length > self.config.max_len:
            raise ValueError(f"max_length={max_length} exceeds the context ({self.config.max_len})")
        device = self.fc.weight.device
        gen = make_generator(seed, device)
        with eval_mode(self):
            while len(ids) < max_length:
                logits = self(torch.tensor([ids], device=device))
                ids.append(int(sample_next(logits[:, -1], temperature, top_k, None, gen)))
        return ids
