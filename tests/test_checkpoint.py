"""Checkpoint directories: atomic writes, sha256 verification, clear errors, no pickle."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

import fastlm.checkpoint as checkpoint_mod
from fastlm.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_optimizer_state,
    load_trainer_state,
    save_checkpoint,
    verify_checkpoint,
)
from fastlm.io import atomic_write_dir
from fastlm.models import SimpleLSTM_LM, SimpleTransformer_LM
from fastlm.models.layers import NextTokenLogits

ALLOWED_SUFFIXES = {".safetensors", ".json"}


def _model(arch: str):
    torch.manual_seed(0)
    if arch == "lstm":
        return SimpleLSTM_LM(vocab_size=2000, embedding_dim=16, hidden_dim=16, dropout=0.1)
    return SimpleTransformer_LM(
        vocab_size=2000, d_model=16, nhead=2, num_layers=1, dim_feedforward=32, max_len=32
    )


def _trained_optimizer(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.98), weight_decay=0.01)
    for _ in range(2):
        logits = NextTokenLogits(model)(torch.randint(0, 2000, (2, 5)))
        opt.zero_grad()
        logits.square().mean().backward()
        opt.step()
    return opt


@pytest.fixture
def saved(tmp_path, tiny_tokenizer):
    """A training checkpoint (weights, optimizer, trainer state) of a small LSTM."""
    model = _model("lstm")
    opt = _trained_optimizer(model)
    path = save_checkpoint(
        tmp_path / "ckpt", model, tiny_tokenizer, opt, {"step": 2, "tokens_seen": 20}
    )
    return path, model, opt


def test_round_trip(saved, tiny_tokenizer):
    path, model, _ = saved
    names = sorted(p.name for p in path.iterdir())
    assert names == [
        "config.json",
        "manifest.json",
        "model.safetensors",
        "optimizer.safetensors",
        "tokenizer.json",
        "trainer_state.json",
    ]
    ckpt = load_checkpoint(path, expect_architecture="lstm")
    assert ckpt.config == model.config and not ckpt.model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[name], tensor), name
    assert ckpt.tokenizer.encode("hello there") == tiny_tokenizer.encode("hello there")
    assert load_trainer_state(path) == {"step": 2, "tokens_seen": 20}
    assert ckpt.manifest["architecture"] == "lstm"


def test_optimizer_round_trip_continues_identically(saved):
    """Restored AdamW state gives the same next update as the original optimizer."""
    path, model, opt = saved
    clone = _model("lstm")
    clone.load_state_dict(model.state_dict())
    clone_opt = torch.optim.AdamW(clone.parameters(), lr=1e-2, betas=(0.9, 0.98), weight_decay=0.01)
    load_optimizer_state(path, clone_opt)
    ids = torch.randint(0, 2000, (2, 5))
    for m, o in ((model, opt), (clone, clone_opt)):
        torch.manual_seed(5)  # same dropout masks
        o.zero_grad()
        m(ids)[0].square().mean().backward()
        o.step()
    for (name, a), b in zip(model.state_dict().items(), clone.state_dict().values()):
        assert torch.equal(a, b), name


def test_no_pickle_anywhere(saved, monkeypatch):
    path, _, _ = saved
    for f in path.rglob("*"):
        assert f.suffix in ALLOWED_SUFFIXES, f"{f.name}: only safetensors + JSON allowed"
    for f in path.glob("*.json"):
        json.loads(f.read_text(encoding="utf-8"))

    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint load must never unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    ckpt = load_checkpoint(path)
    load_optimizer_state(path, torch.optim.AdamW(ckpt.model.parameters()))
    load_trainer_state(path)


def test_sha256_mismatch_names_the_file(saved):
    path, _, _ = saved
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern in the last tensor value: still parseable
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"sha256 mismatch.*model\.safetensors"):
        verify_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(path)


def test_edited_config_is_detected(saved):
    path, _, _ = saved
    cfg = json.loads((path / "config.json").read_text())
    cfg["dropout"] = 0.5
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "name",
    [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "manifest.json",
        "optimizer.safetensors",
        "trainer_state.json",
    ],
)
def test_missing_file_is_named(saved, name):
    path, _, _ = saved
    (path / name).unlink()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        verify_checkpoint(path)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not-here"):
        load_checkpoint(tmp_path / "not-here")


def test_corrupt_manifest(saved):
    path, _, _ = saved
    (path / "manifest.json").write_text("{truncated", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"manifest\.json is corrupt"):
        load_checkpoint(path)


def test_optimizer_and_state_file_errors(tmp_path, tiny_tokenizer):
    """Without the manifest's protection (no training files saved) the loaders still name files."""
    model = _model("lstm")
    path = save_checkpoint(tmp_path / "plain", model, tiny_tokenizer)
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors"):
        load_optimizer_state(path, opt)
    with pytest.raises(CheckpointError, match=r"trainer_state\.json"):
        load_trainer_state(path)
    (path / "optimizer.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors is corrupt"):
        load_optimizer_state(path, opt)
    (path / "trainer_state.json").write_text("{nope")
    with pytest.raises(CheckpointError, match=r"trainer_state\.json is corrupt"):
        load_trainer_state(path)


@pytest.mark.parametrize(
    ("saved_arch", "expected"), [("lstm", "transformer"), ("transformer", "lstm")]
)
def test_wrong_architecture(tmp_path, tiny_tokenizer, saved_arch, expected):
    path = save_checkpoint(tmp_path / "c", _model(saved_arch), tiny_tokenizer)
    with pytest.raises(CheckpointError, match=f"holds a {saved_arch} model, not a {expected}"):
        load_checkpoint(path, expect_architecture=expected)
    assert load_checkpoint(path, expect_architecture=saved_arch).config.architecture == saved_arch


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir())


def test_atomic_dir_failure_leaves_nothing(tmp_path):
    class Boom(Exception):
        pass

    def fill(tmp):
        (tmp / "half.bin").write_bytes(b"x" * 1000)
        raise Boom

    with pytest.raises(Boom):
        atomic_write_dir(tmp_path / "out", fill)
    assert _leftovers(tmp_path) == []


def test_atomic_checkpoint_failure_keeps_old(tmp_path, tiny_tokenizer, monkeypatch):
    """A save failing halfway leaves no partial directory and the old checkpoint intact."""
    model = _model("lstm")
    path = save_checkpoint(tmp_path / "ckpt", model, tiny_tokenizer)
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def failing_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_mod, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ckpt", model, tiny_tokenizer, force=True)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "new", model, tiny_tokenizer)
    assert _leftovers(tmp_path) == ["ckpt"]
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    verify_checkpoint(path)


def test_existing_directory_needs_force(saved, tiny_tokenizer):
    path, model, _ = saved
    with pytest.raises(FileExistsError, match="force"):
        save_checkpoint(path, model, tiny_tokenizer)
    save_checkpoint(path, model, tiny_tokenizer, force=True)
    assert not (path / "optimizer.safetensors").exists()  # replaced as a whole
    verify_checkpoint(path)
    assert _leftovers(path.parent) == ["ckpt"]
