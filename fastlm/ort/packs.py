"""ONNX graphs packed beside a checkpoint ("fastlm-onnx-pack/1"), read with no torch and no onnx.

A shipped model carries its ONNX graphs in `<checkpoint>/onnx/` so that `fastlm.load(name)` runs
on ONNX Runtime without exporting first. The graphs hold no weights of their own: each
initializer is a reference, resolved at load time and handed to ONNX Runtime in memory
(`SessionOptions.add_external_initializers`), to

    a tensor of the checkpoint's model.safetensors / embedder.safetensors (byte-identical: the
        fp32 weights, stored once for the checkpoint and every graph), or
    a tensor of onnx/tensors.safetensors (what the exporter derived: int8 weights, transposes,
        the sinusoidal position table), keyed by its sha256, so graphs share each one;

each reference recording the tensor's dtype and shape, checked when it is read.

    onnx/embed.onnx, lm.onnx, decode.onnx   graphs without weights; each role in its own dtype
    onnx/tensors.safetensors                the derived tensors
    onnx/manifest.json                      format, model facts, source weights digest, per graph
                                            its dtype and initializer references, the parity
                                            certificate of its dtype, and the sha256 of each file

A pack belongs to the weights it was exported from: its `source.weights_sha256` must equal the
checkpoint's `weights_digest`, else it is refused (a stale pack is never run).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from fastlm.checkpoint_files import (
    EMBEDDER_FILE,
    MODEL_FILE,
    listed_weight_files,
    verify_checkpoint,
    weights_digest,
)
from fastlm.io import sha256_file
from fastlm.ort.format import GRAPHS, ExportDirError, check_model_facts
from fastlm.validation import check_manifest_files

PACK_FORMAT = "fastlm-onnx-pack/1"
PACK_DIR, PACK_MANIFEST, PACK_TENSORS = "onnx", "manifest.json", "tensors.safetensors"
PACKED = "pack"  # the source name of a tensor stored in PACK_TENSORS
CHECKPOINT_SOURCES = (MODEL_FILE, EMBEDDER_FILE)  # the checkpoint files a reference may name


@dataclass
class PackedGraphs:
    """A verified pack: per role, the graph's bytes and its initializers (name -> array)."""

    path: Path
    manifest: dict
    graphs: dict[str, tuple[bytes, dict[str, np.ndarray]]]

    @property
    def dtypes(self) -> dict[str, str]:
        return {role: g["dtype"] for role, g in self.manifest["graphs"].items()}

    def certificate(self, role: str) -> dict:
        """The parity certificate of the export this role's graph came from."""
        return self.manifest["parity"][role]


def read_pack(checkpoint_dir: str | os.PathLike, weights_digest: str) -> PackedGraphs:
    """The pack of the checkpoint in `checkpoint_dir`, every file checked against its sha256
    and the whole against the checkpoint's weights digest. ExportDirError names what is wrong
    (FileNotFoundError when the checkpoint has no pack)."""
    ckpt = Path(checkpoint_dir)
    path = ckpt / PACK_DIR
    where = path / PACK_MANIFEST
    if not where.is_file():
        raise FileNotFoundError(f"{ckpt} has no ONNX pack ({PACK_DIR}/{PACK_MANIFEST})")
    try:
        manifest = json.loads(where.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportDirError(f"{where} is corrupt: {err!r}") from None
    files = check_manifest_files(manifest, str(where), ExportDirError, PACK_MANIFEST)
    if manifest.get("format") != PACK_FORMAT:
        raise ExportDirError(f"{where}: format {manifest.get('format')!r}, expected {PACK_FORMAT}")
    source = manifest.get("source")
    if not isinstance(source, dict) or source.get("weights_sha256") != weights_digest:
        raise ExportDirError(
            f"{path} was packed from other weights than {ckpt}'s: it is stale (pack it again)"
        )
    check_model_facts(manifest.get("model"), where)
    for name, digest in files.items():
        if not (path / name).is_file() or sha256_file(path / name) != digest:
            raise ExportDirError(f"{path / name} is missing or fails its sha256 check")
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict) or set(graphs) != set(GRAPHS):
        raise ExportDirError(f"{where}: 'graphs' must describe {sorted(GRAPHS)}")
    if not isinstance(manifest.get("parity"), dict) or set(manifest["parity"]) != set(GRAPHS):
        raise ExportDirError(f"{where}: 'parity' must hold a certificate for each graph")
    tensors = _Tensors(ckpt, path)
    try:
        loaded = {role: _graph(path, files, g, tensors, where) for role, g in graphs.items()}
    finally:
        tensors.close()
    return PackedGraphs(path, manifest, loaded)


def open_pack(checkpoint_dir: str | os.PathLike, manifest: dict | None = None) -> PackedGraphs:
    """The pack of a checkpoint, with no torch: the checkpoint's files are checked against its
    manifest (or `manifest`, the result of `verify_checkpoint` already run), and its weights
    digest is computed over the weight files that manifest lists, as `Checkpoint.weights_digest`
    is. CheckpointError / ExportDirError / FileNotFoundError as read_pack."""
    ckpt = Path(checkpoint_dir)
    manifest = manifest if manifest is not None else verify_checkpoint(ckpt)
    return read_pack(ckpt, weights_digest(ckpt, manifest, listed_weight_files(manifest)))


def _graph(path: Path, files: dict, spec: object, tensors: _Tensors, where: Path) -> tuple:
    if not isinstance(spec, dict) or not isinstance(spec.get("file"), str):
        raise ExportDirError(f"{where}: a graph entry names no file")
    if spec["file"] not in files:
        raise ExportDirError(f"{where}: graph file {spec['file']!r} is not listed")
    refs = spec.get("initializers")
    if not isinstance(refs, dict) or not isinstance(spec.get("dtype"), str):
        raise ExportDirError(f"{where}: {spec['file']} needs a dtype and its initializers")
    arrays = {}
    for name, ref in refs.items():
        if not _is_ref(ref):
            raise ExportDirError(
                f"{where}: initializer {name!r} must be [source, key, dtype, shape]"
            )
        array = tensors.get(ref[0], ref[1], where)
        if array.dtype.str != ref[2] or list(array.shape) != ref[3]:
            raise ExportDirError(
                f"{where}: initializer {name!r} of {spec['file']} is {ref[2]} {ref[3]}, but "
                f"{ref[0]}:{ref[1]} is {array.dtype.str} {list(array.shape)}"
            )
        arrays[name] = array
    return (path / spec["file"]).read_bytes(), arrays


def _is_ref(ref: object) -> bool:
    """[source, key, dtype str, shape list] as the writer records it."""
    return (
        isinstance(ref, list)
        and len(ref) == 4
        and all(isinstance(r, str) for r in ref[:3])
        and isinstance(ref[3], list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in ref[3])
    )


class _Tensors:
    """Tensors by (source, key), each file opened once; the sources are fixed names."""

    def __init__(self, ckpt: Path, pack: Path):
        self.files = {name: ckpt / name for name in CHECKPOINT_SOURCES}
        self.files[PACKED] = pack / PACK_TENSORS
        self.open: dict = {}
        self.cache: dict[tuple[str, str], np.ndarray] = {}

    def get(self, source: str, key: str, where: Path) -> np.ndarray:
        if (source, key) in self.cache:  # shared by several graphs: one array in memory
            return self.cache[source, key]
        if source not in self.files:
            raise ExportDirError(f"{where}: unknown tensor source {source!r}")
        if source not in self.open:
            try:
                self.open[source] = safe_open(self.files[source], framework="numpy")
            except (OSError, ValueError, SafetensorError) as err:  # not a safetensors file
                raise ExportDirError(f"{self.files[source]} cannot be read: {err}") from None
        if key not in self.open[source].keys():
            raise ExportDirError(f"{where}: {self.files[source]} holds no tensor {key!r}")
        try:
            self.cache[source, key] = self.open[source].get_tensor(key)
        except (OSError, ValueError, SafetensorError) as err:  # e.g. a truncated file
            raise ExportDirError(f"{self.files[source]}: tensor {key!r}: {err}") from None
        return self.cache[source, key]

    def close(self) -> None:
        self.open.clear()
