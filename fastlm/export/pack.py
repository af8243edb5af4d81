"""`pack()`: graphs of certified exports -> `<checkpoint>/onnx/`, sharing the checkpoint's weights.

    from fastlm.export.pack import pack
    pack("fastlm/weights/transformer",
         {"embed": "exports/t-int8", "lm": "exports/t-fp32", "decode": "exports/t-fp32"})

Each role's graph is taken from the export directory given for it (so embed can be int8 while
decode stays fp32) and stripped of its weights: an initializer (or a large Constant, made one)
byte-identical to a checkpoint tensor becomes a reference to it; any other becomes a tensor of
onnx/tensors.safetensors keyed by its sha256, stored once however many graphs use it. The
format and its reader: fastlm/ort/packs.py. The pack is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors import safe_open
from safetensors.numpy import save_file

from fastlm.checkpoint import load_checkpoint
from fastlm.io import atomic_write_dir, sha256_file
from fastlm.ort.format import GRAPHS, PARITY_FILE, verify_export_dir
from fastlm.ort.packs import (
    CHECKPOINT_SOURCES,
    PACK_DIR,
    PACK_FORMAT,
    PACK_MANIFEST,
    PACK_TENSORS,
    PACKED,
)

# Tensors below this many bytes stay inside the graph (shapes, scales, small biases): a
# reference would cost more than it saves.
INLINE_BELOW = 1024
_DATA_FIELDS = (
    "raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data",
    "uint64_data",
)  # fmt: skip


def pack(checkpoint_dir: str | os.PathLike, exports: dict[str, str | os.PathLike]) -> Path:
    """Pack the graph of each role ("embed", "lm", "decode") from the export directory given for
    it into `<checkpoint_dir>/onnx/` (replaced when present); returns that directory. Every
    export must come from this checkpoint's weights and carry a passed parity certificate."""
    ckpt_dir = Path(checkpoint_dir)
    if set(exports) != set(GRAPHS):
        raise ValueError(f"exports must give a directory for each of {sorted(GRAPHS)}")
    digest = load_checkpoint(ckpt_dir).weights_digest
    known = _checkpoint_tensors(ckpt_dir)
    derived: dict[str, np.ndarray] = {}
    manifests = {role: verify_export_dir(path) for role, path in exports.items()}
    facts = {json.dumps(m["model"], sort_keys=True) for m in manifests.values()}
    if len(facts) != 1:
        raise ValueError("the exports describe different models")
    for role, m in manifests.items():
        if m["source"]["weights_sha256"] != digest:
            raise ValueError(f"{exports[role]} was exported from other weights than {ckpt_dir}")

    def fill(tmp: Path) -> None:
        graphs, parity, files = {}, {}, {}
        for role, export_dir in exports.items():
            model = onnx.load(str(Path(export_dir) / GRAPHS[role]))
            refs = _strip(model.graph, known, derived)
            (tmp / GRAPHS[role]).write_bytes(model.SerializeToString())
            graphs[role] = {
                "file": GRAPHS[role],
                "dtype": manifests[role]["dtype"],
                "initializers": refs,
            }
            cert = json.loads((Path(export_dir) / PARITY_FILE).read_text(encoding="utf-8"))
            if not cert.get("passed"):
                raise ValueError(f"{export_dir}'s parity certificate did not pass")
            parity[role] = cert
        save_file(derived, str(tmp / PACK_TENSORS))
        for name in (*[GRAPHS[r] for r in exports], PACK_TENSORS):
            files[name] = sha256_file(tmp / name)
        manifest = {
            "format": PACK_FORMAT,
            "model": manifests["embed"]["model"],
            "source": {"weights_sha256": digest},
            "graphs": graphs,
            "parity": parity,
            "versions": manifests["decode"]["versions"],
            "files": files,
        }
        (tmp / PACK_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    out = ckpt_dir / PACK_DIR
    atomic_write_dir(out, fill, force=True)
    return out


def _checkpoint_tensors(ckpt_dir: Path) -> dict[tuple, tuple[str, str]]:
    """{(sha256, dtype, shape): [file, key]} of every tensor in the checkpoint's weight files."""
    known = {}
    for name in CHECKPOINT_SOURCES:
        if not (ckpt_dir / name).is_file():
            continue
        with safe_open(ckpt_dir / name, framework="numpy") as f:
            for key in f.keys():
                known.setdefault(_identity(f.get_tensor(key)), (name, key))
    return known


def _identity(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(a.tobytes()).hexdigest(), a.dtype.str, a.shape


def _strip(graph, known: dict, derived: dict) -> dict[str, list]:
    """Replace the graph's large tensors by external references; returns {name: [source, key,
    dtype, shape]}.
    Large Constant nodes become initializers first (the exporter folds e.g. the position table
    into one)."""
    for node in [n for n in graph.node if n.op_type == "Constant"]:
        value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
        if value is not None and numpy_helper.to_array(value).nbytes >= INLINE_BELOW:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            graph.node.remove(node)
    refs = {}
    for tensor in graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.nbytes < INLINE_BELOW:
            continue
        ident = _identity(array)
        if ident in known:
            source, key = known[ident]
        else:  # bytes, dtype and shape name it: equal bytes of another shape are another tensor
            source, key = PACKED, f"{ident[0]}:{ident[1]}:{'x'.join(map(str, ident[2]))}"
            derived.setdefault(key, np.ascontiguousarray(array))
        refs[tensor.name] = [source, key, ident[1], list(ident[2])]  # + dtype, shape: checked
        for field in _DATA_FIELDS:
            tensor.ClearField(field)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        entry = tensor.external_data.add()
        # "." cannot be read as a file: a tensor the loader fails to supply is an error, never
        # bytes read from wherever the process happens to run
        entry.key, entry.value = "location", "."
    return refs


__all__ = ["INLINE_BELOW", "pack"]
