"""Checkpoint directories: safetensors + JSON only, never pickle, written atomically.

Layout of a checkpoint directory:
    model.safetensors   weights
    config.json         model config (architecture + sizes)
    tokenizer.json      the tokenizer the model was trained with
    manifest.json       sha256 of every file above (+ optional training facts)
    embedder.safetensors  optional: the similarity-trained embedding tower (models/embedder.py);
                          without it `embed()` pools the LM's own top-layer states
    lexical.safetensors   optional: the embedding's lexical branch (fastlm/char_ngrams.py)
    optimizer.safetensors, trainer_state.json   only in training checkpoints (for --resume)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fastlm.char_ngrams import LEXICAL_FILE, LexicalBranch, LexicalBranchError
from fastlm.checkpoint_files import (
    CHECKPOINT_FORMAT,
    CONFIG_FILE,
    EMBEDDER_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    OPTIM_FILE,
    REQUIRED_FILES,
    STATE_FILE,
    TOKENIZER_FILE,
    CheckpointError,
    check_manifest_files,
    listed_weight_files,
    verify_checkpoint,
    weights_digest,
)
from fastlm.hub import resolve_checkpoint
from fastlm.io import atomic_write_dir, sha256_file
from fastlm.models import ModelConfig, architectures, build_model, config_from_dict
from fastlm.models.config import config_to_json
from fastlm.models.embedder import EmbeddingTower, tower_from_weights
from fastlm.tokenizer import Tokenizer


@dataclass
class Checkpoint:
    config: ModelConfig
    model: torch.nn.Module
    tokenizer: Tokenizer
    manifest: dict[str, Any]
    path: Path
    embedder: EmbeddingTower | None = None  # None: set to the LM's own mean pooling
    lexical: LexicalBranch | None = None  # None: embed() is the tower's vector alone

    def __post_init__(self):
        if self.embedder is None:
            self.embedder = EmbeddingTower(self.model)

    @property
    def weights_digest(self) -> str:
        """sha256 over the digests of every weight file: names what this checkpoint computes."""
        return weights_digest(self.path, self.manifest, self.weight_files)

    @property
    def weight_files(self) -> list[str]:
        """The weight files its manifest lists (one rule, shared with the torch-free readers)."""
        return listed_weight_files(self.manifest)


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    optimizer: torch.optim.Optimizer | None = None,
    trainer_state: dict[str, Any] | None = None,
    extra_manifest: dict[str, Any] | None = None,
    force: bool = False,
    embedder: EmbeddingTower | None = None,
    lexical: LexicalBranch | None = None,
) -> Path:
    """Write a complete checkpoint directory atomically; returns its path. `embedder`: a
    trained tower to ship beside the LM (embedder.safetensors); `lexical`: the embedding's
    lexical branch (lexical.safetensors)."""

    def fill(tmp: Path) -> None:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / MODEL_FILE))
        if embedder is not None:
            save_file(embedder.weights(), str(tmp / EMBEDDER_FILE))
        if lexical is not None:
            lexical.save(tmp / LEXICAL_FILE)
        (tmp / CONFIG_FILE).write_text(config_to_json(model.config), encoding="utf-8")
        (tmp / TOKENIZER_FILE).write_text(tokenizer.to_str(), encoding="utf-8")
        if optimizer is not None:
            tensors, meta = flatten_optimizer(optimizer)
            save_file(tensors, str(tmp / OPTIM_FILE), metadata={"param_groups": meta})
        if trainer_state is not None:
            (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2), encoding="utf-8")
        files = sorted(f.name for f in tmp.iterdir())
        manifest = {
            "format": CHECKPOINT_FORMAT,
            "architecture": model.config.architecture,
            "files": {name: sha256_file(tmp / name) for name in files},
            **(extra_manifest or {}),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")

    atomic_write_dir(path, fill, force=force)
    return Path(path)


def load_checkpoint(
    path: str | os.PathLike, expect_architecture: str | None = None, device="cpu"
) -> Checkpoint:
    """Verify and load a checkpoint directory into a model in eval mode."""
    path = Path(path)
    manifest = verify_checkpoint(path)
    try:
        raw = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        config = config_from_dict(raw)  # types and bounds checked before any allocation
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path / CONFIG_FILE} is invalid: {err}") from None
    if expect_architecture is not None and config.architecture != expect_architecture:
        raise CheckpointError(
            f"{path} holds a {config.architecture} model, not a {expect_architecture} model"
        )
    try:
        tokenizer = Tokenizer.load(path / TOKENIZER_FILE)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary "
            f"is {config.vocab_size}; the files come from different models"
        )
    model = build_model(config)
    tensors = _load_tensors(path / MODEL_FILE, device="cpu")
    _check_tensors(tensors, model.state_dict(), path / MODEL_FILE)
    model.load_state_dict(tensors)
    embedder = None
    if EMBEDDER_FILE in manifest["files"]:
        try:
            embedder = tower_from_weights(build_model(config), _load_tensors(path / EMBEDDER_FILE))
        except ValueError as err:
            raise CheckpointError(f"{path / EMBEDDER_FILE}: {err}") from None
        embedder = embedder.to(device).eval()
    lexical = None
    if LEXICAL_FILE in manifest["files"]:
        try:
            lexical = LexicalBranch.load(path / LEXICAL_FILE)
        except LexicalBranchError as err:
            raise CheckpointError(str(err)) from None
    ckpt = Checkpoint(config, model.to(device).eval(), tokenizer, manifest, path, embedder, lexical)
    if lexical is not None and lexical.dim != ckpt.embedder.dim:
        raise CheckpointError(
            f"{path / LEXICAL_FILE}: rows of {lexical.dim}, the embeddings have {ckpt.embedder.dim}"
        )
    return ckpt


def _check_tensors(tensors: dict, expected: dict, f: Path) -> None:
    """Same names, shapes and floating dtypes as the model built from config.json."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{f} does not match its config: missing tensors {missing[:5]}, "
            f"unexpected tensors {extra[:5]}"
        )
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape:
            raise CheckpointError(
                f"{f}: tensor {name} has shape {tuple(got.shape)}, the config needs "
                f"{tuple(want.shape)}"
            )
        if got.dtype.is_floating_point != want.dtype.is_floating_point:
            raise CheckpointError(f"{f}: tensor {name} has dtype {got.dtype}, not {want.dtype}")


def load_optimizer_state(path: str | os.PathLike, optimizer: torch.optim.Optimizer) -> None:
    f = Path(path) / OPTIM_FILE
    if not f.is_file():
        raise CheckpointError(f"checkpoint file missing: {f}")

    try:
        with safe_open(str(f), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{f} is corrupt: {err}") from None
    tensors = _load_tensors(f)
    try:
        state = unflatten_optimizer(tensors, json.loads(meta["param_groups"]))
        optimizer.load_state_dict(state)
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{f} does not fit this model's optimizer: {err!r}") from None


def load_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    """trainer_state.json; `step` and `tokens_seen` checked to be non-negative ints."""
    f = Path(path) / STATE_FILE
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file missing: {f}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{f} is corrupt: {err}") from None
    ok = isinstance(state, dict) and all(
        type(state.get(k)) is int and state[k] >= 0 for k in ("step", "tokens_seen")
    )
    if not ok:
        raise CheckpointError(f"{f} must hold non-negative int 'step' and 'tokens_seen'")
    return state


def _load_tensors(f: Path, device="cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(f), device=device)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(f"{f} is corrupt or truncated: {err}") from None


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """Optimizer state as safetensors-ready tensors ("<param index>.<key>") + JSON groups."""
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{idx}.{key}"] = t.detach().cpu().contiguous()
    return tensors, json.dumps(sd["param_groups"])


def unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list) -> dict[str, Any]:
    """The inverse of flatten_optimizer: a dict for `optimizer.load_state_dict`."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = t
    return {"state": state, "param_groups": groups}


# the torch-free names (fastlm/checkpoint_files.py), importable from here as before
__all__ = [
    "CONFIG_FILE",
    "EMBEDDER_FILE",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "OPTIM_FILE",
    "REQUIRED_FILES",
    "STATE_FILE",
    "TOKENIZER_FILE",
    "Checkpoint",
    "CheckpointError",
    "check_manifest_files",
    "flatten_optimizer",
    "load_checkpoint",
    "load_optimizer_state",
    "load_trainer_state",
    "save_checkpoint",
    "unflatten_optimizer",
    "verify_checkpoint",
    "weights_digest",
]


def load_pretrained(model_class, name_or_path: str | os.PathLike, device="cpu"):
    """The bare nn.Module of a shipped model or checkpoint, checked to be of `model_class`.

    >>> load_pretrained(SimpleTransformer_LM, "transformer")
    Passing a checkpoint of the other architecture raises CheckpointError.
    """
    known = {a.model_class: name for name, a in architectures().items()}
    if model_class not in known:
        names = ", ".join(c.__name__ for c in known)
        raise TypeError(f"model_class must be one of {names}, got {model_class!r}")
    return load_checkpoint(resolve_checkpoint(name_or_path), known[model_class], device).model
