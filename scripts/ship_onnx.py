"""Pack ONNX graphs into shipped models: fastlm/weights/<name>/onnx/ (what backend "auto" runs).

    python scripts/ship_onnx.py transformer lstm

For each model: export it in fp32 and int8 (each export certified against PyTorch), then pack
the int8 embed graph and the fp32 lm and decode graphs (fastlm/export/pack.py). Run it again
whenever a model's weights change: a pack of other weights is refused at load time, and
tests/test_onnx_pack.py fails in CI.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from fastlm.export import export
from fastlm.export.pack import pack
from fastlm.hub import WEIGHTS_DIR

ROLES_DTYPE = {"embed": "int8", "lm": "fp32", "decode": "fp32"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="+", help="shipped model names")
    args = p.parse_args()
    for name in args.names:
        ckpt = WEIGHTS_DIR / name
        with tempfile.TemporaryDirectory() as tmp:
            dirs = {
                dtype: export(ckpt, Path(tmp) / dtype, dtype=dtype)
                for dtype in sorted(set(ROLES_DTYPE.values()))
            }
            out = pack(ckpt, {role: dirs[dtype] for role, dtype in ROLES_DTYPE.items()})
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"{name}: {out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
