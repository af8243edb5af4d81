"""The package's layers hold: the import-linter contracts in pyproject.toml (no import climbs a
layer; the core never imports torch), and the core really runs in a process where torch, onnx
and triton cannot be imported (`fastlm.runtime.load` and `fastlm.Index`, dense and lexical,
on a shipped model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fastlm

ROOT = Path(fastlm.__file__).resolve().parents[1]


def test_import_contracts_hold():
    """import-linter (a dev dependency) over pyproject.toml's contracts, in a child process
    (it reads the package's source, not what this process has imported)."""
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(no_cache=True, no_logo=True))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-4000:]
    assert "2 kept, 0 broken" in report, report[-2000:]


NO_TORCH_CHILD = textwrap.dedent("""
    import json, sys
    for name in ("torch", "onnx", "triton"):
        sys.modules[name] = None  # any import of them now raises ImportError
    import fastlm.runtime, fastlm
    from fastlm.validation import ArgumentError, check_texts

    index = fastlm.Index(fastlm.runtime.load("transformer", threads=1))  # dense + BM25
    index.add(["the cat sat on the mat", "stock markets fell sharply", "a dog in the park"])
    hits = index.search("cat on a mat", top_k=2)
    try:
        check_texts("one bare string")
        refused = None
    except ArgumentError as err:
        refused = err.param
    assert fastlm.Tokenizer is not None
    loaded = sorted(m.split(".")[0] for m, v in sys.modules.items() if v is not None)
    print(json.dumps({
        "top": hits[0]["text"],
        "refused": refused,
        "heavy": [m for m in ("torch", "onnx", "triton") if m in loaded],
    }))
""")


def test_index_and_core_run_without_torch():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH_CHILD],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "cat" in out["top"]
    assert out["refused"] == "texts"
    assert out["heavy"] == []
