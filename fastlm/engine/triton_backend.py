"""The "triton" backend: fastlm's Triton kernels behind the eager backend's interface (CUDA only).

Each architecture supplies its kernel form (`Architecture.kernel_model`, fastlm/models/): the
same protocol as the model (hidden_states, new_state, fc, step_module) with its hot loops on
the kernels — the Transformer's causal attention, the LSTM's persistent sequence and fused step
kernels. This backend swaps that form in for the eager model: embeddings run the checkpoint's
embedding tower (models/embedder.py) with its encoder's states from the kernels
(`tower_embeddings`), scoring and decoding run the kernel model. No key-padding mask is passed:
batches are right-padded and the models are causal (fastlm/backend.py).

dtype option ("bf16" default, "fp16", "fp32"): the compute precision. "bf16" is the fastest;
"fp16" is more precise (10 mantissa bits against 7); "fp32" (IEEE products, no TF32) matches the
eager backend to ~1e-5 and gives the same greedy tokens. States and logits are always fp32.

`tower_embeddings` and the kernel models also run on CPU tensors under the Triton interpreter
(TRITON_INTERPRET=1 set before fastlm.kernels is imported; fp32/fp16 only): the tests check
them that way on small random models. The backend itself refuses to start without CUDA.
"""

from __future__ import annotations

import torch
from torch import nn

from fastlm.engine.eager import TorchBackend
from fastlm.engine.registry import backend_names
from fastlm.kernels import cuda_kernels_available, triton_available
from fastlm.models import architecture_of
from fastlm.models.embedder import EmbeddingTower

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def tower_embeddings(
    tower: EmbeddingTower,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    kernel_encoder: nn.Module | None = None,
) -> torch.Tensor:
    """(B, dim) float32: what `tower(input_ids, attention_mask)` computes, with the encoder's
    top-layer states from its kernel form (built from the tower when `kernel_encoder` is None).
    No input checks."""
    encoder = kernel_encoder or architecture_of(tower.encoder).kernel_model(tower.encoder, dtype)
    states = encoder.hidden_states(input_ids)[0]
    return tower.pool(states, input_ids, attention_mask).float()


class TritonBackend(TorchBackend):
    """Triton kernels on a CUDA GPU; see the module docstring. Option: dtype="bf16"."""

    name = "triton"

    def __init__(self, checkpoint, device, threads, dtype: str = "bf16"):
        device = torch.device(device)
        if not triton_available():  # checked here, not at import: triton takes ~0.3 s to load
            raise ImportError(
                'the triton backend needs triton: pip install "fastlm[gpu]"', name="triton"
            )
        if device.type != "cuda" or not cuda_kernels_available():
            why = f"device is {device}" if device.type != "cuda" else "no CUDA device"
            raise ValueError(
                f"the triton backend needs a CUDA GPU and the triton package ({why}); "
                f"available backends: {backend_names() + ['auto']}"
            )
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        why = architecture_of(checkpoint.config).kernel_ready(checkpoint.config)
        if why:
            raise ValueError(f"{why}: use backend='eager'")
        super().__init__(checkpoint, device, threads)
        self.dtype_name, self.dtype = dtype, DTYPES[dtype]
        lm = self.model
        self.model = self.architecture.kernel_model(lm, self.dtype)
        encoder = self.embedder.encoder  # the LM itself, or a trained tower's own copy
        self.kernel_encoder = (
            self.model if encoder is lm else self.architecture.kernel_model(encoder, self.dtype)
        )

    def _embed(self, ids, mask):
        return tower_embeddings(self.embedder, ids, mask, self.dtype, self.kernel_encoder)

    def details(self) -> dict:
        return {**super().details(), "dtype": self.dtype_name}
