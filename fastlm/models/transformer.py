"""The Transformer architecture: config, SimpleTransformer_LM (the SPEC's causal post-norm
encoder LM), its decode step, ONNX decode graph, kernel form and `Architecture`.

The block's math is written once (`block`); training, the KV-cache decode step, the Triton
kernels and the ONNX decode graph differ only in how attention reads its keys (`attend`) and how
the linears run. Written out (not nn.TransformerEncoderLayer) so torch.compile and the ONNX
exporter see every op; the parameter count matches nn.TransformerEncoderLayer's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fastlm import limits
from fastlm.models import config as config_rules
from fastlm.models.architecture import Architecture, detached_t, register
from fastlm.models.layers import check_input_ids, reference_generate, sinusoidal_table

# attend(q, k, v) with q, k, v (B, NH, T, D) -> (B, NH, T, D)
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
ATTENTION_HEAD_DIMS = (16, 32, 64, 128)  # what fastlm.kernels.attention compiles for
EMBED_WINDOW = 256  # tokens per embedding window: the window the shipped model was trained on


@dataclass
class TransformerConfig(config_rules.ConfigBase):
    architecture = "transformer"
    vocab_size: int = 2000
    d_model: int = 256  # also the embedding size returned by embed()
    nhead: int = 4  # head_dim = d_model / nhead = 64
    num_layers: int = 3
    dim_feedforward: int = 512
    dropout: float = 0.2
    max_len: int = 5000  # rows of the fixed sinusoidal position table

    def __post_init__(self):
        config_rules.check_bounded(
            self, vocab_size=limits.MAX_VOCAB, d_model=limits.MAX_WIDTH, nhead=limits.MAX_HEADS
        )
        config_rules.check_bounded(
            self, num_layers=limits.MAX_LAYERS, dim_feedforward=limits.MAX_FEEDFORWARD
        )
        config_rules.check_bounded(self, max_len=limits.MAX_POSITIONS)
        config_rules.check_dropout(self)
        d, f = self.d_model, self.dim_feedforward
        layer = 4 * d * (d + 1) + 2 * d * f + d + f + 4 * d
        config_rules.check_parameters(self.vocab_size * (2 * d + 1) + self.num_layers * layer)
        if self.d_model % self.nhead:
            raise ValueError(f"d_model={self.d_model} must be divisible by nhead={self.nhead}")
        if self.d_model % 2:
            raise ValueError("d_model must be even for the sinusoidal position table")

    @property
    def embed_dim(self) -> int:
        return self.d_model


class KVCache(NamedTuple):
    """The decode state: k, v (L, B, NH, max_seq, D), sized once (gpt-fast style) and filled in
    place, and `length` (1,) int64, the tokens already in it. A tuple of tensors (not a module)
    so torch.compile treats it as plain inputs; length is a tensor so a compiled step is not
    specialised on it."""

    k: torch.Tensor
    v: torch.Tensor
    length: torch.Tensor


class CausalSelfAttention(nn.Module):
    """The attention's parameters (qkv: C -> 3C, out: C -> C); `block` applies them."""

    def __init__(self, d_model: int, nhead: int, dropout: float):
        super().__init__()
        self.nhead = nhead
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout


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

    def linears(self) -> tuple[nn.Module, ...]:
        return self.attn.qkv, self.attn.out, self.ff1, self.ff2

    def forward(self, x: torch.Tensor, attend: Attend | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); attend defaults to causal SDPA (with the attention's
        dropout in training)."""
        if attend is None:
            drop = self.attn.dropout if self.training else 0.0
            attend = partial(F.scaled_dot_product_attention, is_causal=True, dropout_p=drop)
        return block(self, x, attend)


def block(
    layer: EncoderLayer, x: torch.Tensor, attend: Attend, linears=None, packed: bool = False
) -> torch.Tensor:
    """One encoder layer, x (B, T, C) -> (B, T, C). linears: callables (rows, in) -> (rows, out)
    for (qkv, out, ff1, ff2), default the layer's own nn.Linear modules (the decode step passes
    addmm on pre-transposed weights). The linears see 2-D rows, what addmm takes. `attend` takes
    q, k, v as (B, NH, T, D) heads and returns the same shape; with packed=True it takes the
    qkv projection whole, (B, T, 3C) = [q | k | v] with the heads side by side as fused
    attention ops take it, and returns (B, T, C); the linears (nn.Linear here) see (B, T, C)
    too."""
    qkv, out, ff1, ff2 = linears or layer.linears()
    drop = layer.drop if layer.training else _identity  # a module call per use costs ~us/token
    B, T, C = x.shape
    if packed:  # (B, T, C) throughout: no reshape, whose target shape a graph would compute
        x = layer.norm1(x + drop(out(attend(qkv(x)))))
        return layer.norm2(x + drop(ff2(drop(F.relu(ff1(x))))))
    nh = layer.attn.nhead
    rows = x.reshape(B * T, C)
    # (B*T, 3C) -> 3 x (B, NH, T, D) views; the head dimension stays contiguous
    q, k, v = qkv(rows).view(B, T, 3, nh, C // nh).permute(2, 0, 3, 1, 4).unbind(0)
    y = attend(q, k, v).transpose(1, 2).reshape(B * T, C)
    rows = layer.norm1(rows + drop(out(y)))
    rows = layer.norm2(rows + drop(ff2(drop(F.relu(ff1(rows))))))
    return rows.view(B, T, C)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def cached_attend(k_cache, v_cache, pos: torch.Tensor, static: bool) -> Attend:
    """Attention through a static cache (B, NH, S, D): k, v are written at positions pos (T,),
    each query sees the slots at or before its own position. static=True reads the whole cache
    under a mask (fixed shapes for torch.compile); otherwise only the filled prefix, where a
    single query needs no mask. Written as matmul + softmax: for one query on a CPU that is
    ~3x cheaper than SDPA with a mask."""

    def attend(q, k, v):
        k_cache.index_copy_(2, pos, k)
        v_cache.index_copy_(2, pos, v)
        B, NH, T, D = q.shape
        n = k_cache.shape[2] if static else int(pos[-1]) + 1
        # 3-D bmm on (B*NH) rows: what a 4-D matmul dispatches to, minus its reshaping
        keys = k_cache[:, :, :n].reshape(B * NH, n, D)
        values = v_cache[:, :, :n].reshape(B * NH, n, D)
        att = torch.bmm(q.reshape(B * NH, T, D), keys.transpose(1, 2)) * (1.0 / math.sqrt(D))
        if static or T > 1:
            hidden = torch.arange(n, device=pos.device).unsqueeze(0) > pos.unsqueeze(1)  # (T, n)
            att = att.masked_fill(hidden, float("-inf"))
        return torch.bmm(att.softmax(dim=-1), values).view(B, NH, T, D)

    return attend


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

    def embed_tokens(self, input_ids: torch.Tensor, positions: torch.Tensor | slice):
        """Scaled token embeddings plus sinusoidal positions, (B, T) -> (B, T, C)."""
        return self.embedding(input_ids) * self.emb_scale + self.pos_table[positions]

    def new_state(self, batch: int, max_seq: int, device=None, dtype=None) -> KVCache:
        """An empty KV cache for `max_seq` tokens, owned by the caller (gpt-fast's setup_caches,
        but not stored on the model so concurrent generations never share one)."""
        if max_seq > self.config.max_len:
            raise ValueError(
                f"max_seq={max_seq} exceeds the position table ({self.config.max_len})"
            )
        p, cfg = self.fc.weight if self.fc is not None else self.embedding.weight, self.config
        shape = (cfg.num_layers, batch, cfg.nhead, max_seq, cfg.d_model // cfg.nhead)
        kw = {"device": device or p.device, "dtype": dtype or p.dtype}
        length = torch.zeros(1, dtype=torch.int64, device=kw["device"])
        return KVCache(torch.zeros(shape, **kw), torch.zeros(shape, **kw), length)

    def hidden_states(self, input_ids: torch.Tensor, state: KVCache | None = None):
        """(top-layer states (B, T, d_model), state). No input checks. Without a state: one
        causal pass. With one: the tokens continue the cached ones, and the filled cache is
        returned with its length advanced."""
        T = input_ids.shape[1]
        if state is None:
            x = self.drop(self.embed_tokens(input_ids, slice(0, T)))  # (B, T, C)
            for layer in self.layers:
                x = layer(x)
            return x, None
        pos = state.length + torch.arange(T, device=input_ids.device)  # (T,)
        x = self.drop(self.embed_tokens(input_ids, pos))
        for i, layer in enumerate(self.layers):
            x = layer(x, cached_attend(state.k[i], state.v[i], pos, static=False))
        return x, state._replace(length=state.length + T)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        check_input_ids(input_ids, self.config.vocab_size, self.config.max_len)
        return self.fc(self.hidden_states(input_ids)[0])

    def generate(
        self,
        start_tokens: list[int],
        max_length: int = 100,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> list[int]:
        """Continue until the sequence holds `max_length` tokens (start tokens included; at
        most the position table), through the KV cache. temperature 0 (the default) = greedy."""
        return reference_generate(self, start_tokens, max_length, temperature, top_k, seed)

    def step_module(self, static: bool = False) -> TransformerStep:
        return TransformerStep(self, static).to(self.fc.weight.device).eval()


LINEAR_NAMES = ("qkv", "out", "ff1", "ff2")


class TransformerStep(nn.Module):
    """forward(token (1,) int64, KVCache) -> (logits (1, V), KVCache advanced by one token),
    the cache filled in place. Linears run as addmm on pre-transposed weights (for one row on a
    CPU, F.linear's transposed-weight path measured ~1.8x slower). static=True attends over the
    whole cache under a mask (fixed shapes for torch.compile); otherwise over the filled
    prefix, cheaper in eager mode."""

    def __init__(self, model: SimpleTransformer_LM, static: bool = False):
        super().__init__()
        self.static = static
        self.register_buffer("emb", model.embedding.weight.detach() * model.emb_scale)
        self.register_buffer("pos_table", model.pos_table.detach().clone())
        self.layers = model.layers  # for the norms; the linears' weights are copied below
        for i, layer in enumerate(model.layers):
            for name, linear in zip(LINEAR_NAMES, layer.linears()):
                w, b = detached_t(linear)
                self.register_buffer(f"w{i}_{name}", w)
                self.register_buffer(f"b{i}_{name}", b)
        fc_w, fc_b = detached_t(model.fc)
        self.register_buffer("fc_w", fc_w)
        self.register_buffer("fc_b", fc_b)
        self._bind()

    def _bind(self) -> None:
        """Per layer, the linears as addmm calls on this module's current buffers."""
        self.linears = [
            [
                partial(torch.addmm, getattr(self, f"b{i}_{n}"), mat2=getattr(self, f"w{i}_{n}"))
                for n in LINEAR_NAMES
            ]
            for i in range(len(self.layers))
        ]

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._bind()  # .to() / .half() replace the buffers the bound calls hold
        return out

    def forward(self, token: torch.Tensor, state: KVCache):
        pos = state.length  # (1,)
        x = (self.emb[token] + self.pos_table[pos]).unsqueeze(0)  # (1, 1, C)
        for i, layer in enumerate(self.layers):
            attend = cached_attend(state.k[i], state.v[i], pos, self.static)
            x = block(layer, x, attend, self.linears[i])
        return torch.addmm(self.fc_b, x[0], self.fc_w), state._replace(length=pos + 1)


class KernelTransformer(nn.Module):
    """SimpleTransformer_LM with fastlm's Triton causal attention in place of SDPA, the linears
    and attention under autocast in `dtype` (LayerNorm and residuals stay fp32). Decoding keeps
    the eager KV-cache path: there is no Triton decode-attention kernel."""

    def __init__(self, model: SimpleTransformer_LM, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype
        self.config, self.embedding, self.fc = model.config, model.embedding, model.fc

    def new_state(self, batch: int, max_seq: int, device=None) -> KVCache:
        return self.model.new_state(batch, max_seq, device)

    def hidden_states(self, input_ids, state=None):
        if state is not None:
            return self.model.hidden_states(input_ids, state)
        from fastlm.kernels.attention import causal_attention  # triton: only on the kernels

        x = self.model.embed_tokens(input_ids, slice(0, input_ids.shape[1]))
        autocast = self.dtype != torch.float32
        with torch.autocast(x.device.type, dtype=self.dtype, enabled=autocast):
            for layer in self.model.layers:
                x = layer(x, causal_attention)
        return x.float(), None

    def step_module(self, static: bool = False) -> TransformerStep:
        return self.model.step_module(static)


class TransformerArchitecture(Architecture):
    name = "transformer"
    config_class = TransformerConfig
    model_class = SimpleTransformer_LM
    attention_scores = True

    def decode_state_tokens(self, cache_len: int) -> int:
        """The KV cache holds every token of the generation."""
        return cache_len

    def compile_sequence(self, fn, **compile_options):
        return torch.compile(fn, dynamic=True, **compile_options)

    def summary(self, config: dict) -> str:
        return (
            f"Transformer language model: {config.get('num_layers')} post-norm layers, d_model "
            f"{config.get('d_model')}, {config.get('nhead')} heads, feed-forward "
            f"{config.get('dim_feedforward', '?')}, causal, sinusoidal positions "
            f"(max {config.get('max_len', '?')} tokens)"
        )

    def embed_window(self, config) -> int:
        """The training window: positions beyond it were never seen in training."""
        return min(EMBED_WINDOW, config.max_len)

    def decode_graph(self, model, batch):
        # imported here: transformer_graphs builds on this module (block, the model class)
        from fastlm.models.transformer_graphs import decode_graph

        return decode_graph(model, batch)

    def state_facts(self, config) -> dict:
        return {"nhead": config.nhead, "head_dim": config.d_model // config.nhead}

    def kernel_model(self, model, dtype) -> KernelTransformer:
        return KernelTransformer(model, dtype)

    def kernel_ready(self, config) -> str | None:
        head_dim = config.d_model // config.nhead
        if head_dim in ATTENTION_HEAD_DIMS:
            return None
        kernel = f"the triton attention kernel takes head_dim in {ATTENTION_HEAD_DIMS}"
        return f"{kernel}, not {head_dim}"

    def mixing_flops(self, config, queries: int, keys: int) -> float:
        """QK^T and AV: 4 * queries * keys * d_model per layer (the causal half not discounted)."""
        return 4.0 * queries * keys * config.d_model * config.num_layers


TRANSFORMER = register(TransformerArchitecture())
