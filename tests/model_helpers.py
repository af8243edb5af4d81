"""Plain helper functions several test modules share (fixtures live in conftest.py).

A module of its own, imported by name: `from conftest import ...` would pick up whichever
conftest.py Python imported first (tests/ and bench/ both have one).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def model_sha(ckpt_dir: Path) -> str:
    """The export cache's key: the digest over every weight file (LM + embedding tower)."""
    from fastlm.checkpoint import load_checkpoint

    return load_checkpoint(ckpt_dir).weights_digest


def exported(tmp_path_factory, checkpoints: dict, arch: str, dtype: str) -> Path:
    """The session's export of (arch, dtype): made on first request, then reused.

    Laid out as <cache>/<model sha256>-<dtype>, the onnx backend's cache layout. The exporter
    is taken from its own module, not from `fastlm.export`, whose name tests monkeypatch with
    fakes that call this helper (test_integrity.py)."""
    from fastlm.export.pipeline import export

    cache = tmp_path_factory.getbasetemp() / "onnx-cache"
    path = cache / f"{model_sha(checkpoints[arch])}-{dtype}"
    if not path.exists():
        export(checkpoints[arch], path, dtype=dtype)
    return path


def read_manifest(directory: Path) -> dict:
    """The manifest.json of a checkpoint, export or index directory."""
    return json.loads((directory / "manifest.json").read_text(encoding="utf-8"))


def write_manifest(directory: Path, manifest) -> None:
    """Replace a directory's manifest.json (its files' sha256 entries as given)."""
    (directory / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def tiny_lm(arch: str, vocab: int = 50):
    """A seeded LM of width 16, 2 layers: a tower over it trains in milliseconds a step."""
    from fastlm.models import SimpleLSTM_LM, SimpleTransformer_LM

    torch.manual_seed(0)
    if arch == "lstm":
        return SimpleLSTM_LM(vocab_size=vocab, embedding_dim=16, hidden_dim=16, num_layers=2)
    return SimpleTransformer_LM(vocab_size=vocab, d_model=16, nhead=2, num_layers=2, max_len=64)


def tiny_tower_data(n: int = 24):
    """(scored pairs, distillation set) of n random token lists over ids 2..49."""
    import numpy as np

    from fastlm.embedding.data import StsPairs
    from fastlm.embedding.trainer import DistillSet

    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(2, 50, size=rng.integers(1, 12))) for _ in range(n)]
    pairs = StsPairs(seqs[: n // 2], seqs[n // 2 :], rng.uniform(0, 5, n // 2).astype(np.float32))
    teacher = rng.standard_normal((n, 8)).astype(np.float16)
    return pairs, DistillSet(seqs, teacher)


class BagOfLetters:
    """A stand-in model: letter counts, so cosines and rankings can be worked out by hand."""

    def embed(self, texts, batch_size=64):
        out = np.zeros((len(texts), 26), dtype=np.float32)
        for i, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
