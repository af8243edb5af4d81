"""Shipped models: listed, loadable offline by name, verified by sha256, honest manifests."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import fastlm
from fastlm.checkpoint import CheckpointError, load_pretrained
from fastlm.hub import WEIGHTS_DIR
from fastlm.models import SimpleLSTM_LM, SimpleTransformer_LM


def test_models_lists_both():
    assert {"lstm", "transformer"} <= set(fastlm.available_models())


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_shipped_model_loads_and_embeds(name):
    m = fastlm.load(name)
    vecs = m.embed(["hello world", "the sea"])
    assert vecs.shape == (2, 256) and vecs.dtype == np.float32
    manifest = json.loads((WEIGHTS_DIR / name / "manifest.json").read_text())
    for key in ("tokens_seen", "train_seconds", "command", "hardware"):
        assert key in manifest["training"]
    assert manifest["test"]["bits_per_byte"] > 0
    assert "optimizer.safetensors" not in manifest["files"]


def test_shipped_models_are_trained():
    """A trained model finds ordinary English far likelier than shuffled characters."""
    m = fastlm.load("transformer")
    text = "It was a bright cold day in April, and the clocks were striking thirteen."
    shuffled = "".join(sorted(text))
    good, bad = m.score([text, shuffled])
    assert good.bits_per_byte < 3.0 < bad.bits_per_byte


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match="transformer") as err:
        fastlm.load("gpt-17")
    assert "lstm" in str(err.value)


def test_edited_or_missing_file_is_named(tmp_path):
    copy = tmp_path / "t"
    shutil.copytree(WEIGHTS_DIR / "transformer", copy)
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        fastlm.load(copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        fastlm.load(copy)


def test_wrong_architecture_for_class():
    assert isinstance(load_pretrained(SimpleTransformer_LM, "transformer"), SimpleTransformer_LM)
    with pytest.raises(CheckpointError, match="lstm"):
        load_pretrained(SimpleTransformer_LM, "lstm")
    with pytest.raises(CheckpointError, match="transformer"):
        load_pretrained(SimpleLSTM_LM, "transformer")
