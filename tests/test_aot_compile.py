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

from fastlm.kernels import aot  # noqa: E402

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
    """The AOT list is built from the launchers' own block-size choices."""
    from fastlm.kernels import lstm

    step = aot.lstm_step_variants((torch.float16,), (256,), (1, 64))
    want = [lstm.step_config(1, 256), lstm.step_config(64, 256)]
    assert [(v.constexprs["BLOCK_B"], v.options) for v in step] == [
        (c["BLOCK_B"], o) for c, o in want
    ]
    heads = {v.constexprs["HEAD_DIM"] for v in aot.attention_variants((torch.bfloat16,))}
    assert heads == {16, 32, 64, 128}


def _report(dtype: torch.dtype, spills: int, shared: int, arch: int = 90) -> aot.Report:
    variant = aot.Variant("lstm_step", dtype, {}, {"num_warps": 4, "num_stages": 2}, {"H": 256})
    return aot.Report(variant, arch, 128, spills, spills, shared, 0.1)


def test_report_flags_spills_outside_fp32_and_shared_overflow() -> None:
    assert _report(torch.bfloat16, 0, 64 * 1024).problems == []
    assert _report(torch.bfloat16, 4, 64 * 1024).problems == ["spills 4/4 bytes"]
    assert _report(torch.float32, 400, 64 * 1024).problems == []  # fp32: parity-only path
    assert "shared" in _report(torch.float16, 0, 200 * 1024, arch=80).problems[0]
    assert _report(torch.float16, 0, 200 * 1024, arch=90).problems == []
