"""The checkpoint directory's files and manifest, with no torch: names, sha256 checks, digest.

fastlm/checkpoint.py loads the tensors into torch modules; this module is what a reader
without torch needs (the runtime opening a shipped model's ONNX pack): which files a checkpoint
has, checking them against manifest.json, and the weights digest that names what it computes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fastlm import validation
from fastlm.char_ngrams import LEXICAL_FILE
from fastlm.io import sha256_file

MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE = "model.safetensors", "config.json", "tokenizer.json"
EMBEDDER_FILE = "embedder.safetensors"
MANIFEST_FILE, OPTIM_FILE, STATE_FILE = (
    "manifest.json",
    "optimizer.safetensors",
    "trainer_state.json",
)
REQUIRED_FILES = (MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE, MANIFEST_FILE)
CHECKPOINT_FORMAT = "fastlm-checkpoint/1"  # manifest.json's "format"


class CheckpointError(ValueError):
    """A checkpoint is missing a file, fails its sha256 check, or cannot be parsed."""


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Check the manifest's schema and every file it names against its sha256; return it.

    The manifest must list every file the loader reads (model, config, tokenizer, and the
    optimizer/trainer state when present) as plain file names: an empty or partial `files`
    would let an unlisted file load unverified, and a name with a separator would read (and
    reveal) files outside the checkpoint.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is missing {name}")
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path / MANIFEST_FILE} is corrupt: {err}") from None
    files = check_manifest_files(manifest, path / MANIFEST_FILE)
    optional = (EMBEDDER_FILE, LEXICAL_FILE, OPTIM_FILE, STATE_FILE)
    present = [n for n in optional if (path / n).is_file()]
    for name in (MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE, *present):
        if name not in files:
            raise CheckpointError(f"{path / MANIFEST_FILE} does not list {name}: cannot verify it")
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint file missing: {f}")
        if sha256_file(f) != digest:
            raise CheckpointError(f"sha256 mismatch for {f}: the file is corrupt or was edited")
    return manifest


def check_manifest_files(manifest: object, where: Path) -> dict[str, str]:
    """The manifest's `files` {plain file name: sha256 hex}, or CheckpointError (no I/O)."""
    return validation.check_manifest_files(manifest, str(where), CheckpointError, MANIFEST_FILE)


def weights_digest(path: Path, manifest: dict, names: list[str]) -> str:
    """sha256 over the digests of the weight files `names` (the manifest's, else hashed now):
    names what a checkpoint computes (`Checkpoint.weights_digest`, an ONNX pack's source)."""
    files = manifest.get("files", {})
    parts = [f"{n}={files.get(n) or sha256_file(Path(path) / n)}" for n in names]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def listed_weight_files(manifest: dict) -> list[str]:
    """The weight files a checkpoint's manifest lists, in digest order: the LM, the embedding
    tower and the lexical branch when present (`Checkpoint.weight_files` of the loaded
    checkpoint: a listed tower always has its projection, else it does not load)."""
    files = manifest.get("files", {})
    return [MODEL_FILE] + [n for n in (EMBEDDER_FILE, LEXICAL_FILE) if n in files]
