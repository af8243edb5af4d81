"""The LSTM architecture: SimpleLSTM_LM (SPEC.md), its decode step, ONNX decode graph and kernel
form, and the `Architecture` that tells the rest of fastlm about them.

embedding -> 2-layer unidirectional LSTM -> linear logits. The state is (h, c), each
(num_layers, B, hidden_dim): it carries a text on at constant memory, so the LSTM scores and
embeds any length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastlm import limits
from fastlm.models import config as config_rules
from fastlm.models.architecture import Architecture, detached_t, register
from fastlm.models.layers import check_input_ids, reference_generate

LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (num_layers, B, hidden_dim)
# The LSTM was trained on 128-token windows, but its embedding window was chosen by measurement
# on long documents (docs/benchmarks.md, "Long documents"): 1,024 tokens rank as well as
# carrying the state through a whole text, and bound the recurrent activations.
EMBED_WINDOW = 1024


@dataclass
class LSTMConfig(config_rules.ConfigBase):
    architecture = "lstm"  # class attribute: not a field, written to config.json by to_dict
    vocab_size: int = 2000  # byte-level BPE, special tokens included
    embedding_dim: int = 256
    hidden_dim: int = 256  # also the embedding size returned by embed()
    num_layers: int = 2
    dropout: float = 0.2  # between LSTM layers (SPEC); training may lower it

    def __post_init__(self):
        config_rules.check_bounded(
            self,
            vocab_size=limits.MAX_VOCAB,
            embedding_dim=limits.MAX_WIDTH,
            hidden_dim=limits.MAX_WIDTH,
        )
        config_rules.check_bounded(self, num_layers=limits.MAX_LAYERS)
        config_rules.check_dropout(self)
        h, e, v = self.hidden_dim, self.embedding_dim, self.vocab_size
        lstm = 4 * h * (e + h + 2) + (self.num_layers - 1) * 4 * h * (2 * h + 2)
        config_rules.check_parameters(v * e + lstm + v * (h + 1))

    @property
    def embed_dim(self) -> int:
        return self.hidden_dim

    @property
    def max_len(self) -> int | None:
        return None  # a recurrent model has no position table


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
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.fc.weight, -0.1, 0.1)
        nn.init.zeros_(self.fc.bias)

    @classmethod
    def from_config(cls, config: LSTMConfig) -> SimpleLSTM_LM:
        c = config
        return cls(c.vocab_size, c.embedding_dim, c.hidden_dim, c.num_layers, c.dropout)

    def new_state(self, batch: int, max_seq: int = 0, device=None, dtype=None) -> LSTMState:
        """Zero (h, c), each (num_layers, batch, hidden_dim); max_seq is irrelevant to a
        recurrent state."""
        p = self.embedding.weight
        shape = (self.config.num_layers, batch, self.config.hidden_dim)
        kw = {"device": device or p.device, "dtype": dtype or p.dtype}
        return torch.zeros(shape, **kw), torch.zeros(shape, **kw)

    def hidden_states(
        self, input_ids: torch.Tensor, state: LSTMState | None = None
    ) -> tuple[torch.Tensor, LSTMState]:
        """Top-layer states (B, T, hidden_dim) and the final (h, c). No input checks."""
        x = self.embedding(input_ids)  # (B, T, E)
        return self.lstm(x, state)  # (B, T, H), (h, c)

    def forward(
        self, input_ids: torch.Tensor, hidden: LSTMState | None = None
    ) -> tuple[torch.Tensor, LSTMState]:
        check_input_ids(input_ids, self.config.vocab_size, None)
        if hidden is not None:
            _check_state(hidden, input_ids.shape[0], self.config)
        out, state = self.hidden_states(input_ids, hidden)
        return self.fc(out), state

    def generate(
        self,
        start_tokens: list[int],
        max_length: int = 100,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> list[int]:
        """Continue until the sequence holds `max_length` tokens (start tokens included),
        carrying (h, c): each new token costs one step. temperature 0 (the default) = greedy."""
        return reference_generate(self, start_tokens, max_length, temperature, top_k, seed)

    def step_module(self, static: bool = False) -> LSTMStep:
        """The batch-1 decode step (shapes are fixed whatever `static` says)."""
        return LSTMStep(self).to(self.fc.weight.device).eval()


def _check_state(hidden, batch: int, cfg: LSTMConfig) -> None:
    if not (isinstance(hidden, (tuple, list)) and len(hidden) == 2):
        raise TypeError("hidden must be a tuple (h, c)")
    want = (cfg.num_layers, batch, cfg.hidden_dim)
    for name, t in zip(("h", "c"), hidden):
        if tuple(t.shape) != want:
            raise ValueError(f"hidden state {name} must have shape {want}, got {tuple(t.shape)}")


class LSTMStep(nn.Module):
    """forward(token (1,) int64, (h, c) each (L, 1, H)) -> (logits (1, V), (h, c)).

    Single-token decoding on a CPU is bound by per-op overhead and reading the weights: each
    layer is one addmm over [x, h] @ [W_ih | W_hh]^T plus the gate math (nn.LSTM's per-call
    overhead made it ~3x slower for one token)."""

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
        fc_w, fc_b = detached_t(model.fc)
        self.register_buffer("fc_w", fc_w)
        self.register_buffer("fc_b", fc_b)

    def forward(self, token: torch.Tensor, state: LSTMState):
        h, c = state
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
        return torch.addmm(self.fc_b, x, self.fc_w), (torch.stack(hs), torch.stack(cs))


class LSTMDecodeGraph(nn.Module):
    """decode.onnx: (input_ids (B, T), h, c (L, B, H)) -> (last logits (B, V), h, c)."""

    def __init__(self, model: SimpleLSTM_LM):
        super().__init__()
        self.model = model

    def forward(self, input_ids, h, c):
        out, (h, c) = self.model.hidden_states(input_ids, (h, c))  # (B, T, H)
        return self.model.fc(out[:, -1]), h, c


# ----------------------------------------------------------------------------- kernels


@dataclass(frozen=True)
class LSTMKernelWeights:
    """The LSTM's weights in kernel layout, cast once to the compute dtype: emb (V, E); per
    layer w_ih_t (In, 4H) for x @ W_ih^T, w_hh (4H, H), bias (4H,) = b_ih + b_hh."""

    emb: torch.Tensor
    layers: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...]
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
        emb = model.embedding.weight.detach().to(dtype)
        return cls(emb=emb, layers=tuple(layers), hidden_dim=lstm.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        return self.emb.dtype


def lstm_hidden_states(
    weights: LSTMKernelWeights, input_ids: torch.Tensor, state: LSTMState | None = None
) -> tuple[torch.Tensor, LSTMState]:
    """(top-layer states (B, T, H), (h, c) each (L, B, H)), as nn.LSTM returns them: states and
    h in the weights' dtype, c in float32 (a given c may be either). Per layer: one x @ W_ih^T
    matmul over all steps + one `lstm_sequence` launch for the recurrence."""
    from fastlm.kernels.lstm import lstm_sequence  # triton: only on the kernels

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
        x, (h, c) = lstm_sequence(
            x_proj, h0.to(weights.dtype).contiguous(), c0.contiguous(), w_hh, bias
        )
        hs.append(h)
        cs.append(c)
    return x, (torch.stack(hs), torch.stack(cs))


class KernelLSTM(nn.Module):
    """SimpleLSTM_LM on the Triton kernels (`Architecture.kernel_model`): weights cast once to
    `dtype`; h in that dtype between steps, c in float32 (rounding c every step loses its small
    updates: long texts drift). States and logits come out float32."""

    def __init__(self, model: SimpleLSTM_LM, dtype: torch.dtype):
        super().__init__()
        self.config, self.embedding, self.fc = model.config, model.embedding, model.fc
        self.weights = LSTMKernelWeights.from_model(model, dtype)

    def new_state(self, batch: int, max_seq: int = 0, device=None) -> None:
        return None  # lstm_hidden_states starts from zeros in the right dtypes

    def hidden_states(self, input_ids, state=None):
        out, state = lstm_hidden_states(self.weights, input_ids, state)
        return out.float(), state

    def step_module(self, static: bool = False) -> KernelLSTMStep:
        return KernelLSTMStep(self)


class KernelLSTMStep(nn.Module):
    """forward(token (1,), (h, c)) -> (logits (1, V) float32, (h, c)): per layer x @ W_ih^T,
    then one fused `lstm_step` launch."""

    def __init__(self, kernel_model: KernelLSTM):
        super().__init__()
        self.weights, self.fc = kernel_model.weights, kernel_model.fc

    def forward(self, token: torch.Tensor, state: LSTMState):
        from fastlm.kernels.lstm import lstm_step  # triton: only on the kernels

        x = self.weights.emb[token]  # (1, E)
        hs, cs = [], []
        for (w_ih_t, w_hh, bias), h, c in zip(self.weights.layers, *state):
            x, c_new = lstm_step(torch.mm(x, w_ih_t), h.to(x.dtype), c.float(), w_hh, bias)
            hs.append(x)
            cs.append(c_new)
        return self.fc(x.float()), (torch.stack(hs), torch.stack(cs))


# ----------------------------------------------------------------------------- architecture


class LSTMArchitecture(Architecture):
    name = "lstm"
    config_class = LSTMConfig
    model_class = SimpleLSTM_LM
    quantized_onnx_ops = ("LSTM",)

    def state_chunks(self, model, inputs, chunk):
        """The (h, c) state carries the text on chunk by chunk: memory bounded for any length
        (a full-length pass costs ~23-39 KB per token)."""
        state = None
        for start in range(0, inputs.shape[1], chunk):
            states, state = model.hidden_states(inputs[:, start : start + chunk], state)
            yield start, states

    def window_state(self, state):
        return state

    # compile_sequence: None, nn.LSTM stays one opaque op under torch.compile (no gain measured)

    def summary(self, config: dict) -> str:
        return (
            f"LSTM language model: {config.get('num_layers')} layers x "
            f"{config.get('hidden_dim')} hidden units, {config.get('embedding_dim')}-d token "
            "embeddings, unidirectional"
        )

    def embed_window(self, config) -> int:
        return EMBED_WINDOW

    def decode_graph(self, model, batch):
        h = torch.zeros(model.config.num_layers, batch, model.config.hidden_dim)
        axes = {1: "batch"}
        inputs, outputs = {"h": axes, "c": axes}, {"h_out": axes, "c_out": axes}
        return LSTMDecodeGraph(model), (h, h.clone()), inputs, outputs

    def state_facts(self, config) -> dict:
        return {"hidden_dim": config.hidden_dim}

    def kernel_model(self, model, dtype) -> KernelLSTM:
        return KernelLSTM(model, dtype)


LSTM = register(LSTMArchitecture())
