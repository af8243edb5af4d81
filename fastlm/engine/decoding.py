"""Incremental decoders for the torch backends.

- LSTM: the 2-layer cell written out with pre-combined weights ([W_ih | W_hh] as one matrix per
  layer, biases summed), so one step is one addmm + pointwise math per layer. nn.LSTM's per-call
  overhead makes it ~3x slower for single tokens.
- Transformer: prefill once into a static KV cache sized for the whole generation, then one
  token per step (gpt-fast style); the model's `forward_cached` does the attention over the cache.
"""

from __future__ import annotations

import torch
from torch import nn

from fastlm.models import SimpleLSTM_LM, SimpleTransformer_LM


class LSTMCellStack(nn.Module):
    """One-token step of a stacked LSTM. Weights copied once from an nn.LSTM.

    step(x (B, E), h (L, B, H), c (L, B, H)) -> (top h (B, H), h, c)
    """

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        self.num_layers, self.hidden = lstm.num_layers, lstm.hidden_size
        for layer in range(lstm.num_layers):
            w_ih = getattr(lstm, f"weight_ih_l{layer}")
            w_hh = getattr(lstm, f"weight_hh_l{layer}")
            b = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
            # (in + H, 4H): x_h @ w is one matmul for both the input and the recurrent part
            self.register_buffer(f"w{layer}", torch.cat([w_ih, w_hh], 1).t().contiguous().detach())
            self.register_buffer(f"b{layer}", b.detach().clone())

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        hs, cs = [], []
        for layer in range(self.num_layers):
            w, b = getattr(self, f"w{layer}"), getattr(self, f"b{layer}")
            gates = torch.addmm(b, torch.cat([x, h[layer]], 1), w)  # (B, 4H), order i f g o
            i, f, g, o = gates.chunk(4, 1)
            c_new = torch.sigmoid(f) * c[layer] + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c_new)
            hs.append(x)
            cs.append(c_new)
        return x, torch.stack(hs), torch.stack(cs)


class LSTMDecoder:
    def __init__(self, model: SimpleLSTM_LM, device, step_fn):
        self.model, self.device = model, device
        self._step = step_fn  # an LSTMCellStack, or a compiled version of one
        self.h = self.c = None

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], device=self.device)
        out, (self.h, self.c) = self.model.hidden_states(x)
        return self.model.fc(out[0, -1]).float().cpu()

    @torch.inference_mode()
    def step(self, token: int) -> torch.Tensor:
        x = self.model.embedding.weight[token].unsqueeze(0)  # (1, E)
        top, self.h, self.c = self._step(x, self.h, self.c)
        return self.model.fc(top[0]).float().cpu()


class TransformerDecoder:
    def __init__(self, model: SimpleTransformer_LM, max_seq: int, device, step_fn=None):
        self.model, self.device, self.max_seq = model, device, max_seq
        self.pos = 0
        # The static cache lives on per-decoder modules so concurrent generations never share it.
        self.caches = model.new_caches(1, max_seq, device)
        self._step = step_fn or model.forward_cached

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
        x = torch.tensor([[token]], device=self.device)
        pos = torch.tensor([self.pos], device=self.device)
        self.pos += 1
        return self._step(x, pos, self.caches)[0, -1].float().cpu()


def make_torch_decoder(model, max_seq: int, device, step_fn=None):
    """step_fn: for the LSTM an LSTMCellStack (or compiled one); for the Transformer a function
    like model.forward_cached (default)."""
    if isinstance(model, SimpleLSTM_LM):
        return LSTMDecoder(model, device, step_fn or LSTMCellStack(model.lstm).to(device))
    return TransformerDecoder(model, max_seq, device, step_fn)
