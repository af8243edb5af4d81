"""Plain helpers the Triton kernel tests share (test_kernels_*.py, test_triton_backend.py).

No triton import here: the test modules skip themselves without it before importing
fastlm.kernels. TF32 is switched off per test by conftest.py's `no_tf32` fixture.
"""

from __future__ import annotations

import pytest
import torch

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"

DTYPE_TOLERANCES = [  # (dtype, atol, rtol)
    pytest.param(torch.float32, 3e-4, 1e-3, id="fp32"),
    pytest.param(torch.float16, 5e-3, 1e-2, id="fp16"),
    pytest.param(torch.bfloat16, 1e-2, 5e-2, id="bf16"),
]


def skip_unless_runnable(dtype: torch.dtype) -> None:
    """bf16 runs on CUDA only (a limit of the interpreter, not of the kernels)."""
    if dtype == torch.bfloat16 and not ON_GPU:
        pytest.skip("needs CUDA: triton 3.6's interpreter computes tl.dot on raw bf16 bits")


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, atol, rtol) -> None:
    """Like torch.testing.assert_close, but report the worst element and where it is."""
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    diff = (actual.float() - expected.float()).abs()
    allowed = atol + rtol * expected.float().abs()
    if not bool((diff <= allowed).all()):  # NaN also fails here
        worst = diff.nan_to_num(float("inf")).argmax()
        idx = tuple(int(i) for i in torch.unravel_index(worst, diff.shape))
        pytest.fail(
            f"{name}: max abs error {diff.max().item():.3e} at index {idx} "
            f"(got {actual[idx].item():.6f}, expected {expected[idx].item():.6f}; "
            f"atol={atol}, rtol={rtol})"
        )
