"""What the Triton kernel modules share (fastlm.kernels.common): input checks and their typed
errors, the one fixed config under the interpreter, the autotuned launch path, and the
compile-time block checks inside the kernels.

Without CUDA the kernels run under the Triton interpreter (conftest.py sets TRITON_INTERPRET=1).
"""

from __future__ import annotations

import functools

import pytest
import torch
from kernel_helpers import DEVICE, ON_GPU

pytest.importorskip("triton", reason="the Triton kernels need the triton package")

import triton  # noqa: E402
from triton.errors import TritonError  # noqa: E402

from fastlm.kernels import attention, common, lstm, reference  # noqa: E402

only_interpreted = pytest.mark.skipif(ON_GPU, reason="checks the interpreter's launch path")


def lstm_args(B: int = 3, T: int = 5, H: int = 40, seed: int = 0) -> list[torch.Tensor]:
    """fp32 x_proj (B, T, 4H), h0, c0 (B, H), w_hh (4H, H), bias (4H,) on DEVICE."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(B, T, 4 * H), (B, H), (B, H), (4 * H, H), (4 * H,)]
    scales = [1.0, 0.5, 1.0, H**-0.5, H**-0.5]
    return [(torch.randn(s, generator=gen) * k).to(DEVICE) for s, k in zip(shapes, scales)]


# ----------------------------------------------------------------------------- shared checks


def test_shared_checks_raise_typed_errors() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="q must be a torch.Tensor, got list"):
        common.check_is_tensor("q", [1.0])
    with pytest.raises(TypeError, match="h must be float32, float16 or bfloat16, got torch.int64"):
        common.check_float_dtype("h", x.long())
    with pytest.raises(ValueError, match=r"w must have shape \(A, B\) = \(2, 4\), got \(2, 3\)"):
        common.check_like("w", x, (2, 4), "(A, B)", x)
    with pytest.raises(TypeError, match="w must have dtype torch.float16 like the other inputs"):
        common.check_like("w", x, (2, 3), "(A, B)", x.half())
    with pytest.raises(ValueError, match="w must be contiguous"):
        common.check_like("w", x.t(), (3, 2), "(B, A)", x)
    with pytest.raises(ValueError, match="x is on cpu: the kernels need a CUDA device"):
        common.check_runnable("x", x, "the kernels need", "mod", interpreted=False)
    with pytest.raises(NotImplementedError, match="x is bfloat16, which the Triton interpreter"):
        common.check_runnable("x", x.bfloat16(), "the kernels need", "mod", interpreted=True)
    common.check_runnable("x", x, "the kernels need", "mod", interpreted=True)  # accepted


def test_kernel_modules_share_one_set_of_limits() -> None:
    for module in (lstm, attention):
        assert module.SUPPORTED_DTYPES is common.SUPPORTED_DTYPES
        assert module.MAX_GRID_YZ == common.MAX_GRID_YZ == 65_535
    assert lstm.MIN_DOT == common.MIN_DOT == 16


@pytest.mark.parametrize(
    "module, needs",
    [
        (lstm, "the Triton LSTM kernels need a CUDA device"),
        (attention, "the Triton attention kernel needs a CUDA device"),
    ],
    ids=["lstm", "attention"],
)
def test_compiled_launchers_refuse_cpu_tensors_with_their_own_words(
    module, needs: str, monkeypatch
) -> None:
    """The CPU-tensor refusal a compiled kernel gives, reached on any machine by telling the
    launcher it is not interpreted; each module keeps its own wording and import hint."""
    monkeypatch.setattr(module, "_interpreted", lambda: False)
    hint = f"TRITON_INTERPRET=1 set before importing {module.__name__}, for tests"
    if module is lstm:
        x_proj, h0, c0, w_hh, bias = (t.cpu() for t in lstm_args(T=1))
        call = functools.partial(lstm.lstm_step, x_proj[:, 0].contiguous(), h0, c0, w_hh, bias)
        name = "h"
    else:
        q = torch.zeros(1, 1, 8, 16)
        call = functools.partial(attention.causal_attention, q, q, q)
        name = "q"
    with pytest.raises(ValueError, match=f"^{name} is on cpu: {needs}") as info:
        call()
    assert hint in str(info.value)


@pytest.mark.parametrize("launch", ["lstm_step", "lstm_sequence", "attention"])
def test_non_tensor_inputs_are_a_type_error(launch: str) -> None:
    x_proj, h0, c0, w_hh, bias = lstm_args()
    with pytest.raises(TypeError, match="must be a torch.Tensor, got list"):
        if launch == "lstm_step":
            lstm.lstm_step(x_proj[:, 0].contiguous(), h0.tolist(), c0, w_hh, bias)
        elif launch == "lstm_sequence":
            lstm.lstm_sequence(x_proj, h0, c0.tolist(), w_hh, bias)
        else:
            attention.causal_attention([0.0], [0.0], [0.0])


# ----------------------------------------------------------------------------- configs


@only_interpreted
def test_interpreter_lists_one_config_per_launcher() -> None:
    for B, H in [(1, 40), (3, 256), (64, 24)]:
        assert len(lstm.step_configs(B, H)) == len(lstm.sequence_configs(B, H)) == 1
    for dtype in (torch.float32, torch.float16):
        assert len(attention.attention_configs(dtype, 64)) == 1


class _LaunchSpy:
    """Stands in for a kernel: records each launch's keyword arguments, then runs the real one."""

    def __init__(self, kernel) -> None:
        self.kernel, self.calls = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append(kwargs)
            return self.kernel[grid](*args, **kwargs)

        return launch


class _NeverLaunched:
    def __getitem__(self, grid):
        raise AssertionError("the autotuner was launched under the interpreter")


def _expected(tile: tuple, names: tuple[str, str]) -> dict:
    return {names[0]: tile[0], names[1]: tile[1], "num_warps": tile[2], "num_stages": tile[3]}


@only_interpreted
def test_interpreter_launches_exactly_the_fixed_config(monkeypatch) -> None:
    """Each launcher runs the plain kernel once with its INTERPRETER config: no autotuner, so
    no timing loop and the same tiles on every run."""
    spies = {}
    for module, plain, tuned in [
        (lstm, "_lstm_step_kernel", "_lstm_step_tuned"),
        (lstm, "_lstm_sequence_kernel", "_lstm_sequence_tuned"),
        (attention, "_attn_fwd_kernel", "_attn_fwd_tuned"),
    ]:
        spies[plain] = _LaunchSpy(getattr(module, plain))
        monkeypatch.setattr(module, plain, spies[plain])
        monkeypatch.setattr(module, "_interpreted", lambda: True)  # it asks the kernel
        monkeypatch.setattr(module, tuned, _NeverLaunched())
    x_proj, h0, c0, w_hh, bias = lstm_args(B=17, H=72)  # B, H where a GPU has several
    lstm.lstm_step(x_proj[:, 0].contiguous(), h0, c0, w_hh, bias)
    lstm.lstm_sequence(x_proj, h0, c0, w_hh, bias)
    q = torch.randn(1, 2, 19, 64).half()
    attention.causal_attention(q, q, q)
    blocks = ("BLOCK_B", "BLOCK_H")
    want = {
        "_lstm_step_kernel": _expected(lstm.INTERPRETER_STEP_CONFIG, blocks),
        "_lstm_sequence_kernel": _expected(lstm.INTERPRETER_SEQUENCE_CONFIG, blocks),
        "_attn_fwd_kernel": _expected(attention.INTERPRETER_CONFIG, ("BLOCK_M", "BLOCK_N")),
    }
    for name, spy in spies.items():
        assert len(spy.calls) == 1, name
        assert {k: spy.calls[0][k] for k in want[name]} == want[name], name


@pytest.mark.parametrize("B, H", [(1, 256), (17, 40), (64, 24), (2, 8)])
def test_lstm_prune_matches_the_listed_candidates(B: int, H: int) -> None:
    """The GPU autotuners prune on the batch bucket to what step_configs / sequence_configs
    list for the shape, never to nothing."""
    args = {"B_BUCKET": triton.next_power_of_2(B), "H": H}
    for tuned, listed in [
        (lstm._lstm_step_tuned, lstm.step_configs(B, H, interpreted=False)),
        (lstm._lstm_sequence_tuned, lstm.sequence_configs(B, H, interpreted=False)),
    ]:
        pruned = lstm._prune(tuned.configs, args)
        assert pruned and [str(c) for c in pruned] == [str(c) for c in listed]
        if len(pruned) > 1:  # no block beyond the next power of two of its dimension (or 16)
            h_limit = max(16, triton.next_power_of_2(H))
            assert all(c.kwargs["BLOCK_B"] <= max(16, args["B_BUCKET"]) for c in pruned)
            assert all(c.kwargs["BLOCK_H"] <= h_limit for c in pruned)


def test_sequence_autotuner_restores_the_cell_state_buffer() -> None:
    assert lstm._lstm_sequence_tuned.restore_value == ["c_ptr"]
    assert "c_ptr" in lstm._lstm_sequence_kernel.arg_names


def _bench_three_times(kernel_call, quantiles):
    """A do_bench that runs every candidate three times, as the real one runs it many."""
    for _ in range(3):
        kernel_call()
    return [1.0, 1.0, 1.0]


@pytest.mark.parametrize("launch", ["lstm_step", "lstm_sequence", "attention"])
def test_autotuned_launch_survives_repeated_timing_runs(launch: str, monkeypatch) -> None:
    """The autotuned path, run under the interpreter with GPU candidate lists and a do_bench
    that runs each candidate three times: the results still match the reference, so no
    kernel's in-place update (lstm_sequence's cell state) is applied more than once."""
    module = attention if launch == "attention" else lstm
    tuned = {
        "lstm_step": "_lstm_step_tuned",
        "lstm_sequence": "_lstm_sequence_tuned",
        "attention": "_attn_fwd_tuned",
    }[launch]
    autotuner = getattr(module, tuned)
    monkeypatch.setitem(autotuner.__dict__, "do_bench", _bench_three_times)
    monkeypatch.setattr(autotuner, "cache", {})  # tune afresh, forget afterwards
    if launch == "attention":
        listed = functools.partial(attention.attention_configs, interpreted=False)
        monkeypatch.setattr(attention, "attention_configs", listed)
        q, k, v = (torch.randn(1, 2, 19, 16).to(DEVICE, torch.float16) for _ in "qkv")
        out = attention.causal_attention(q, k, v)
        torch.testing.assert_close(out, reference.causal_attention(q, k, v), atol=5e-3, rtol=1e-2)
    else:
        for name in ("step_configs", "sequence_configs"):
            listed = functools.partial(getattr(lstm, name), interpreted=False)
            monkeypatch.setattr(lstm, name, listed)
        x_proj, h0, c0, w_hh, bias = lstm_args(B=3, T=4, H=40)
        if launch == "lstm_step":
            args = (x_proj[:, 0].contiguous(), h0, c0, w_hh, bias)
            got, want = lstm.lstm_step(*args), reference.lstm_step(*args)
        else:
            out, state = lstm.lstm_sequence(x_proj, h0, c0, w_hh, bias)
            out_ref, state_ref = reference.lstm_layer(x_proj, h0, c0, w_hh, bias)
            got, want = (out, *state), (out_ref, *state_ref)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=3e-4, rtol=1e-3)
    assert len(autotuner.cache) == 1  # the autotuner did time candidates and pick one
    assert len(autotuner.configs_timings) > 1


# ----------------------------------------------------------------------------- static checks


@pytest.mark.parametrize(
    "tile, message",
    [
        ((8, 16, 2, 2), "BLOCK_B must be >= 16"),
        ((16, 24, 2, 2), "BLOCK_H must be a power of two"),
    ],
)
def test_lstm_kernels_assert_their_blocks_at_compile_time(tile: tuple, message: str) -> None:
    """A forced config that breaks a tile rule fails in the kernel itself (at compile time on
    a GPU, at launch under the interpreter), naming the block."""
    config = common.make_config(("BLOCK_B", "BLOCK_H"), tile)
    x_proj, h0, c0, w_hh, bias = lstm_args(T=2)
    x_t = x_proj[:, 0].contiguous()
    with pytest.raises(TritonError, match=message):
        lstm._launch_step(
            x_t, h0, c0, w_hh, bias, torch.empty_like(h0), torch.empty_like(c0), config
        )
    with pytest.raises(TritonError, match=message):
        out = torch.empty(3, 2, 40, device=DEVICE)
        lstm._launch_sequence(x_proj, h0, c0.clone(), w_hh, bias, out, config)


@pytest.mark.parametrize(
    "tile, D, message",
    [
        ((32, 64, 4, 2), 16, "BLOCK_M must be a multiple of BLOCK_N"),
        ((256, 64, 4, 2), 16, r"BLOCK_M must be <= 128"),
        ((64, 32, 4, 2), 24, "HEAD_DIM must be a power of two"),
    ],
)
def test_attention_kernel_asserts_its_blocks_at_compile_time(tile, D: int, message: str) -> None:
    config = common.make_config(("BLOCK_M", "BLOCK_N"), tile)
    q = torch.randn(1, 1, 8, D, device=DEVICE)
    out = torch.empty_like(q)
    with pytest.raises(TritonError, match=message):
        attention._launch(q, q, q, q, out, 0.25, False, config)
