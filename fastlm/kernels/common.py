"""What the Triton kernel modules share: input checks, limits, interpreter handling, configs.

    limits        SUPPORTED_DTYPES, MIN_DOT, MAX_GRID_YZ
    checks        check_is_tensor, check_float_dtype, check_runnable, check_like
    interpreter   is_interpreted (triton decides it per kernel, as the kernel is decorated)
    configs       make_config, fits_shape, launch_kwargs, pick_kernel, dot_precision
    in kernels    MIN_DOT_CONSTEXPR, for the kernels' tl.static_assert checks

Error types and messages are part of the kernels' interface (tests and callers match on them),
so each check takes the words that differ between kernels (e.g. "the Triton attention kernel
needs") from its caller instead of rephrasing them.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_DOT = 16  # tl.dot needs every tile dimension >= 16
MAX_GRID_YZ = 65_535  # CUDA limit on the 2nd and 3rd grid dimensions
# The same bound for jit code, which may only read globals that are tl.constexpr objects.
# Kernels spell their tl.static_assert checks out in their own body rather than in a shared
# jit helper: a failure inside a called function reaches the caller as a CompilationError
# that points at the call and keeps the assert's message only in its __cause__.
MIN_DOT_CONSTEXPR = tl.constexpr(MIN_DOT)


# ----------------------------------------------------------------------------- interpreter


def is_interpreted(kernel: object) -> bool:
    """True when `kernel` (a @triton.jit function) runs under the Triton interpreter. Triton
    reads TRITON_INTERPRET when it decorates a kernel, so this is the mode the kernel module
    was imported in, whatever the environment says now."""
    return isinstance(kernel, InterpretedFunction)


# ----------------------------------------------------------------------------- input checks


def check_is_tensor(name: str, t: object) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def check_float_dtype(name: str, t: object) -> None:
    """TypeError unless t is a tensor of one of SUPPORTED_DTYPES."""
    check_is_tensor(name, t)
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def check_runnable(name: str, t: torch.Tensor, needs: str, module: str, interpreted: bool) -> None:
    """Refuse what the kernels cannot run: CPU tensors when compiled (ValueError), bf16 under
    the interpreter (NotImplementedError). needs: who needs CUDA, e.g. "the Triton LSTM
    kernels need"; module: the kernel module to import after setting TRITON_INTERPRET=1."""
    if not (t.is_cuda or interpreted):
        raise ValueError(
            f"{name} is on {t.device}: {needs} a CUDA device "
            f"(or TRITON_INTERPRET=1 set before importing {module}, for tests)"
        )
    if interpreted and t.dtype == torch.bfloat16:
        # triton 3.6's interpreter computes tl.dot on the raw bf16 bits: a wrong answer
        raise NotImplementedError(
            f"{name} is bfloat16, which the Triton interpreter cannot run correctly; "
            "use float32/float16 on CPU or run on a CUDA device"
        )


def check_like(
    name: str, t: object, shape: tuple[int, ...], layout: str, like: torch.Tensor
) -> None:
    """Raise a ValueError/TypeError naming `name` unless t is a contiguous tensor of `shape`
    (described as `layout`, e.g. "(B, H)") with like's dtype and device."""
    check_is_tensor(name, t)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {layout} = {shape}, got {tuple(t.shape)}")
    if t.dtype != like.dtype:
        raise TypeError(f"{name} must have dtype {like.dtype} like the other inputs, got {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {like.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous; call .contiguous() on it first")


# ----------------------------------------------------------------------------- configs


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input_precision: fp32 inputs get full-precision products (no TF32), so fp32
    parity holds at 3e-4; fp16/bf16 products are exact in either mode."""
    return "ieee" if dtype == torch.float32 else "tf32"


def make_config(names: tuple[str, str], tile: tuple[int, int, int, int]) -> triton.Config:
    """triton.Config from a (block, block, num_warps, num_stages) tuple; names: the two
    block constexprs, e.g. ("BLOCK_M", "BLOCK_N")."""
    first, second, num_warps, num_stages = tile
    kwargs = {names[0]: first, names[1]: second}
    return triton.Config(kwargs, num_warps=num_warps, num_stages=num_stages)


def fits_shape(configs: list[triton.Config], sizes: dict[str, int]) -> list[triton.Config]:
    """The configs whose blocks do not overshoot their dimension: sizes maps a block name to
    its dimension, and a block above max(MIN_DOT, next power of two of it) only computes
    masked-off rows. Never empty: with none fitting, the smallest tile is kept."""
    limits = {name: max(MIN_DOT, triton.next_power_of_2(n)) for name, n in sizes.items()}
    kept = [c for c in configs if all(c.kwargs[k] <= limit for k, limit in limits.items())]
    if kept:
        return kept

    def area(c: triton.Config) -> tuple[int, int]:
        return math.prod(c.kwargs[name] for name in sizes), c.num_warps

    return [min(configs, key=area)]


def launch_kwargs(config: triton.Config) -> dict:
    """A config as keyword arguments of a plain (not autotuned) kernel launch."""
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


def pick_kernel(configs: list[triton.Config], tuned: object, plain: object) -> tuple[object, dict]:
    """(kernel, fixed launch kwargs): the autotuner when there is a choice to make, else the
    plain kernel with the one config spelled out (no timing loop for a single candidate, and
    never one under the interpreter, whose config lists have one entry)."""
    if len(configs) > 1:
        return tuned, {}
    return plain, launch_kwargs(configs[0])
