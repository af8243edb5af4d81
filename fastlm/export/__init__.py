"""ONNX export: fp32 / fp16 / int8 graphs, a parity certificate, one atomic directory.

    from fastlm.export import export
    export("transformer", "exports/transformer-int8", dtype="int8")

or `fastlm export transformer --format onnx --dtype int8 --out exports/transformer-int8`.
Run the result with `fastlm.runtime.load` (no torch) or `fastlm.load(..., backend="onnx")`.
The directory format is fastlm/ort/format.py; names load on first use, so the format
module imports without torch or onnx.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "BOUNDS": "fastlm.export.parity",
    "PROBE_TEXTS": "fastlm.export.parity",
    "DTYPES": "fastlm.export.pipeline",
    "export": "fastlm.export.pipeline",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastlm.export' has no attribute {name!r}")


__all__ = ["BOUNDS", "DTYPES", "PROBE_TEXTS", "export"]
