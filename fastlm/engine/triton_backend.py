"""The "triton" backend: fastlm's Triton kernels behind the eager backend's interface (CUDA only).

- embed: the checkpoint's embedding tower (models/embedder.py) with its encoder's states from
  the kernels below (`tower_embeddings`), then the tower's own pooling and projection.
- Transformer embed/score: `transformer_hidden_states` walks the model's own layers (qkv
  linear, split heads, Triton causal attention, out linear, post-norm, ReLU feed-forward)
  with the model's weights in place of F.scaled_dot_product_attention. No key-padding mask
  is passed: batches are right-padded and the models are causal (engine/backends.py).
- LSTM embed/score: `lstm_hidden_states` runs, per layer, one input-projection matmul for
  all time steps and one persistent `lstm_sequence` launch for the recurrence.
- LSTM decode: prefill as above, then per token and layer x @ W_ih^T followed by one fused
  `lstm_step` launch (`LSTMKernelDecoder`).
- Transformer decode: the eager KV-cache step of engine/decoding.py (`build_step`), as in the
  "eager" backend; there is no Triton decode-attention kernel yet.

dtype option ("bf16" default, "fp16", "fp32"): the compute precision. For the Transformer the
linears and attention run under torch.autocast in that dtype (LayerNorm and residuals stay
fp32); for the LSTM the weights are cast once, the kernels keep h in that dtype and the cell
state c in fp32 (rounding c every step loses its small updates: long texts drift, most of all
in bf16). Returned states and logits are always fp32. "bf16" is the fastest; "fp16" is more
precise on h (10 mantissa bits against 7); "fp32" (IEEE products, no TF32) matches the eager
backend to ~1e-5 and gives the same greedy tokens.

The functions below also run on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1
set before fastlm.kernels is imported; fp32/fp16 only): the tests check them that way on small
random models. The backend itself refuses to start without a CUDA device.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastlm.engine.backends import TorchBackend, backend_names, register_backend
from fastlm.kernels import cuda_kernels_available
from fastlm.models import SimpleLSTM_LM, SimpleTransformer_LM
from fastlm.models.embedder import EmbeddingTower
from fastlm.models.layers import mean_pool

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
ATTENTION_HEAD_DIMS = (16, 32, 64, 128)  # fastlm.kernels.attention.SUPPORTED_HEAD_DIMS


# ----------------------------------------------------------------------------- Transformer


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def transformer_hidden_states(
    model: SimpleTransformer_LM, input_ids: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Top-layer states (B, T, d_model) float32, as `model.hidden_states` (eval mode) computes
    them, with the Triton causal attention kernel in place of SDPA. No input checks."""
    from fastlm.kernels.attention import causal_attention

    B, T = input_ids.shape
    x = model.embedding(input_ids) * model.emb_scale + model.pos_table[:T]  # (B, T, C) fp32
    C = x.shape[-1]
    with _autocast(x.device, dtype):
        for layer in model.layers:
            attn = layer.attn
            nh = attn.nhead
            # (B, T, 3C) -> 3 x (B, NH, T, D) views; the head dimension stays contiguous
            q, k, v = attn.qkv(x).view(B, T, 3, nh, C // nh).permute(2, 0, 3, 1, 4).unbind(0)
            y = causal_attention(q, k, v).transpose(1, 2).reshape(B, T, C)
            x = layer.norm1(x + attn.out(y))
            x = layer.norm2(x + layer.ff2(F.relu(layer.ff1(x))))
    return x.float()


# ----------------------------------------------------------------------------- LSTM


@dataclass(frozen=True)
class LSTMKernelWeights:
    """An LSTM LM's weights in kernel layout, cast once to the compute dtype.

    emb (V, E); per layer w_ih_t (In, 4H) for x @ W_ih^T, w_hh (4H, H), bias (4H,) = b_ih +
    b_hh, all contiguous. fc_w (V, H), fc_b (V,) stay fp32 (logits in fp32); None for an
    embedding tower's encoder, which has no output layer."""

    emb: torch.Tensor
    layers: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...]
    fc_w: torch.Tensor | None
    fc_b: torch.Tensor | None
    hidden_dim: int

    @classmethod
    def from_model(cls, model: SimpleLSTM_LM, dtype: torch.dtype = torch.float32):
        lstm = model.lstm
        layers = []
        for i in range(lstm.num_layers):
            w_ih = getattr(lstm, f"weight_ih_l{i}").detach()
            w_hh = getattr(lstm, f"weight_hh_l{i}").detach()
            bias = (getattr(lstm, f"bias_ih_l{i}") + getattr(lstm, f"bias_hh_l{i}")).detach()
            layers.append(
                (w_ih.t().to(dtype).contiguous(), w_hh.to(dtype).contiguous(), bias.to(dtype))
            )
        return cls(
            emb=model.embedding.weight.detach().to(dtype),
            layers=tuple(layers),
            fc_w=None if model.fc is None else model.fc.weight.detach().float(),
            fc_b=None if model.fc is None else model.fc.bias.detach().float(),
            hidden_dim=lstm.hidden_size,
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.emb.dtype

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.fc_w is None:
            raise RuntimeError("these weights come from an embedding tower: no output layer")
        return F.linear(h.float(), self.fc_w, self.fc_b)


def lstm_hidden_states(
    weights: LSTMKernelWeights,
    input_ids: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """(top-layer states (B, T, H), (h, c) each (L, B, H)), as nn.LSTM returns them: states and
    h in the weights' dtype, c in float32 (a given c may be either). Per layer: one x @ W_ih^T
    matmul over all steps + one `lstm_sequence`."""
    from fastlm.kernels.lstm import lstm_sequence

    B, T = input_ids.shape
    H = weights.hidden_dim
    x = weights.emb[input_ids]  # (B, T, E)
    if state is None:
        shape = (len(weights.layers), B, H)
        h0 = torch.zeros(shape, dtype=weights.dtype, device=x.device)
        state = (h0, torch.zeros(shape, dtype=torch.float32, device=x.device))
    hs, cs = [], []
    for (w_ih_t, w_hh, bias), h0, c0 in zip(weights.layers, *state):
        x_proj = torch.mm(x.reshape(B * T, -1), w_ih_t).view(B, T, 4 * H)
        x, (h, c) = lstm_sequence(x_proj, h0.contiguous(), c0.contiguous(), w_hh, bias)
        hs.append(h)
        cs.append(c)
    return x, (torch.stack(hs), torch.stack(cs))


class LSTMKernelDecoder:
    """Batch-1 LSTM decoding: prefill with `lstm_hidden_states`, then one fused `lstm_step`
    per layer and token; c stays float32 between tokens. Logits are float32 (V,) on CPU, like
    the eager decoders'."""

    def __init__(self, weights: LSTMKernelWeights, device: torch.device):
        self.weights, self.device = weights, device
        self.h = self.c = None  # (L, 1, H) each; h in the weights' dtype, c float32

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], device=self.device)
        out, (self.h, self.c) = lstm_hidden_states(self.weights, x)
        return self.weights.logits(out[0, -1]).cpu()

    @torch.inference_mode()
    def step(self, token: int) -> torch.Tensor:
        from fastlm.kernels.lstm import lstm_step

        if self.h is None:
            raise RuntimeError("call prefill() before step()")
        x = self.weights.emb[token].unsqueeze(0)  # (1, E)
        hs, cs = [], []
        for (w_ih_t, w_hh, bias), h, c in zip(self.weights.layers, self.h, self.c):
            x, c_new = lstm_step(torch.mm(x, w_ih_t), h, c, w_hh, bias)
            hs.append(x)
            cs.append(c_new)
        self.h, self.c = torch.stack(hs), torch.stack(cs)
        return self.weights.logits(x[0]).cpu()


# ----------------------------------------------------------------------------- embeddings


def tower_embeddings(
    tower: EmbeddingTower,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    lstm_weights: LSTMKernelWeights | None = None,
) -> torch.Tensor:
    """(B, dim) float32: what `tower(input_ids, attention_mask)` computes (models/embedder.py:
    masked mean of the encoder's top-layer states, then the tower's projection, which adds its
    token-table mean), with the encoder's states from the Triton kernels. lstm_weights: the
    LSTM encoder's kernel weights, built from the tower when None. No input checks."""
    encoder = tower.encoder
    if isinstance(encoder, SimpleLSTM_LM):
        weights = lstm_weights or LSTMKernelWeights.from_model(encoder, dtype)
        states = lstm_hidden_states(weights, input_ids)[0]
    else:
        states = transformer_hidden_states(encoder, input_ids, dtype)
    return tower.project(mean_pool(states, attention_mask), input_ids, attention_mask).float()


# ----------------------------------------------------------------------------- backend


class TritonBackend(TorchBackend):
    """Triton kernels on a CUDA GPU; see the module docstring. Option: dtype="bf16"."""

    name = "triton"

    def __init__(self, checkpoint, device, threads, dtype: str = "bf16"):
        device = torch.device(device)
        if device.type != "cuda" or not cuda_kernels_available():
            why = "triton is not installed" if device.type == "cuda" else f"device is {device}"
            raise ValueError(
                f"the triton backend needs a CUDA GPU and the triton package ({why}); "
                f"available backends: {backend_names() + ['auto']}"
            )
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        cfg = checkpoint.config
        if (
            cfg.architecture == "transformer"
            and cfg.d_model // cfg.nhead not in ATTENTION_HEAD_DIMS
        ):
            raise ValueError(
                f"the triton attention kernel takes head_dim in {ATTENTION_HEAD_DIMS}; this "
                f"model has {cfg.d_model // cfg.nhead}: use backend='eager'"
            )
        super().__init__(checkpoint, device, threads)
        self.dtype_name = dtype
        self.dtype = DTYPES[dtype]
        self.tower_lstm_weights = None
        if isinstance(self.model, SimpleLSTM_LM):
            self.lstm_weights = LSTMKernelWeights.from_model(self.model, self.dtype)
            self._hidden = self._lstm_states
            encoder = self.embedder.encoder  # the LM itself, or a trained tower's own copy
            self.tower_lstm_weights = (
                self.lstm_weights
                if encoder is self.model
                else LSTMKernelWeights.from_model(encoder, self.dtype)
            )
        else:
            self._hidden = self._transformer_states

    def embed_batch(self, input_ids, attention_mask):
        """The embedding tower (eager's embed_batch) with its encoder on the Triton kernels."""
        with torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(self.device)
            mask = torch.from_numpy(attention_mask).to(self.device)
            pooled = tower_embeddings(self.embedder, ids, mask, self.dtype, self.tower_lstm_weights)
            return pooled.cpu().numpy()  # one host copy per batch

    def _transformer_states(self, ids: torch.Tensor) -> torch.Tensor:
        return transformer_hidden_states(self.model, ids, self.dtype)

    def _lstm_states(self, ids: torch.Tensor) -> torch.Tensor:
        return lstm_hidden_states(self.lstm_weights, ids)[0].float()

    def new_decoder(self, max_seq: int):
        if isinstance(self.model, SimpleLSTM_LM):
            return LSTMKernelDecoder(self.lstm_weights, self.device)
        return super().new_decoder(max_seq)  # eager KV-cache step (module docstring)

    def describe(self) -> dict:
        return {**super().describe(), "dtype": self.dtype_name}


register_backend("triton", TritonBackend)
