"""Triton kernels for fastlm's hot loops, and the PyTorch references they are checked against.

    fastlm.kernels.reference  plain PyTorch (CPU fallback and parity oracle)
    fastlm.kernels.lstm       fused LSTM step and persistent LSTM layer (Triton)
    fastlm.kernels.attention  causal flash attention forward (Triton)
    fastlm.kernels.common     what the Triton modules share: input checks, limits, configs

The Triton modules import triton at import time, so import them only after
`triton_available()` (or `cuda_kernels_available()` for real GPU runs) says yes. On a CPU
machine they run under the Triton interpreter when TRITON_INTERPRET=1 is set before they
are imported (slow: for tests only). The ahead-of-time compile of every variant for
sm_90/sm_80 (no GPU needed) is development tooling: tools/aot.py, run by scripts/aot_compile.py.
"""

from __future__ import annotations

import torch

from fastlm.kernels import reference

__all__ = ["cuda_kernels_available", "reference", "triton_available"]


def triton_available() -> bool:
    """True when the triton package can be imported (on any machine, GPU or not)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def cuda_kernels_available() -> bool:
    """True when the Triton kernels can run compiled: triton importable and a CUDA device."""
    return triton_available() and torch.cuda.is_available()
