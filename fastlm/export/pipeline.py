"""`export()`: a checkpoint -> one ONNX directory, certified against PyTorch and written atomically.

Layout of DIR (fastlm/ort/format.py):
    embed.onnx, lm.onnx, decode.onnx   the graphs (fastlm/export/onnx_export.py), in `dtype`
    tokenizer.json, config.json        the checkpoint's tokenizer and model config
    lexical.safetensors                the embedding's lexical branch, when the checkpoint has one
    parity.json                        the certificate (fastlm/export/parity.py)
    manifest.json                      format, dtype, model facts, graph inputs/outputs, source
                                       checkpoint, versions, and the sha256 of every file above
The directory is built under a temporary name and renamed when complete; an export that breaks
its parity bounds raises ValueError and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import onnx
import onnxruntime
import torch

from fastlm.char_ngrams import LEXICAL_FILE
from fastlm.checkpoint import MODEL_FILE, load_checkpoint
from fastlm.export.model_card import CARD_FILE, render_model_card
from fastlm.export.onnx_export import OPSET, export_graphs
from fastlm.export.parity import certify, check
from fastlm.export.precision import fold_weight_transposes, quantize_int8, to_fp16
from fastlm.hub import resolve_checkpoint
from fastlm.io import atomic_write_dir, sha256_file
from fastlm.models import architecture_of
from fastlm.models.config import config_to_json
from fastlm.ort.format import (
    CONFIG_FILE,
    DTYPES,
    FORMAT,
    GRAPHS,
    GRAPHS_REVISION,
    MANIFEST_FILE,
    PARITY_FILE,
    TOKENIZER_FILE,
    graph_stamp,
)
from fastlm.runtime import OnnxModel, OrtBackend
from fastlm.version import __version__


def export(
    name_or_ckpt: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: str = "fp32",
    force: bool = False,
) -> Path:
    """Export a shipped model or checkpoint to ONNX in `out_dir`; returns the directory.

    dtype: "fp32" | "fp16" | "int8". An existing out_dir is refused unless force=True.
    Raises ValueError when the export breaks its dtype's parity bounds (docs/onnx.md).
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if not isinstance(out_dir, str | os.PathLike):
        raise TypeError(f"out_dir must be a path, got {type(out_dir).__name__}")
    out = Path(out_dir).absolute()
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists (pass force=True / --force to replace it)")
    _check_writable(out)
    ckpt = load_checkpoint(resolve_checkpoint(name_or_ckpt))
    atomic_write_dir(out, lambda tmp: _fill(tmp, ckpt, dtype), force=force)
    return out


def _check_writable(out: Path) -> None:
    """Fail before the (slow) export when `out` can never be created."""
    anchor = next(p for p in (out, *out.parents) if p.exists())
    if anchor != out and not anchor.is_dir():
        raise NotADirectoryError(f"cannot create {out}: {anchor} is not a directory")
    if anchor == out:
        anchor = out.parent
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot create {out}: no write permission in {anchor}")


def _fill(tmp: Path, ckpt, dtype: str) -> None:
    facts = architecture_of(ckpt.config).facts(ckpt.config, ckpt.embedder.dim)
    write_graphs(ckpt.model, tmp, dtype, ckpt.embedder)
    _stamp_graphs(tmp, facts, ckpt.weights_digest)
    (tmp / TOKENIZER_FILE).write_text(ckpt.tokenizer.to_str(), encoding="utf-8")
    (tmp / CONFIG_FILE).write_text(config_to_json(ckpt.config), encoding="utf-8")
    if ckpt.lexical is not None:  # numpy-side part of embed(): the runtime reads it as is
        shutil.copyfile(ckpt.path / LEXICAL_FILE, tmp / LEXICAL_FILE)
    manifest = {
        "format": FORMAT,
        "dtype": dtype,
        "model": facts,
        "graphs": {f.stem: _graph_io(f) for f in sorted(tmp.glob("*.onnx"))},
        "source": {
            "checkpoint": str(ckpt.path),
            "model_sha256": ckpt.manifest["files"].get(MODEL_FILE)
            or sha256_file(ckpt.path / MODEL_FILE),
            "weights_sha256": ckpt.weights_digest,  # LM + embedding tower
        },
        "versions": {
            "fastlm": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opset": OPSET,
            "graphs": GRAPHS_REVISION,
        },
    }
    # The certificate is measured on the CPU provider (whatever this machine has), one thread.
    backend = OrtBackend(tmp, manifest, threads=1, providers=["CPUExecutionProvider"])
    runtime_model = OnnxModel(str(tmp), backend)
    report = certify(ckpt.model, ckpt.tokenizer, runtime_model, dtype, ckpt.embedder, ckpt.lexical)
    check(report)
    (tmp / PARITY_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    manifest["files"] = {f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.is_file()}
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    _write_card(tmp, ckpt, dtype, report, manifest["files"])


def _stamp_graphs(tmp: Path, facts: dict, weights_sha256: str) -> None:
    """Write each graph's role, the model facts and the source weights into its metadata_props:
    the reader checks them against the manifest (format.check_graph), so a graph of another
    model is refused even when a manifest was re-hashed around it."""
    for role, name in GRAPHS.items():
        model = onnx.load(str(tmp / name))
        props = {p.key: p.value for p in model.metadata_props}
        onnx.helper.set_model_props(model, {**props, **graph_stamp(role, facts, weights_sha256)})
        onnx.save(model, str(tmp / name))


def _write_card(tmp: Path, ckpt, dtype: str, report: dict, files: dict) -> None:
    """README.md from the source checkpoint's facts + the parity report (not in `files`)."""

    config = json.loads((tmp / CONFIG_FILE).read_text(encoding="utf-8"))
    name = f"{ckpt.manifest.get('name') or ckpt.path.name}-{dtype}"
    export = {"dtype": dtype, "parity": report, "files": files}
    card = render_model_card(ckpt.manifest, config, name, export)
    (tmp / CARD_FILE).write_text(card, encoding="utf-8")


def write_graphs(model: torch.nn.Module, out_dir: Path, dtype: str, embedder=None) -> None:
    """The three graphs of `model` (embed.onnx from `embedder`) in `dtype`, into out_dir."""
    if dtype == "fp32":
        export_graphs(model, out_dir, embedder)
        return
    with tempfile.TemporaryDirectory(prefix="fastlm-fp32-") as tmp:
        for name in export_graphs(model, Path(tmp), embedder):
            src, dst = Path(tmp) / name, out_dir / name
            if dtype == "fp16":
                onnx.save(to_fp16(fold_weight_transposes(onnx.load(str(src)))), str(dst))
            else:
                quantize_int8(src, dst, architecture_of(model).quantized_onnx_ops)


def _graph_io(path: Path) -> dict:
    """{"inputs": {name: "int64[batch, seq]", ...}, "outputs": {...}}: types, named dynamic dims."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(values) -> dict:
        out = {}
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            kind = onnx.TensorProto.DataType.Name(t.elem_type).lower()
            out[v.name] = f"{kind}[{', '.join(str(d) for d in dims)}]"
        return out

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}
