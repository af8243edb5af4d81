"""Ahead-of-time compile of the Triton kernels for Hopper (sm_90), on any machine, no GPU.

The compile runs in a subprocess: conftest.py turns the Triton interpreter on for this
process, and an interpreted kernel cannot be compiled. scripts/aot_compile.py without
--quick is the full sweep (every variant, sm_90 and sm_80); docs/gpu.md holds its table.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="the AOT compile needs the triton package")

from tools import aot  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_quick_variants_compile_for_sm90_without_spills() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(REPO / "scripts" / "aot_compile.py"), "--quick", "--arch", "90"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    lines = done.stdout.splitlines()
    first = lines.index(next(line for line in lines if line.startswith("| variant |")))
    rows = []  # the per-variant table: from its header to the first blank line
    for line in lines[first + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    assert {row.split()[1] for row in rows} == {"lstm_step", "lstm_sequence", "attention"}
    assert all(row.rstrip().endswith("| ok |") for row in rows), rows
    # sm_90 has 65,536 registers per SM: a kernel that reports none did not really compile
    assert all(int(row.split("|")[3]) > 0 for row in rows), rows


def test_variants_follow_the_launchers() -> None:
    """The AOT list is built from the launchers' own candidate configs (a GPU's, even in this
    interpreted process)."""
    from fastlm.kernels import lstm

    step = aot.lstm_step_variants((torch.float16,), (256,), (1,))
    want = lstm.step_configs(1, 256, interpreted=False)
    assert len(want) > 1  # several candidates for decode: the autotuner has a choice
    assert [(v.constexprs["BLOCK_B"], v.constexprs["BLOCK_H"], v.options) for v in step] == [
        (c.kwargs["BLOCK_B"], c.kwargs["BLOCK_H"], _options(c)) for c in want
    ]
    assert all(v.constexprs["BLOCK_K"] == lstm.block_k(256) for v in step)
    heads = {v.constexprs["HEAD_DIM"] for v in aot.attention_variants((torch.bfloat16,))}
    assert heads == {16, 32, 64, 128}


def _options(config) -> dict:
    return {"num_warps": config.num_warps, "num_stages": config.num_stages}


def _tile(blocks: tuple[str, str], constexprs: dict, options: dict) -> tuple:
    return (
        constexprs[blocks[0]],
        constexprs[blocks[1]],
        options["num_warps"],
        options["num_stages"],
    )


def _compiled(kernel: str, blocks: tuple[str, str], dtype: torch.dtype, head_dim=None) -> set:
    """The (block, block, warps, stages) tiles the full AOT sweep compiles for a kernel."""
    return {
        _tile(blocks, v.constexprs, v.options)
        for v in aot.all_variants()
        if v.kernel == kernel
        and v.dtype == dtype
        and (head_dim is None or v.constexprs["HEAD_DIM"] == head_dim)
    }


@pytest.mark.parametrize("dtype", aot.DTYPES, ids=list(aot.TYPE_NAMES.values()))
def test_aot_sweep_covers_every_config_the_autotuners_may_pick(dtype: torch.dtype) -> None:
    """Every config in each GPU autotuner's own list (the objects it times, not the tuples
    they came from) is compiled by the full sweep, for every dtype and, for attention, every
    head_dim its prune keeps it at. Adding a config that the sweep's shapes never reach (or
    building the autotuner from another list) fails here."""
    from fastlm.kernels import attention, lstm

    lstm_blocks, attn_blocks = ("BLOCK_B", "BLOCK_H"), ("BLOCK_M", "BLOCK_N")
    for kernel, tuned in [
        ("lstm_step", lstm._lstm_step_tuned),
        ("lstm_sequence", lstm._lstm_sequence_tuned),
    ]:
        want = {_tile(lstm_blocks, c.kwargs, _options(c)) for c in tuned.configs}
        assert want <= _compiled(kernel, lstm_blocks, dtype), kernel
    for head_dim in attention.SUPPORTED_HEAD_DIMS:
        if dtype == torch.float32:  # fp32 is never autotuned: one fixed config
            picked = attention.attention_configs(dtype, head_dim, interpreted=False)
        else:
            picked = attention._prune(attention._attn_fwd_tuned.configs, {}, HEAD_DIM=head_dim)
        want = {_tile(attn_blocks, c.kwargs, _options(c)) for c in picked}
        assert want and want <= _compiled("attention", attn_blocks, dtype, head_dim), head_dim


def test_a_broken_block_fails_the_compile_for_sm90() -> None:
    """The kernels' tl.static_assert checks run in the AOT compile: a 24-wide hidden block (not
    a power of two) is a compile error naming the block, reported like any other failure."""
    code = (
        "import dataclasses, torch; from tools import aot; "
        "from triton.compiler.errors import CompilationError\n"
        "v = aot.lstm_step_variants((torch.float16,), (256,), (1,))[0]\n"
        "bad = dataclasses.replace(v, constexprs={**v.constexprs, 'BLOCK_H': 24})\n"
        "try:\n    aot.compile_variant(bad, 90)\n"
        "except CompilationError as err:\n    print('refused:', err)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "refused:" in done.stdout and "BLOCK_H must be a power of two" in done.stdout


def _report(dtype: torch.dtype, spills: int, shared: int, arch: int = 90) -> aot.Report:
    variant = aot.Variant("lstm_step", dtype, {}, {"num_warps": 4, "num_stages": 2}, {"H": 256})
    return aot.Report(variant, arch, 128, spills, spills, shared, 0.1)


def test_report_flags_spills_outside_fp32_and_shared_overflow() -> None:
    assert _report(torch.bfloat16, 0, 64 * 1024).problems == []
    assert _report(torch.bfloat16, 4, 64 * 1024).problems == ["spills 4/4 bytes"]
    assert _report(torch.float32, 400, 64 * 1024).problems == []  # fp32: parity-only path
    assert "shared" in _report(torch.float16, 0, 200 * 1024, arch=80).problems[0]
    assert _report(torch.float16, 0, 200 * 1024, arch=90).problems == []
