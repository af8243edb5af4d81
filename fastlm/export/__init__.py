"""ONNX export: fp32 / fp16 / int8 graphs, a parity certificate, one atomic directory.

    from fastlm.export import export
    export("transformer", "exports/transformer-int8", dtype="int8")

or `fastlm export transformer --format onnx --dtype int8 --out exports/transformer-int8`.
Run the result with `fastlm.runtime.OnnxModel` (no torch) or `fastlm.load(..., backend="onnx")`.
"""

from fastlm.export.parity import BOUNDS, PROBE_TEXTS
from fastlm.export.pipeline import DTYPES, export

__all__ = ["BOUNDS", "DTYPES", "PROBE_TEXTS", "export"]
