"""The export directory format ("fastlm-onnx/2"), with no torch: written by
fastlm/export/pipeline.py, read by the torch-free runtime (fastlm/runtime.py).

    embed.onnx    input_ids, attention_mask (B, T) int64 -> embedding (B, D) float32
    lm.onnx       input_ids (B, T) int64 -> logits (B, T, V) float32
    decode.onnx   input_ids (B, T) int64, *state -> logits (B, V), *new state: the state
                  inputs are whatever the architecture carries (the LSTM's h, c; the
                  Transformer's growing past_key, past_value), zero-sized or zero at the start,
                  and the outputs after the logits are fed back to them in order
    tokenizer.json, config.json, parity.json (the certificate), README.md (the model card)
    manifest.json format, dtype, model facts (MODEL_FACTS), graph inputs/outputs, source
                  checkpoint, versions, and the sha256 of every file above but README.md
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastlm.io import sha256_file
from fastlm.validation import check_manifest_files

FORMAT = "fastlm-onnx/2"
EMBED_FILE, LM_FILE, DECODE_FILE = "embed.onnx", "lm.onnx", "decode.onnx"
TOKENIZER_FILE, CONFIG_FILE = "tokenizer.json", "config.json"
MANIFEST_FILE, PARITY_FILE = "manifest.json", "parity.json"
# What a reader may know without torch: sizes, the embedding window, whether full-sequence
# graphs materialise attention scores, and the decode state's sizes.
MODEL_FACTS = (
    "architecture",
    "vocab_size",
    "embed_dim",
    "max_len",
    "num_layers",
    "embed_window",
    "attention_scores",
    "state",
)
REQUIRED_FILES = (EMBED_FILE, LM_FILE, DECODE_FILE, TOKENIZER_FILE, CONFIG_FILE, PARITY_FILE)


class ExportDirError(ValueError):
    """An export directory is missing a file, fails its sha256 check, or cannot be parsed."""


def verify_export_dir(path: str | os.PathLike) -> dict:
    """Check every file of an export directory against manifest.json; return the manifest."""
    path = Path(path)
    if not path.is_dir():
        raise ExportDirError(f"export directory not found: {path}")
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportDirError(f"{path} has no {MANIFEST_FILE}: not a fastlm export") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportDirError(f"{path / MANIFEST_FILE} is corrupt: {err!r}") from None
    # schema first (plain names, hex digests), so no listed path is ever opened outside `path`
    files = check_manifest_files(manifest, str(path / MANIFEST_FILE), ExportDirError, MANIFEST_FILE)
    model = manifest.get("model")
    if not isinstance(model, dict):
        raise ExportDirError(f"{path / MANIFEST_FILE} is corrupt: 'model' must be an object")
    if manifest.get("format") != FORMAT:
        raise ExportDirError(
            f"{path} has format {manifest.get('format')!r}, expected {FORMAT}: export it again "
            "with this fastlm"
        )
    for name in sorted(set(REQUIRED_FILES) | set(files)):
        f = path / name
        if not f.is_file():
            raise ExportDirError(f"export file missing: {f}")
        if name not in files:
            raise ExportDirError(f"{f} is not listed in {MANIFEST_FILE}")
        if sha256_file(f) != files[name]:
            raise ExportDirError(f"sha256 mismatch for {f}: the file is corrupt or was edited")
    missing = [k for k in MODEL_FACTS if k not in model]
    if missing:
        raise ExportDirError(f"{path / MANIFEST_FILE}: 'model' lacks {missing}")
    if not isinstance(model["architecture"], str):
        raise ExportDirError(f"{path / MANIFEST_FILE}: architecture must be a name")
    return manifest
