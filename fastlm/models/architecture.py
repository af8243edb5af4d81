"""`Architecture`: everything the rest of fastlm may ask about one model family.

Backends, export, parity, training and benchmarks never test which model they hold; they ask
its architecture (`fastlm.models.architecture_of(config)`). An architecture lives in one file,
fastlm/models/<name>.py, holding its config dataclass, the `nn.Module`, its one-token step
module, its ONNX decode graph, its kernel form and a subclass of `Architecture` registered with
`register`.

Every model module speaks one protocol (both seed models implement it):
- `hidden_states(input_ids (B, T), state=None) -> (states (B, T, C), state)`: top-layer states;
  `state` continues a sequence (None: start one). What a state holds is the model's business
  (the LSTM's (h, c), the Transformer's KV cache); callers only pass it back.
- `new_state(batch, max_seq, device=None) -> state`: an empty state able to hold `max_seq` tokens.
- `fc`: the output projection C -> vocab (None in an embedding tower's encoder);
  `embedding`: the token table; `config`: its config dataclass (a `config.ConfigBase`).
- `step_module()`: an `nn.Module` `(token (1,) int64, state) -> (logits (1, V), state)`, the
  batch-1 decode step, weights laid out for speed; `step_module(static=True)` has fixed shapes
  for torch.compile.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Architecture:
    """The knowledge of one architecture. Subclasses set the class attributes and override the
    methods that raise NotImplementedError."""

    name: str  # the config's `architecture` string
    config_class: type
    model_class: type[nn.Module]
    # True: full-sequence graphs materialise (B, heads, T, T) attention scores, so scoring
    # batches on such backends are also bounded in score cells. A fact of the export manifest
    # ("model" entry), which the torch-free runtime reads; no torch code branches on it.
    attention_scores: bool = False
    # Extra ONNX op types int8 quantization covers besides MatMul/Gemm.
    quantized_onnx_ops: tuple[str, ...] = ()

    def build(self, config) -> nn.Module:
        return self.model_class.from_config(config)

    def summary(self, config: dict) -> str:
        """One line describing a model of this architecture from its config.json (a dict that
        may lack fields), for model cards."""
        raise NotImplementedError

    def embed_window(self, config) -> int:
        """Tokens per embedding window: longer texts are embedded window by window."""
        raise NotImplementedError

    # ------------------------------------------------------------------ long texts and state
    def state_chunks(self, model: nn.Module, inputs: torch.Tensor, chunk: int):
        """(start, top-layer states (B, <= chunk, C)) over the time axis of inputs (B, T).

        Default: the context is bounded (config.max_len), so the states are computed in one
        pass and handed out `chunk` positions at a time (callers bound what they derive from
        them, e.g. logits). A recurrent architecture overrides this to carry its state chunk by
        chunk, so memory is bounded for any length."""
        states = model.hidden_states(inputs)[0]
        for start in range(0, inputs.shape[1], chunk):
            yield start, states[:, start : start + chunk]

    def window_state(self, state):
        """The state the next of consecutive evaluation windows starts from, given the state
        the previous window ended with: None (windows are independent) unless the architecture
        carries a text on across windows."""
        return None

    def decode_state_tokens(self, cache_len: int) -> int | None:
        """Tokens the decode state is sized for when a generation may reach `cache_len` tokens
        (a compiled decode step is specialised per size); None: the state's size is constant."""
        return None

    def compile_sequence(self, fn, **compile_options):
        """`fn` (a full-sequence pass: embed or score) under torch.compile, or None where
        compiling it does not pay (the pass then stays eager, with its own memory bounds)."""
        return None

    def facts(self, config, embedding_dim: int) -> dict[str, Any]:
        """What a reader of the model needs without torch: `fastlm.backend.ModelInfo` on every
        backend, and the "model" entry of an export's manifest."""
        return {
            "architecture": config.architecture,
            "vocab_size": config.vocab_size,
            "embed_dim": embedding_dim,
            "max_len": config.max_len,
            "num_layers": config.num_layers,
            "embed_window": self.embed_window(config),
            "attention_scores": self.attention_scores,
            "state": self.state_facts(config),
        }

    # ------------------------------------------------------------------ ONNX
    def decode_graph(self, model: nn.Module, batch: int) -> tuple[nn.Module, tuple, dict, dict]:
        """(module, example state tensors, state input axes, state output axes) for decode.onnx:
        module(input_ids (B, T), *state) -> (logits, *new state): the last position's (B, V),
        or with control inputs the positions they pick (B, K, V) (fastlm/ort/format.py). The
        axes dicts map names to their dynamic axes; the runtime feeds outputs back as inputs, in
        order."""
        raise NotImplementedError

    def state_facts(self, config) -> dict[str, Any]:
        """The state's sizes, stored in an export's manifest for readers of the graphs."""
        raise NotImplementedError

    # ------------------------------------------------------------------ kernels
    def kernel_model(self, model: nn.Module, dtype: torch.dtype) -> nn.Module:
        """The model on fastlm's Triton kernels: the same protocol (hidden_states, new_state,
        fc, embedding, config, step_module), states and logits in float32."""
        raise NotImplementedError

    def kernel_ready(self, config) -> str | None:
        """Why the kernels cannot run this config (None: they can)."""
        return None

    # ------------------------------------------------------------------ cost
    def mixing_flops(self, config, queries: int, keys: int) -> float:
        """FLOPs spent mixing tokens beyond the weight matmuls when `queries` tokens each look
        at `keys` tokens (attention's QK^T and AV); 0 when the weights do all the mixing."""
        return 0.0


_REGISTRY: dict[str, Architecture] = {}


def register(architecture: Architecture) -> Architecture:
    _REGISTRY[architecture.name] = architecture
    return architecture


def registered() -> dict[str, Architecture]:
    """What `register` has seen; `fastlm.models.architectures()` imports every file first."""
    return dict(_REGISTRY)


def detached_t(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """(W^T contiguous (in, out), bias (out,)) of a linear layer, for `torch.addmm`: on a CPU
    single-row decode step F.linear's transposed-weight path measured ~1.8x slower."""
    return linear.weight.detach().t().contiguous(), linear.bias.detach().clone()
