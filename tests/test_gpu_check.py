"""scripts/gpu_check.py --dry-run: every section but the CUDA ones, on any machine.

On the GPU machine the same script runs the CUDA sections too; a dry run that passes here is
what makes that one run worth its time (no import error, no missing file, no broken report).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the GPU check needs the triton package")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"
SECTIONS = ("environment", "smoke", "AOT compile", "kernel tests", "engine tests", "end to end")


def run(*args: str, out: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OUT=str(out), PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def texts_file(tiny_data, tmp_path_factory) -> Path:
    """A texts file as --prepare-texts writes it, from the test corpus."""
    path = tmp_path_factory.mktemp("gpu_check") / "texts.txt"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--prepare-texts", str(tiny_data / "valid.txt"),
         "--texts", str(path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert path.read_text(encoding="utf-8").count("\n") > 16
    return path


def test_dry_run_passes_and_reports_every_section(texts_file: Path, tmp_path: Path) -> None:
    done = run("--dry-run", "--texts", str(texts_file), out=tmp_path)
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    report = (tmp_path / "gpu_check.md").read_text(encoding="utf-8")
    for name in SECTIONS:
        assert f"## {name}" in report, f"section {name!r} missing from:\n{report}"
    assert "FAIL" not in report
    assert "| lstm_step" in report and "| attention" in report  # smoke rows were launched


def test_without_cuda_and_without_dry_run_exits_2(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the refusal on a machine without CUDA")
    done = run(out=tmp_path, timeout=120)
    assert done.returncode == 2 and "needs a CUDA device" in done.stderr


def test_a_failing_section_fails_the_run(tmp_path: Path) -> None:
    missing = tmp_path / "no-texts.txt"
    done = run("--dry-run", "--only", "e2e", "environment", "--texts", str(missing), out=tmp_path)
    assert done.returncode == 1, done.stdout[-3000:]
    report = (tmp_path / "gpu_check.md").read_text(encoding="utf-8")
    assert "## environment: ok" in report and "## end to end: FAILED" in report
    assert "no-texts.txt is missing" in report
    assert "## smoke" not in report  # --only: the other sections did not run
