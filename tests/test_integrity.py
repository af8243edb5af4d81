"""File integrity: checkpoints, manifests, run pointers, the ONNX cache and saved indexes are
checked before they are trusted, and every defect is a typed error naming the file."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import exported, read_manifest, write_manifest
from safetensors.torch import load_file, save_file

import fastlm
import fastlm.checkpoint as checkpoint_mod
import fastlm.index.store as index_mod
from fastlm.checkpoint import CheckpointError, load_checkpoint, verify_checkpoint
from fastlm.index import IndexFileError
from fastlm.tokenizer import Tokenizer


# ---------------------------------------------------------------------- helpers
@pytest.fixture
def ckpt(small_checkpoints, tmp_path) -> Path:
    """A private copy of the small LSTM checkpoint, free to damage."""
    dst = tmp_path / "ckpt"
    shutil.copytree(small_checkpoints["lstm"], dst)
    return dst


def _replace_signed(path: Path, name: str, data: bytes) -> None:
    """Replace a file AND its manifest sha256: a well-formed checkpoint with hostile content."""
    (path / name).write_bytes(data)
    manifest = read_manifest(path)
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    write_manifest(path, manifest)


def _edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    _replace_signed(path, "config.json", json.dumps({**config, **changes}).encode())


def _edit_tensors(path: Path, edit) -> None:
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    tmp = path / "edited.safetensors"
    save_file(tensors, str(tmp))
    data = tmp.read_bytes()
    tmp.unlink()
    _replace_signed(path, "model.safetensors", data)


@pytest.fixture
def no_allocation(monkeypatch):
    """Fail the test if a model gets built: validation must come first."""

    def refuse(config):
        raise AssertionError(f"a model was built from an invalid config: {config}")

    monkeypatch.setattr(checkpoint_mod, "build_model", refuse)


# ---------------------------------------------------------------------- config bounds
@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"hidden_dim": 10**6}, "hidden_dim must be in [1, 8192]"),
        ({"num_layers": 10**5}, "num_layers must be in [1, 64]"),
        ({"vocab_size": 10**9}, "vocab_size must be in [1, 65535]"),
        ({"embedding_dim": 0}, "embedding_dim must be in [1, 8192]"),
        ({"num_layers": True}, "num_layers must be an int"),
        ({"hidden_dim": 256.0}, "hidden_dim must be an int"),
        ({"dropout": float("nan")}, "dropout must be a finite number"),
        ({"dropout": "0.1"}, "dropout must be a number"),
        ({"vocab_size": 65535, "embedding_dim": 8192}, "parameters"),
        ({"architecture": "rnn"}, "architecture must be one of"),
        ({"colour": "blue"}, "unknown lstm config keys"),
    ],
)
def test_config_bounds_are_checked_before_allocation(ckpt, no_allocation, changes, fragment):
    _edit_config(ckpt, **changes)
    with pytest.raises(CheckpointError, match="config.json is invalid") as err:
        load_checkpoint(ckpt)
    assert fragment in str(err.value)


def test_config_that_is_not_an_object_is_a_checkpoint_error(ckpt, no_allocation):
    _replace_signed(ckpt, "config.json", b"[1, 2]")
    with pytest.raises(CheckpointError, match="must be a JSON object"):
        load_checkpoint(ckpt)


def test_transformer_config_bounds():
    from fastlm.models import TransformerConfig

    with pytest.raises(ValueError, match=r"d_model must be in \[1, 8192\]"):
        TransformerConfig(d_model=10**6)
    with pytest.raises(ValueError, match=r"max_len must be in \[1, 65536\]"):
        TransformerConfig(max_len=10**8)
    with pytest.raises(TypeError, match="nhead must be an int"):
        TransformerConfig(nhead=4.0)


# ---------------------------------------------------------------------- tensors and vocab
@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda t: t.pop("fc.weight"), "missing tensors ['fc.weight']"),
        (lambda t: t.update(extra=torch.zeros(2)), "unexpected tensors ['extra']"),
        (lambda t: t.update({"fc.bias": torch.zeros(7)}), "has shape (7,)"),
        (lambda t: t.update({"fc.bias": torch.zeros(2000, dtype=torch.int64)}), "dtype"),
    ],
    ids=["missing", "extra", "wrong-shape", "int-dtype"],
)
def test_tensor_defects_are_checkpoint_errors(ckpt, edit, fragment):
    names = set(load_file(str(ckpt / "model.safetensors")))
    assert "fc.weight" in names and "fc.bias" in names
    _edit_tensors(ckpt, edit)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt)
    assert fragment in str(err.value) and "model.safetensors" in str(err.value)


def test_tokenizer_smaller_than_model_vocab_is_refused(ckpt, tiny_data, no_allocation):
    small = Tokenizer.train([tiny_data / "train.txt"], vocab_size=300)
    _replace_signed(ckpt, "tokenizer.json", small.to_str().encode())
    with pytest.raises(CheckpointError, match="tokenizer has 300 tokens but the model's vocab"):
        load_checkpoint(ckpt)


def test_tokenizer_larger_than_model_vocab_is_refused(ckpt, no_allocation):
    _edit_config(ckpt, vocab_size=1000)  # ids >= 1000 would index past the embedding table
    with pytest.raises(CheckpointError, match="tokenizer has 2000 tokens but the model's voc"):
        load_checkpoint(ckpt)


# ---------------------------------------------------------------------- manifests
@pytest.mark.parametrize("files", [[], None, {}, "model.safetensors", 3], ids=repr)
def test_manifest_files_must_be_a_non_empty_object(ckpt, files):
    write_manifest(ckpt, {**read_manifest(ckpt), "files": files})
    with pytest.raises(CheckpointError, match="'files' must be a non-empty object"):
        load_checkpoint(ckpt)


def test_manifest_that_is_not_an_object_is_refused(ckpt):
    (ckpt / "manifest.json").write_text("[]")
    with pytest.raises(CheckpointError, match="must hold a JSON object"):
        load_checkpoint(ckpt)


def test_bit_flip_in_an_unlisted_weight_file_is_caught(ckpt):
    """An empty or partial `files` must not let weights load unverified."""
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-5] ^= 0x01
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    manifest = read_manifest(ckpt)
    del manifest["files"]["model.safetensors"]
    write_manifest(ckpt, manifest)
    with pytest.raises(CheckpointError, match="does not list model.safetensors"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("name", ["../outside.txt", "/etc/hostname", "sub/x", "..", "a\\b", ""])
def test_manifest_names_must_be_plain_and_reveal_nothing(ckpt, tmp_path, name):
    """A name with a separator is refused before any file is read, so the error text is the
    same whether or not the target exists."""
    (tmp_path / "outside.txt").write_text("secret")
    manifest = read_manifest(ckpt)
    manifest["files"][name] = "0" * 64
    write_manifest(ckpt, manifest)
    with pytest.raises(CheckpointError, match="is not a plain file name") as err:
        verify_checkpoint(ckpt)
    assert "sha256 mismatch" not in str(err.value) and "missing" not in str(err.value)


def test_manifest_digest_must_be_hex(ckpt):
    manifest = read_manifest(ckpt)
    manifest["files"]["config.json"] = "not-a-digest"
    write_manifest(ckpt, manifest)
    with pytest.raises(CheckpointError, match="is not 64 hex digits"):
        verify_checkpoint(ckpt)


# ---------------------------------------------------------------------- run pointers
@pytest.mark.parametrize("pointer", ["../elsewhere", "/tmp", "", "checkpoints/step_9999999"])
def test_latest_must_name_a_checkpoint_inside_the_run(small_checkpoints, tmp_path, pointer):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(small_checkpoints["lstm"], tmp_path / "elsewhere")  # a valid foreign model
    (run / "latest").write_text(pointer + "\n")
    with pytest.raises(CheckpointError, match="latest"):
        fastlm.load(run, backend="eager")


def test_trainer_state_with_a_non_int_step_is_refused(ckpt):
    from fastlm.checkpoint import load_trainer_state

    (ckpt / "trainer_state.json").write_text(json.dumps({"step": "7", "tokens_seen": 0}))
    with pytest.raises(CheckpointError, match="non-negative int 'step'"):
        load_trainer_state(ckpt)


# ---------------------------------------------------------------------- ONNX cache
def _weights_digest(ckpt_dir: Path) -> str:
    """The onnx backend's cache key for a checkpoint."""
    return load_checkpoint(ckpt_dir).weights_digest


def _foreign_export_under_key(tmp_path_factory, small_checkpoints, key_arch, src, dtype):
    """A cache dir whose entry for `key_arch`'s fp32 key holds the export `src` instead."""
    cache = tmp_path_factory.mktemp("foreign-cache")
    entry = cache / f"{_weights_digest(small_checkpoints[key_arch])}-fp32"
    shutil.copytree(exported(tmp_path_factory, small_checkpoints, src, dtype), entry)
    return cache, entry


def _fake_export(tmp_path_factory, small_checkpoints, calls):
    """Stands in for the slow exporter: copies the session's real export of the request."""

    def export(ckpt_path, out, dtype="fp32", force=False):
        arch = next(a for a, p in small_checkpoints.items() if Path(p) == Path(ckpt_path))
        calls.append((arch, dtype, force))
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(exported(tmp_path_factory, small_checkpoints, arch, dtype), out)
        return out

    return export


def test_onnx_cache_entry_of_other_weights_is_not_used(
    tmp_path_factory, small_checkpoints, monkeypatch
):
    """An LSTM export under the Transformer's cache key is replaced, never run."""
    cache, entry = _foreign_export_under_key(
        tmp_path_factory, small_checkpoints, "transformer", "lstm", "fp32"
    )
    calls = []
    monkeypatch.setattr(
        "fastlm.export.export", _fake_export(tmp_path_factory, small_checkpoints, calls)
    )
    model = fastlm.load(small_checkpoints["transformer"], backend="onnx", cache_dir=cache)
    assert calls == [("transformer", "fp32", True)]
    source = model.backend.manifest["source"]["weights_sha256"]
    assert source == _weights_digest(small_checkpoints["transformer"])
    assert model.backend.info.architecture == "transformer"


def test_onnx_cache_entry_of_another_dtype_is_not_used(
    tmp_path_factory, small_checkpoints, monkeypatch
):
    cache, entry = _foreign_export_under_key(
        tmp_path_factory, small_checkpoints, "lstm", "lstm", "int8"
    )
    calls = []
    monkeypatch.setattr(
        "fastlm.export.export", _fake_export(tmp_path_factory, small_checkpoints, calls)
    )
    model = fastlm.load(small_checkpoints["lstm"], backend="onnx", cache_dir=cache)
    assert calls == [("lstm", "fp32", True)] and model.backend.dtype == "fp32"


def test_export_dir_must_match_the_requested_dtype(tmp_path_factory, small_checkpoints):
    lstm = small_checkpoints["lstm"]
    int8 = exported(tmp_path_factory, small_checkpoints, "lstm", "int8")
    with pytest.raises(ValueError, match="holds a int8 export, not the requested dtype 'fp32'"):
        fastlm.load(lstm, backend="onnx", export_dir=int8, dtype="fp32")
    assert fastlm.load(lstm, backend="onnx", export_dir=int8).backend.dtype == "int8"
    assert fastlm.load(lstm, backend="onnx", export_dir=int8, dtype="int8").backend.dtype == "int8"


def test_export_dir_of_other_weights_is_refused(tmp_path_factory, small_checkpoints):
    other = exported(tmp_path_factory, small_checkpoints, "lstm", "fp32")
    with pytest.raises(ValueError, match="exported from different weights"):
        fastlm.load(small_checkpoints["transformer"], backend="onnx", export_dir=other)


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda m: m.update(files=["embed.onnx"]), "'files' must be a non-empty object"),
        (lambda m: m.update(files=None), "'files' must be a non-empty object"),
        (lambda m: m["files"].update({"../secret": "0" * 64}), "is not a plain file name"),
        (lambda m: m["files"].update({"/etc/hostname": "0" * 64}), "is not a plain file name"),
        (lambda m: m.update(model=[]), "'model' must be an object"),
        (lambda m: m["model"].pop("max_len"), "lacks ['max_len']"),
    ],
    ids=["files-list", "files-null", "dotdot", "absolute", "model-list", "model-key"],
)
def test_export_manifest_schema_is_checked(
    tmp_path_factory, small_checkpoints, tmp_path, edit, fragment
):
    from fastlm.runtime import ExportDirError, OnnxModel

    copy = tmp_path / "export"
    shutil.copytree(exported(tmp_path_factory, small_checkpoints, "lstm", "fp32"), copy)
    manifest = read_manifest(copy)
    edit(manifest)
    write_manifest(copy, manifest)
    with pytest.raises(ExportDirError) as err:
        OnnxModel.load(copy)
    assert fragment in str(err.value)


# ---------------------------------------------------------------------- Index
@pytest.fixture(scope="module")
def lstm(small_checkpoints):
    return fastlm.load(small_checkpoints["lstm"], backend="eager", threads=1)


def test_index_save_writes_a_verified_directory(lstm, tmp_path):
    index = fastlm.Index(lstm).add(["alpha", "beta", ""])
    index.save(tmp_path / "idx")
    version = tmp_path / "idx" / read_manifest(tmp_path / "idx")["current"]  # the pointer's target
    names = sorted(p.name for p in version.iterdir() if not p.name.startswith("bm25."))
    assert names == ["embeddings.npy", "index.json", "manifest.json"]  # + the lexical side's
    again = fastlm.Index.load(tmp_path / "idx", lstm)
    assert again.texts == ["alpha", "beta", ""]
    np.testing.assert_array_equal(again.embeddings, index.embeddings)


def test_interrupted_index_save_leaves_the_old_index_whole(lstm, tmp_path, monkeypatch):
    """A save cut between writing vectors and texts must not pair new vectors with old texts."""
    path = tmp_path / "idx"
    fastlm.Index(lstm).add(["old one", "old two"]).save(path)
    before = fastlm.Index.load(path, lstm)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # after embeddings.npy and index.json are written

    monkeypatch.setattr(index_mod, "sha256_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fastlm.Index(lstm).add(["new text"]).save(path)
    monkeypatch.undo()
    after = fastlm.Index.load(path, lstm)
    assert after.texts == ["old one", "old two"]
    np.testing.assert_array_equal(after.embeddings, before.embeddings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temp directory left


@pytest.mark.parametrize("target", ["embeddings.npy", "index.json"])
def test_edited_index_file_is_refused(lstm, tmp_path, target):
    path = tmp_path / "idx"
    fastlm.Index(lstm).add(["alpha", "beta"]).save(path)
    target = Path(read_manifest(path)["current"]) / target
    data = bytearray((path / target).read_bytes())
    data[-3] ^= 0x01
    (path / target).write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match=f"sha256 mismatch for .*{target}"):
        fastlm.Index.load(path, lstm)


@pytest.mark.parametrize(
    ("manifest", "fragment"),
    [(None, "has no manifest.json"), ("[]", "not a fastlm-index/1"), ("{", "is corrupt")],
)
def test_index_manifest_defects(lstm, tmp_path, manifest, fragment):
    path = tmp_path / "idx"
    fastlm.Index(lstm).add(["alpha"]).save(path)
    if manifest is None:
        (path / "manifest.json").unlink()
    else:
        (path / "manifest.json").write_text(manifest)
    with pytest.raises(IndexFileError, match=fragment):
        fastlm.Index.load(path, lstm)


def test_index_save_never_replaces_a_foreign_directory(lstm, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a fastlm index"):
        fastlm.Index(lstm).add(["alpha"]).save(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_index_of_another_architecture_is_refused(lstm, small_checkpoints, tmp_path):
    fastlm.Index(lstm).add(["alpha"]).save(tmp_path / "idx")
    transformer = fastlm.load(small_checkpoints["transformer"], backend="eager", threads=1)
    with pytest.raises(ValueError, match="built with"):
        fastlm.Index.load(tmp_path / "idx", transformer)
