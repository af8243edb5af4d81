"""Ahead-of-time compile of every Triton kernel variant for a GPU target, without a GPU.

Triton 3.6 ships its own ptxas, so `triton.compile(ASTSource(...), target=GPUTarget("cuda", 90,
32))` runs the whole pipeline (TTIR -> TTGIR -> LLVM IR -> PTX -> cubin) on a CPU machine.
What the compiler reports is what matters on a real GPU and what the interpreter hides:

    registers per thread   (255 is the ceiling; past it ptxas spills to local memory)
    spill stores / loads   (bytes per thread; a spill in a hot loop costs DRAM round trips)
    shared memory          (bytes per program; over the SM's limit the launch fails)

A variant is one (kernel, dtype, constexprs, launch options) combination the launchers can
pick: the configs come from the launchers' own `step_configs`, `sequence_configs` and
`attention_configs` (every candidate the GPU autotuners may time, whatever mode this process
imported the kernels in), so this list cannot drift from what the engine launches. Arguments are
specialized as the runtime specializes them (pointers and multiples of 16 get
tt.divisibility=16), so the code compiled here is the code a launch would compile.

The kernel modules must be imported with the interpreter off (TRITON_INTERPRET unset):
`compile_variant` raises a RuntimeError otherwise. scripts/aot_compile.py is the CLI. Not part
of the installed package: development tooling (tools/), run from a checkout.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastlm.kernels import attention, lstm
from fastlm.kernels.common import dot_precision

# Shared memory a program may use (opt-in maximum per block): sm_80 163 KiB, sm_90 227 KiB
SHARED_LIMIT = {80: 166_912, 90: 232_448}
TYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
DTYPES = tuple(TYPE_NAMES)
HIDDEN_SIZES = (24, 40, 256)  # BLOCK_K 32 / 64 / 64 with odd and round H; 256 ships
# batch sizes: 1 (decode: 16-row tiles only), odd 17 and 33 (every tile), 64 (B % 16 == 0
# compiles other code); the coverage test checks they reach every config the autotuners hold
STEP_BATCHES = (1, 17, 33, 64)
_DIVISIBLE = [["tt.divisibility", 16]]


@dataclass(frozen=True)
class Variant:
    """One compile unit: a kernel, the runtime types of its arguments, its constexprs."""

    kernel: str  # "lstm_step" | "lstm_sequence" | "attention"
    dtype: torch.dtype
    constexprs: dict
    options: dict  # num_warps, num_stages
    sizes: dict = field(default_factory=dict)  # example runtime values of the int arguments

    @property
    def label(self) -> str:
        names = {"BLOCK_B": "B", "BLOCK_H": "H", "BLOCK_K": "K", "BLOCK_M": "M", "BLOCK_N": "N"}
        blocks = "x".join(str(self.constexprs[k]) for k in names if k in self.constexprs)
        extra = [f"d{self.constexprs['HEAD_DIM']}"] if "HEAD_DIM" in self.constexprs else []
        extra += ["mask"] if self.constexprs.get("HAS_MASK") else []
        if self.kernel.startswith("lstm"):  # B matters too: B % 16 == 0 compiles other code
            extra.append(f"B={self.sizes['B']} H={self.sizes['H']}")
        opts = f"w{self.options['num_warps']}s{self.options['num_stages']}"
        return " ".join([self.kernel, TYPE_NAMES[self.dtype], *extra, blocks, opts])


@dataclass(frozen=True)
class Report:
    """What ptxas and triton say about one compiled variant."""

    variant: Variant
    arch: int
    registers: int
    spill_stores: int
    spill_loads: int
    shared: int  # dynamic shared memory triton allocates, bytes per program
    seconds: float

    @property
    def problems(self) -> list[str]:
        """Why this variant fails the check: spills outside fp32, or too much shared memory."""
        found = []
        spilled = self.spill_stores + self.spill_loads
        if spilled and self.variant.dtype != torch.float32:
            found.append(f"spills {self.spill_stores}/{self.spill_loads} bytes")
        if self.shared > SHARED_LIMIT[self.arch]:
            found.append(f"shared {self.shared} > {SHARED_LIMIT[self.arch]}")
        return found


# ----------------------------------------------------------------------------- variants


def _lstm_variant(kernel: str, dtype: torch.dtype, config: triton.Config, sizes: dict) -> Variant:
    constexprs = {**config.kwargs, "BLOCK_K": lstm.block_k(sizes["H"])}
    constexprs["DOT_PRECISION"] = dot_precision(dtype)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    return Variant(kernel, dtype, constexprs, options, sizes)


def lstm_step_variants(dtypes=DTYPES, hidden=HIDDEN_SIZES, batches=STEP_BATCHES) -> list[Variant]:
    out = []
    for dtype in dtypes:
        for H in hidden:
            for B in batches:
                for config in lstm.step_configs(B, H, interpreted=False):
                    out.append(_lstm_variant("lstm_step", dtype, config, {"B": B, "H": H}))
    return _unique(out)


def lstm_sequence_variants(
    dtypes=DTYPES, hidden=HIDDEN_SIZES, batches=STEP_BATCHES
) -> list[Variant]:
    out = []
    for dtype in dtypes:
        for H in hidden:
            for B in batches:
                sizes = {"B": B, "T": 7, "H": H}
                for config in lstm.sequence_configs(B, H, interpreted=False):
                    out.append(_lstm_variant("lstm_sequence", dtype, config, sizes))
    return _unique(out)


def attention_variants(
    dtypes=DTYPES, head_dims=attention.SUPPORTED_HEAD_DIMS, masks=(False, True)
) -> list[Variant]:
    out = []
    for dtype in dtypes:
        for head_dim in head_dims:
            for config in attention.attention_configs(dtype, head_dim, interpreted=False):
                for has_mask in masks:
                    constexprs = {"HEAD_DIM": head_dim, **config.kwargs, "HAS_MASK": has_mask}
                    constexprs["DOT_PRECISION"] = dot_precision(dtype)
                    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
                    # strides of q/k/v heads split off a fused (B, T, 3C) qkv projection
                    C = 4 * head_dim
                    sizes = {"NH": 4, "T": 300, "T_BUCKET": 512, "stride_t": 3 * C}
                    out.append(Variant("attention", dtype, constexprs, options, sizes))
    return _unique(out)


def all_variants() -> list[Variant]:
    """Every variant the launchers can pick for the supported dtypes and head dims."""
    return lstm_step_variants() + lstm_sequence_variants() + attention_variants()


def quick_variants() -> list[Variant]:
    """A representative subset for CI: shipped sizes, each kernel, low precision first."""
    low = (torch.bfloat16,)
    return (
        lstm_step_variants(low, (256,), (1, 64))
        + lstm_sequence_variants((torch.bfloat16, torch.float32), (256,), (3,))
        + attention_variants(low, (64,), (False,))[:2]
    )


def _unique(variants: list[Variant]) -> list[Variant]:
    """Drop repeats: same kernel, dtype, constexprs, options and 16-divisible int arguments
    (H = 40 and H = 256 compile to different code: only 256 gets aligned vector loads)."""
    seen, out = set(), []
    for v in variants:
        aligned = tuple(sorted(k for k, n in v.sizes.items() if n % 16 == 0))
        key = (v.kernel, v.dtype, tuple(v.constexprs.items()), tuple(v.options.items()), aligned)
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


# ----------------------------------------------------------------------------- compile


def _kernel_and_types(variant: Variant) -> tuple[object, dict[str, str], dict[str, int]]:
    """(JIT function, {argument: triton type}, {int argument: example value})."""
    ptr = "*" + TYPE_NAMES[variant.dtype]
    sizes = variant.sizes
    if variant.kernel == "lstm_step":
        fn = lstm._lstm_step_kernel
        types = {n: ptr for n in ("x_ptr", "h_ptr", "w_ptr", "bias_ptr", "h_out_ptr")}
        types.update(c_ptr="*fp32", c_out_ptr="*fp32", B="i32", H="i32")  # engine keeps c fp32
        types["B_BUCKET"] = "i32"
        return fn, types, {**_batch(sizes), "H": sizes["H"]}
    if variant.kernel == "lstm_sequence":
        fn = lstm._lstm_sequence_kernel
        types = {n: ptr for n in ("x_ptr", "h0_ptr", "w_ptr", "bias_ptr", "out_ptr")}
        types.update(c_ptr="*fp32", B="i32", T="i32", H="i32", B_BUCKET="i32")
        return fn, types, {**_batch(sizes), "T": sizes["T"], "H": sizes["H"]}
    fn = attention._attn_fwd_kernel
    types, values = {}, {}
    for name in fn.arg_names:
        if name.endswith("_ptr"):
            types[name] = "*i8" if name == "mask_ptr" else ptr
        elif name.startswith("stride"):
            types[name], values[name] = "i32", _stride(name, sizes)
        elif name in ("NH", "T", "T_BUCKET"):
            types[name], values[name] = "i32", sizes[name]
        elif name == "qk_scale":
            types[name] = "fp32"
    return fn, types, values


def _batch(sizes: dict) -> dict[str, int]:
    """B and the autotuners' key B_BUCKET (next power of two of B), as the launchers pass them."""
    return {"B": sizes["B"], "B_BUCKET": triton.next_power_of_2(sizes["B"])}


def _stride(name: str, sizes: dict) -> int:
    """Example strides of (B, NH, T, D) views of a fused (B, T, 3C) qkv projection."""
    T, C3 = sizes["T"], sizes["stride_t"]
    if name.startswith("stride_o"):  # the output is a fresh contiguous (B, NH, T, D)
        D = C3 // 12
        return {"b": 4 * T * D, "h": T * D, "t": D}[name[-1]]
    return {"b": T * C3, "h": C3 // 12, "t": C3}[name[-1]]


def _signature(variant: Variant) -> tuple[object, dict, dict, dict]:
    """(fn, signature, constexprs, attrs) as the runtime would build them for this variant."""
    fn, types, values = _kernel_and_types(variant)
    if not isinstance(fn, triton.runtime.JITFunction):
        raise RuntimeError(
            "the kernels were imported under the Triton interpreter (TRITON_INTERPRET=1): "
            "run the AOT compile in a process without it"
        )
    signature, attrs = {}, {}
    for index, name in enumerate(fn.arg_names):
        if name in variant.constexprs:
            signature[name] = "constexpr"
            continue
        signature[name] = types[name]
        if types[name].startswith("*") or values.get(name, 1) % 16 == 0:
            attrs[(index,)] = _DIVISIBLE  # torch allocations are 16-byte aligned
    return fn, signature, dict(variant.constexprs), attrs


@contextlib.contextmanager
def _fresh_cache_with_ptxas_log() -> Iterator[io.StringIO]:
    """An empty triton cache (so ptxas really runs) and its -v log captured from stdout."""
    knobs = triton.knobs
    saved = (knobs.cache.dir, knobs.nvidia.dump_ptxas_log)
    log = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="fastlm-aot-") as tmp:
        knobs.cache.dir, knobs.nvidia.dump_ptxas_log = tmp, True
        try:
            with contextlib.redirect_stdout(log):
                yield log
        finally:
            knobs.cache.dir, knobs.nvidia.dump_ptxas_log = saved


def compile_variant(variant: Variant, arch: int = 90) -> Report:
    """Compile one variant for sm_<arch>; raises triton's CompilationError on a compile error."""
    import time

    fn, signature, constexprs, attrs = _signature(variant)
    target = GPUTarget("cuda", arch, 32)
    start = time.perf_counter()
    with _fresh_cache_with_ptxas_log() as log:
        kernel = triton.compile(
            ASTSource(fn, signature, constexprs, attrs), target=target, options=variant.options
        )
    seconds = time.perf_counter() - start
    text = log.getvalue()
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if regs is None or spills is None:
        raise RuntimeError(f"no ptxas -v report for {variant.label}:\n{text}")
    return Report(
        variant,
        arch,
        registers=int(regs.group(1)),
        spill_stores=int(spills.group(1)),
        spill_loads=int(spills.group(2)),
        shared=int(kernel.metadata.shared),
        seconds=seconds,
    )


def markdown_table(reports: list[Report]) -> str:
    """One row per (variant, arch): registers, spills, shared memory, verdict."""
    lines = [
        "| variant | sm | regs | spill st/ld (B) | shared (KiB) | check |",
        "|---|---|---|---|---|---|",
    ]
    for r in reports:
        verdict = "; ".join(r.problems) or "ok"
        spill = f"{r.spill_stores}/{r.spill_loads}"
        shared = f"{r.shared / 1024:.0f}"
        lines.append(
            f"| {r.variant.label} | {r.arch} | {r.registers} | {spill} | {shared} | {verdict} |"
        )
    return "\n".join(lines)


def summary_table(reports: list[Report]) -> str:
    """One row per (kernel, dtype, arch): variant count, register range, spills, max shared."""
    groups: dict[tuple, list[Report]] = {}
    for r in reports:
        groups.setdefault((r.variant.kernel, TYPE_NAMES[r.variant.dtype], r.arch), []).append(r)
    lines = [
        "| kernel | dtype | sm | variants | regs | variants spilling (max B) | max shared "
        "(KiB) | failing |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (kernel, dtype, arch), group in groups.items():
        regs = [r.registers for r in group]
        spilled = [r.spill_stores + r.spill_loads for r in group if r.spill_stores + r.spill_loads]
        spill = f"{len(spilled)} ({max(spilled)})" if spilled else "0"
        shared = max(r.shared for r in group) / 1024
        failing = sum(1 for r in group if r.problems)
        lines.append(
            f"| {kernel} | {dtype} | {arch} | {len(group)} | {min(regs)}-{max(regs)} | {spill} | "
            f"{shared:.0f} | {failing} |"
        )
    return "\n".join(lines)
