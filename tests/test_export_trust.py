"""An export directory whose manifest was re-hashed after an edit: the sha256 entries match, so
only the checks of the format, the model facts and the graphs themselves can refuse it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from model_helpers import read_manifest, write_manifest
from onnx import TensorProto, helper

from fastlm.io import sha256_file
from fastlm.ort.format import FORMAT
from fastlm.runtime import ExportDirError, OnnxModel


def _rehash(d: Path, manifest: dict | None = None) -> None:
    """What an editor covering its tracks does: every listed file's sha256 recomputed."""
    manifest = manifest or read_manifest(d)
    manifest["files"] = {name: sha256_file(d / name) for name in manifest["files"]}
    write_manifest(d, manifest)


def test_untouched_export_loads(export_copy):
    d = export_copy("transformer")
    _rehash(d)  # re-hashing alone changes nothing
    assert OnnxModel.load(d).backend.info.context_length == read_manifest(d)["model"]["max_len"]


@pytest.mark.parametrize("fmt", ["fastlm-onnx/1", "fastlm-onnx/99", FORMAT + " ", None, 2])
def test_other_format_is_refused(export_copy, fmt):
    d = export_copy("lstm")
    manifest = read_manifest(d)
    manifest["format"] = fmt
    _rehash(d, manifest)
    with pytest.raises(ExportDirError, match=f"format .*expected {FORMAT}"):
        OnnxModel.load(d)


@pytest.mark.parametrize("where", ["manifest", "config", "both"])
def test_outsize_max_len_is_refused(export_copy, where):
    """max_len 1e9 would let a text run far past the position table the graphs hold."""
    d = export_copy("transformer")
    manifest = read_manifest(d)
    if where in ("manifest", "both"):
        manifest["model"]["max_len"] = 10**9
    if where in ("config", "both"):
        config = json.loads((d / "config.json").read_text())
        config["max_len"] = 10**9
        (d / "config.json").write_text(json.dumps(config))
    _rehash(d, manifest)
    with pytest.raises(ExportDirError, match="max_len"):
        OnnxModel.load(d)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("vocab_size", 10**7, "vocab_size must be in"),
        ("embed_dim", 0, "embed_dim must be in"),
        ("num_layers", 2.0, "num_layers must be an int"),
        ("embed_window", 10**8, "embed_window must be in"),
        ("attention_scores", "yes", "attention_scores must be a bool"),
        ("state", {"hidden_dim": 10**6}, r"state\['hidden_dim'\] must be in"),
        ("architecture", "../lstm", "architecture must be"),
    ],
)
def test_outsize_model_facts_are_refused(export_copy, field, value, match):
    d = export_copy("lstm")
    manifest = read_manifest(d)
    manifest["model"][field] = value
    _rehash(d, manifest)
    with pytest.raises(ExportDirError, match=match):
        OnnxModel.load(d)


def test_facts_edited_within_bounds_are_refused(export_copy):
    """A max_len that is in range but not the graphs' own: the manifest and config.json both
    say 4,000, the graphs were exported with 5,000 positions."""
    d = export_copy("transformer")
    manifest = read_manifest(d)
    manifest["model"]["max_len"] = 4000
    config = json.loads((d / "config.json").read_text())
    config["max_len"] = 4000
    (d / "config.json").write_text(json.dumps(config))
    _rehash(d, manifest)
    with pytest.raises(ExportDirError, match=r"embed.onnx.*max_len"):
        OnnxModel.load(d)


def test_config_that_disagrees_with_the_manifest_is_refused(export_copy):
    d = export_copy("lstm")
    config = json.loads((d / "config.json").read_text())
    config["vocab_size"] = 1999
    (d / "config.json").write_text(json.dumps(config))
    _rehash(d)
    with pytest.raises(ExportDirError, match="config.json.*vocab_size"):
        OnnxModel.load(d)


def test_unknown_dtype_is_refused(export_copy):
    d = export_copy("lstm")
    manifest = read_manifest(d)
    manifest["dtype"] = "int4"
    _rehash(d, manifest)
    with pytest.raises(ExportDirError, match="dtype 'int4'"):
        OnnxModel.load(d)


@pytest.mark.parametrize("graph", ["embed.onnx", "lm.onnx", "decode.onnx"])
@pytest.mark.parametrize("arch, other", [("lstm", "transformer"), ("transformer", "lstm")])
def test_graph_of_another_model_is_refused(export_copy, export_of, arch, other, graph):
    """The other architecture's graph has the same names and, at these sizes, the same vocab
    and width: its embeddings are unrelated to this model's (cosine ~0), yet a digest check
    alone passes once the manifest is re-hashed."""
    d = export_copy(arch)
    shutil.copyfile(export_of(other) / graph, d / graph)
    _rehash(d)
    with pytest.raises(ExportDirError, match=f"{graph}.*architecture"):
        OnnxModel.load(d)


def _stamped_graph(like: Path, out: Path, logits_dims: list) -> None:
    """A one-node lm graph carrying `like`'s stamp, whose logits have `logits_dims`."""
    stamp = {p.key: p.value for p in onnx.load(str(like)).metadata_props}
    node = helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT)
    expand = helper.make_node("Unsqueeze", ["ids_f", "axes"], ["logits"])
    graph = helper.make_graph(
        [node, expand],
        "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, logits_dims)],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, stamp)
    onnx.save(model, str(out))


def test_graph_shapes_are_checked_against_the_facts(export_copy):
    """Even with this export's stamp, a graph whose logits are not (batch, seq, vocab) is
    refused, naming the file and the output."""
    d = export_copy("lstm")
    _stamped_graph(d / "lm.onnx", d / "lm.onnx", ["batch", "seq", 1])
    _rehash(d)
    with pytest.raises(ExportDirError, match=r"lm.onnx: output 'logits'.*\[batch, seq, 2000\]"):
        OnnxModel.load(d)


def test_graph_without_stamp_is_refused(export_copy):
    d = export_copy("lstm")
    model = onnx.load(str(d / "decode.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(d / "decode.onnx"))
    _rehash(d)
    with pytest.raises(ExportDirError, match="decode.onnx.*export it again"):
        OnnxModel.load(d)
