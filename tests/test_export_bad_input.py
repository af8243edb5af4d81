"""Export and export-directory errors: existing/unwritable output, bad dtype, edited files, the
parity check, and the `fastlm export` command line."""

from __future__ import annotations

import json
import os

import pytest
from model_helpers import read_manifest, write_manifest

from fastlm.cli import main
from fastlm.export import export
from fastlm.export.parity import check, failures
from fastlm.runtime import ExportDirError, OnnxModel, verify_export_dir


@pytest.fixture
def copy_of(export_copy):
    """A private copy of the session's fp32 LSTM export."""
    return export_copy("lstm")


def test_unknown_dtype_is_refused(small_checkpoints, tmp_path):
    with pytest.raises(ValueError, match="unknown dtype 'int4'.*fp32, fp16, int8"):
        export(small_checkpoints["lstm"], tmp_path / "out", dtype="int4")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as err:  # argparse rejects it before anything runs
        main(["export", str(small_checkpoints["lstm"]), "--dtype", "int4", "--out", "x"])
    assert err.value.code == 2


def test_unknown_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        export("no-such-model", tmp_path / "out")


def test_unwritable_output_is_refused_early(small_checkpoints, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="a-file is not a directory"):
        export(small_checkpoints["lstm"], blocker / "out")
    assert main(["export", str(small_checkpoints["lstm"]), "--out", str(blocker / "out")]) == 1
    assert "not a directory" in capsys.readouterr().err
    # root can write anywhere, so simulate a read-only parent
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(PermissionError, match="no write permission"):
        export(small_checkpoints["lstm"], tmp_path / "ro" / "out")


def test_existing_output_needs_force(small_checkpoints, tmp_path, capsys):
    """Refused without --force (nothing touched); replaced with it, via the command line."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        export(small_checkpoints["lstm"], out)
    args = ["export", str(small_checkpoints["lstm"]), "--format", "onnx", "--out", str(out)]
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main([*args, "--force"]) == 0
    printed = capsys.readouterr().out
    assert "exported fp32 ONNX" in printed and "greedy agreement 100.0%" in printed
    assert not (out / "keep.txt").exists()
    assert verify_export_dir(out)["dtype"] == "fp32"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


@pytest.mark.parametrize("name", ["embed.onnx", "decode.onnx", "tokenizer.json"])
def test_missing_file_is_named(copy_of, name):
    (copy_of / name).unlink()
    with pytest.raises(ExportDirError, match=f"export file missing: .*{name}"):
        OnnxModel.load(copy_of)


@pytest.mark.parametrize("name", ["lm.onnx", "config.json", "parity.json"])
def test_edited_file_fails_sha256(copy_of, name):
    with open(copy_of / name, "ab") as f:
        f.write(b" ")
    with pytest.raises(ExportDirError, match=f"sha256 mismatch for .*{name}"):
        OnnxModel.load(copy_of)


def test_bad_manifest(copy_of, tmp_path):
    (copy_of / "manifest.json").write_text("{not json")
    with pytest.raises(ExportDirError, match="corrupt"):
        OnnxModel.load(copy_of)
    (copy_of / "manifest.json").unlink()
    with pytest.raises(ExportDirError, match="not a fastlm export"):
        OnnxModel.load(copy_of)
    with pytest.raises(ExportDirError, match="not found"):
        OnnxModel.load(tmp_path / "nowhere")


def test_unlisted_file_is_refused(copy_of):
    manifest = read_manifest(copy_of)
    del manifest["files"]["lm.onnx"]
    write_manifest(copy_of, manifest)
    with pytest.raises(ExportDirError, match="lm.onnx is not listed"):
        OnnxModel.load(copy_of)


def test_broken_bound_raises_clear_error(export_of):
    report = json.loads((export_of("lstm") / "parity.json").read_text())
    check(report)  # the real one passes
    report["embedding"]["cosine_min"] = 0.98
    report["greedy"]["agreement"] = 0.5
    report["bounds"] = {"embedding.cosine_min": 0.99, "greedy.agreement": 0.9}
    report["dtype"], report["finite"] = "int8", False
    report["failures"] = failures(report)
    assert len(report["failures"]) == 3
    with pytest.raises(
        ValueError,
        match="int8 export fails its parity check.*NaN.*cosine_min = 0.980000 is below.*agreement",
    ):
        check(report)
