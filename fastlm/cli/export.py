"""`fastlm export NAME_OR_CKPT --format onnx --dtype {fp32,fp16,int8} --out DIR [--force]`.

The parser lives outside `fastlm.export`, whose package imports onnx and onnxruntime: `--help`
must work without them.
"""

from __future__ import annotations

import argparse
import json

from fastlm.cli.common import ONNX_DTYPES
from fastlm.ort.format import PARITY_FILE


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX with a parity certificate",
        description="Write DIR with embed.onnx, lm.onnx, decode.onnx, tokenizer.json, "
        "config.json, parity.json and manifest.json (see docs/onnx.md).",
    )
    p.add_argument(
        "model", metavar="NAME_OR_CKPT", help="shipped model name, checkpoint or run directory"
    )
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--dtype", choices=ONNX_DTYPES, default="fp32")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory (must not exist)")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fastlm.export import export  # torch, onnx: only for this command

    out = export(args.model, args.out, dtype=args.dtype, force=args.force)  # errors: fastlm.cli
    report = json.loads((out / PARITY_FILE).read_text(encoding="utf-8"))
    emb, greedy = report["embedding"], report["greedy"]
    print(f"exported {args.dtype} ONNX to {out}")
    print(
        f"parity vs PyTorch fp32: embedding cosine min {emb['cosine_min']:.6f}, "
        f"logits max abs err {report['logits']['max_abs']:.2e}, "
        f"greedy agreement {greedy['agreement']:.1%}, "
        f"top-10 overlap {report['ranking']['top10_overlap']:.1%}"
    )
    return 0
