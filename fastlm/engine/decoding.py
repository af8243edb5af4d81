"""Incremental decoders for the torch backends (batch 1, one token per step).

Single-token decoding on a CPU is bound by reading the weights (~8 MB per token) and by
per-op overhead, not by FLOPs. So the step modules below:
- keep every weight pre-transposed, (in, out) contiguous, and call `addmm` (F.linear's
  weight-transposed path measured ~1.8x slower for a 1-row input here);
- LSTM: concatenate [W_ih | W_hh] so a layer is one addmm + the gate math (nn.LSTM's
  per-call overhead makes it ~3x slower for single tokens);
- Transformer: prefill once into a static KV cache sized for the whole generation, then attend
  over the filled prefix only (eager) or over the whole cache with a mask (static shapes, for
  torch.compile), gpt-fast style.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fastlm.models import SimpleLSTM_LM, SimpleTransformer_LM


def _t(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """(W^T contiguous (in, out), bias (out,)) for addmm."""
    return linear.weight.detach().t().contiguous(), linear.bias.detach().clone()


class LSTMStep(nn.Module):
    """forward(token (1,) int64, h (L, 1, H), c (L, 1, H)) -> (logits (1, V), h, c)."""

    def __init__(self, model: SimpleLSTM_LM):
        super().__init__()
        lstm = model.lstm
        self.num_layers = lstm.num_layers
        self.register_buffer("emb", model.embedding.weight.detach().clone())
        for layer in range(lstm.num_layers):
            w_ih = getattr(lstm, f"weight_ih_l{layer}")
            w_hh = getattr(lstm, f"weight_hh_l{layer}")
            b = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
            # (in + H, 4H): [x, h] @ w is one matmul for the input and the recurrent part
            self.register_buffer(f"w{layer}", torch.cat([w_ih, w_hh], 1).t().contiguous().detach())
            self.register_buffer(f"b{layer}", b.detach().clone())
        fc_w, fc_b = _t(model.fc)
        self.register_buffer("fc_w", fc_w)
        self.register_buffer("fc_b", fc_b)

    def forward(self, token: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        x = self.emb[token]  # (1, E)
        hs, cs = [], []
        for layer in range(self.num_layers):
            w, b = getattr(self, f"w{layer}"), getattr(self, f"b{layer}")
            gates = torch.addmm(b, torch.cat([x, h[layer]], 1), w)  # (1, 4H), order i f g o
            i, f, g, o = gates.chunk(4, 1)
            c_new = torch.sigmoid(f) * c[layer] + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c_new)
            hs.append(x)
            cs.append(c_new)
        return torch.addmm(self.fc_b, x, self.fc_w), torch.stack(hs), torch.stack(cs)


class TransformerStep(nn.Module):
    """forward(token (1,) int64, pos (1,) int64, ks, vs) -> logits (1, V).

    ks, vs: per-layer caches (1, NH, max_seq, D), filled in place at `pos`. With static=True the
    attention reads the whole cache under a mask (fixed shapes for torch.compile); otherwise it
    reads the filled prefix only, which is cheaper in eager mode.
    """

    def __init__(self, model: SimpleTransformer_LM, static: bool = False):
        super().__init__()
        cfg = model.config
        self.nhead, self.head_dim, self.static = cfg.nhead, cfg.d_model // cfg.nhead, static
        self.register_buffer("emb", model.embedding.weight.detach() * model.emb_scale)
        self.register_buffer("pos_table", model.pos_table.detach().clone())
        self.layers = nn.ModuleList(_StepLayer(layer) for layer in model.layers)
        fc_w, fc_b = _t(model.fc)
        self.register_buffer("fc_w", fc_w)
        self.register_buffer("fc_b", fc_b)

    def forward(self, token, pos, ks: list[torch.Tensor], vs: list[torch.Tensor]):
        x = self.emb[token] + self.pos_table[pos]  # (1, C)
        if self.static:
            slots = torch.arange(ks[0].shape[2], device=pos.device)
            bias = torch.where(slots <= pos, 0.0, float("-inf")).to(x.dtype)  # (max_seq,)
        for layer, k, v in zip(self.layers, ks, vs):
            x = layer(x, pos, k, v, bias if self.static else None)
        return torch.addmm(self.fc_b, x, self.fc_w)


class _StepLayer(nn.Module):
    def __init__(self, layer):
        super().__init__()
        attn = layer.attn
        self.nhead = attn.nhead
        for name, lin in (
            ("qkv", attn.qkv),
            ("out", attn.out),
            ("ff1", layer.ff1),
            ("ff2", layer.ff2),
        ):
            w, b = _t(lin)
            self.register_buffer(f"{name}_w", w)
            self.register_buffer(f"{name}_b", b)
        self.norm1, self.norm2 = layer.norm1, layer.norm2

    def forward(self, x, pos, k_cache, v_cache, bias):
        C = x.shape[1]
        D = C // self.nhead
        q, k, v = torch.addmm(self.qkv_b, x, self.qkv_w).view(3, self.nhead, 1, D).unbind(0)
        k_cache[0].index_copy_(1, pos, k)  # cache (1, NH, S, D); k (NH, 1, D)
        v_cache[0].index_copy_(1, pos, v)
        if bias is None:  # eager: attend over the filled prefix only
            n = int(pos) + 1
            keys, vals = k_cache[0, :, :n], v_cache[0, :, :n]  # (NH, n, D)
            att = torch.bmm(q, keys.transpose(1, 2)) * (1.0 / math.sqrt(D))  # (NH, 1, n)
        else:
            keys, vals = k_cache[0], v_cache[0]
            att = torch.bmm(q, keys.transpose(1, 2)) * (1.0 / math.sqrt(D)) + bias
        y = torch.bmm(att.softmax(-1), vals).view(1, C)  # (1, C)
        x = self.norm1(x + torch.addmm(self.out_b, y, self.out_w))
        ff = torch.addmm(self.ff2_b, torch.relu(torch.addmm(self.ff1_b, x, self.ff1_w)), self.ff2_w)
        return self.norm2(x + ff)


class LSTMDecoder:
    def __init__(self, model: SimpleLSTM_LM, step: nn.Module, device):
        self.model, self.device, self._step = model, device, step
        self.h = self.c = None

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], device=self.device)
        out, (self.h, self.c) = self.model.hidden_states(x)
        return self.model.fc(out[0, -1]).float().cpu()

    @torch.inference_mode()
    def step(self, token: int) -> torch.Tensor:
        tok = torch.tensor([token], device=self.device)
        logits, self.h, self.c = self._step(tok, self.h, self.c)
        return logits[0].float().cpu()


class TransformerDecoder:
    def __init__(self, model: SimpleTransformer_LM, step: nn.Module, max_seq: int, device):
        self.model, self.device, self.max_seq, self._step = model, device, max_seq, step
        self.pos = 0
        # The cache belongs to this decoder, so concurrent generations never share one.
        self.caches = model.new_caches(1, max_seq, device)
        self.ks = [c.k for c in self.caches]
        self.vs = [c.v for c in self.caches]

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> torch.Tensor:
        if len(ids) > self.max_seq:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds the cache ({self.max_seq})")
        x = torch.tensor([ids], device=self.device)
        pos = torch.arange(len(ids), device=self.device)
        self.pos = len(ids)
        return self.model.forward_cached(x, pos, self.caches)[0, -1].float().cpu()

    @torch.inference_mode()
    def step(self, token: int) -> torch.Tensor:
        if self.pos >= self.max_seq:
            raise ValueError(f"the generation reached the cache size ({self.max_seq})")
        tok = torch.tensor([token], device=self.device)
        pos = torch.tensor([self.pos], device=self.device)
        self.pos += 1
        return self._step(tok, pos, self.ks, self.vs)[0].float().cpu()


def build_step(model, static: bool = False) -> nn.Module:
    """The one-token step module for `model` (weights copied once, in step layout)."""
    device = model.fc.weight.device
    if isinstance(model, SimpleLSTM_LM):
        return LSTMStep(model).to(device).eval()
    return TransformerStep(model, static).to(device).eval()


def make_decoder(model, step: nn.Module, max_seq: int, device):
    if isinstance(model, SimpleLSTM_LM):
        return LSTMDecoder(model, step, device)
    return TransformerDecoder(model, step, max_seq, device)
