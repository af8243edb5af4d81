"""Parity of the Triton LSTM kernels with fastlm.kernels.reference, and their input checks.

Without CUDA the kernels run under the Triton interpreter (conftest.py sets
TRITON_INTERPRET=1), at ~10 ms per program instance: shapes stay small and odd.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels need the triton package")

from fastlm.kernels import lstm as lstm_kernels  # noqa: E402
from fastlm.kernels import reference  # noqa: E402

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"

DTYPE_TOLERANCES = [  # (dtype, atol, rtol)
    pytest.param(torch.float32, 3e-4, 1e-3, id="fp32"),
    pytest.param(torch.float16, 5e-3, 1e-2, id="fp16"),
    pytest.param(torch.bfloat16, 1e-2, 5e-2, id="bf16"),
]


def skip_unless_runnable(dtype: torch.dtype) -> None:
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


def make_lstm_inputs(B: int, T: int, H: int, dtype: torch.dtype, seed: int = 0) -> dict:
    """x_proj (B, T, 4H), h0, c0 (B, H), w_hh (4H, H), bias (4H,); nn.LSTM-like scales."""
    gen = torch.Generator().manual_seed(seed)
    bound = H**-0.5  # nn.LSTM initialises every weight uniform in [-1/sqrt(H), 1/sqrt(H)]

    def uniform(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=gen) * 2 - 1) * bound

    tensors = {
        "x_proj": torch.randn(B, T, 4 * H, generator=gen),
        "h0": torch.randn(B, H, generator=gen) * 0.5,
        "c0": torch.randn(B, H, generator=gen),
        "w_hh": uniform(4 * H, H),
        "bias": 2 * uniform(4 * H),  # b_ih + b_hh
    }
    return {name: t.to(device=DEVICE, dtype=dtype) for name, t in tensors.items()}


def test_reference_matches_torch_lstm() -> None:
    """The reference's gate order and bias handling are torch.nn.LSTM's."""
    torch.manual_seed(0)
    rnn = torch.nn.LSTM(input_size=8, hidden_size=12, batch_first=True)
    x, h0, c0 = torch.randn(3, 5, 8), torch.randn(1, 3, 12), torch.randn(1, 3, 12)
    with torch.no_grad():
        expected, (h_n, c_n) = rnn(x, (h0, c0))
        x_proj = x @ rnn.weight_ih_l0.T
        bias = rnn.bias_ih_l0 + rnn.bias_hh_l0
        out, (h_t, c_t) = reference.lstm_layer(x_proj, h0[0], c0[0], rnn.weight_hh_l0, bias)
    assert_close("out", out, expected, 1e-5, 1e-5)
    assert_close("h_T", h_t, h_n[0], 1e-5, 1e-5)
    assert_close("c_T", c_t, c_n[0], 1e-5, 1e-5)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLERANCES)
@pytest.mark.parametrize("B, H", [(1, 256), (3, 256), (3, 40), (1, 72)])
def test_lstm_step_matches_reference(B: int, H: int, dtype, atol, rtol) -> None:
    skip_unless_runnable(dtype)
    a = make_lstm_inputs(B, 1, H, dtype)
    x_t = a["x_proj"][:, 0].contiguous()
    h, c = lstm_kernels.lstm_step(x_t, a["h0"], a["c0"], a["w_hh"], a["bias"])
    h_ref, c_ref = reference.lstm_step(x_t, a["h0"], a["c0"], a["w_hh"], a["bias"])
    assert_close("h_new", h, h_ref, atol, rtol)
    assert_close("c_new", c, c_ref, atol, rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLERANCES)
@pytest.mark.parametrize("B, H, T", [(1, 256, 1), (3, 256, 5), (3, 72, 17), (1, 40, 5)])
def test_lstm_sequence_matches_reference(B: int, H: int, T: int, dtype, atol, rtol) -> None:
    skip_unless_runnable(dtype)
    a = make_lstm_inputs(B, T, H, dtype, seed=T)
    args = (a["x_proj"], a["h0"], a["c0"], a["w_hh"], a["bias"])
    out, (h_t, c_t) = lstm_kernels.lstm_sequence(*args)
    out_ref, (h_ref, c_ref) = reference.lstm_layer(*args)
    assert_close("out", out, out_ref, atol, rtol)
    assert_close("h_T", h_t, h_ref, atol, rtol)
    assert_close("c_T", c_t, c_ref, atol, rtol)
    assert a["c0"].equal(make_lstm_inputs(B, T, H, dtype, seed=T)["c0"]), "c0 was modified"


def _step_args(**changes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    a = make_lstm_inputs(3, 1, 40, torch.float32)
    step = {"x_proj_t": a["x_proj"][:, 0].contiguous(), "h": a["h0"], "c": a["c0"]}
    step.update(w_hh=a["w_hh"], bias=a["bias"])
    step.update(changes)
    return tuple(step.values())


BAD_STEP_INPUTS = [  # (changed inputs, exception, message fragment)
    pytest.param({"h": torch.randn(40, 3).t()}, ValueError, "h must be contiguous", id="h-strided"),
    pytest.param({"c": torch.randn(3, 40).half()}, TypeError, "c must have dtype", id="c-dtype"),
    pytest.param({"h": torch.randn(3, 40).long()}, TypeError, "h must be float32", id="h-int"),
    pytest.param(
        {"w_hh": torch.randn(160, 41)},
        ValueError,
        r"w_hh must have shape \(4H, H\)",
        id="w_hh-shape",
    ),  # fmt: skip
    pytest.param({"bias": torch.randn(161)}, ValueError, "bias must have shape", id="bias-shape"),
    pytest.param(
        {"x_proj_t": torch.randn(3, 40)}, ValueError, "x_proj_t must have shape", id="x-shape"
    ),  # fmt: skip
    pytest.param({"c": torch.randn(2, 40)}, ValueError, "c must have shape", id="c-batch"),
]


@pytest.mark.parametrize("changes, error, match", BAD_STEP_INPUTS)
def test_lstm_step_rejects_bad_input(changes: dict, error: type, match: str) -> None:
    changes = {name: t.to(DEVICE) for name, t in changes.items()}
    with pytest.raises(error, match=match):
        lstm_kernels.lstm_step(*_step_args(**changes))


def test_lstm_sequence_rejects_bad_input() -> None:
    a = make_lstm_inputs(3, 4, 40, torch.float32)
    with pytest.raises(ValueError, match="x_proj must have shape"):
        lstm_kernels.lstm_sequence(a["x_proj"][:, 0], a["h0"], a["c0"], a["w_hh"], a["bias"])
    with pytest.raises(ValueError, match="x_proj must have shape"):
        lstm_kernels.lstm_sequence(a["x_proj"][:, :, :80], a["h0"], a["c0"], a["w_hh"], a["bias"])
    with pytest.raises(ValueError, match="x_proj must be contiguous"):
        x_strided = a["x_proj"].transpose(0, 1).contiguous().transpose(0, 1)
        lstm_kernels.lstm_sequence(x_strided, a["h0"], a["c0"], a["w_hh"], a["bias"])


@pytest.mark.skipif(ON_GPU, reason="checks the interpreter's refusal of bf16")
def test_interpreter_refuses_bf16() -> None:
    with pytest.raises(NotImplementedError, match="bfloat16"):
        lstm_kernels.lstm_step(*(t.bfloat16() for t in _step_args()))


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA: on CPU the interpreter accepts CPU tensors")
def test_compiled_kernel_refuses_cpu_tensors() -> None:
    with pytest.raises(ValueError, match="needs a CUDA device"):
        lstm_kernels.lstm_step(*(t.cpu() for t in _step_args()))
