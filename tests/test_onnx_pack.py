"""ONNX packs (fastlm/export/pack.py, pack_format.py) and what backend "auto" does with them.

A pack's graphs are the exports' graphs with their weights taken out: run on ONNX Runtime they
must give exactly what the export directories give. "auto" on a CPU runs a pack only when it
verifies against the checkpoint's weights and its certificates hold the budget; otherwise eager,
saying why. The shipped models' packs must match the shipped weights (a stale pack fails here)."""

from __future__ import annotations

import json
import logging
import shutil
import sys

import numpy as np
import pytest
from model_helpers import exported

pytest.importorskip("onnxruntime")

import fastlm  # noqa: E402
from fastlm.checkpoint import load_checkpoint  # noqa: E402
from fastlm.engine.loading import choose_auto  # noqa: E402
from fastlm.export.pack import pack  # noqa: E402
from fastlm.hub import WEIGHTS_DIR  # noqa: E402
from fastlm.ort.format import ExportDirError  # noqa: E402
from fastlm.ort.packs import PACK_DIR, PACK_MANIFEST, PACK_TENSORS, read_pack  # noqa: E402
from fastlm.runtime import OrtBackend, verify_export_dir  # noqa: E402

ARCHS = ("lstm", "transformer")
TEXTS = ["The quick brown fox.", "", "Ünïcödé 日本語", "Once upon a time there was a girl. " * 12]


@pytest.fixture(scope="module", params=ARCHS)
def packed_copy(request, tmp_path_factory, small_checkpoints):
    """(arch, a copy of the small checkpoint with a pack: int8 embed, fp32 lm and decode)."""
    arch = request.param
    ckpt = tmp_path_factory.mktemp(f"packed-{arch}") / "ckpt"
    shutil.copytree(small_checkpoints[arch], ckpt)
    fp32, int8 = (exported(tmp_path_factory, small_checkpoints, arch, d) for d in ("fp32", "int8"))
    pack(ckpt, {"embed": int8, "lm": fp32, "decode": fp32})
    return arch, ckpt


def export_backend(path):
    return OrtBackend(path, verify_export_dir(path), threads=1)


def test_packed_graphs_compute_what_their_exports_compute(packed_copy, tmp_path_factory,
                                                          small_checkpoints):  # fmt: skip
    arch, ckpt = packed_copy
    fp32, int8 = (exported(tmp_path_factory, small_checkpoints, arch, d) for d in ("fp32", "int8"))
    ckpt_obj = load_checkpoint(ckpt)
    packed = OrtBackend(ckpt, (p := read_pack(ckpt, ckpt_obj.weights_digest)).manifest, 1, None,
                        packed=p)  # fmt: skip
    ids = np.array([[5, 9, 14, 3, 7, 7, 22], [8, 2, 11, 30, 0, 0, 0]], dtype=np.int64)
    mask = (np.arange(7)[None, :] < np.array([[7], [4]])).astype(np.int64)
    np.testing.assert_array_equal(
        packed.embed_batch(ids, mask), export_backend(int8).embed_batch(ids, mask)
    )
    np.testing.assert_array_equal(packed.logits(ids), export_backend(fp32).logits(ids))
    a, b = packed.new_decoder(64), export_backend(fp32).new_decoder(64)
    b.bound = False  # the plain path: numpy state in and out of every run
    assert a.bound
    np.testing.assert_array_equal(a.prefill([5, 9, 14]), b.prefill([5, 9, 14]))
    for token in (3, 17, 4, 4, 29):  # the state carried through several bound steps
        np.testing.assert_array_equal(a.step(token), b.step(token))
    assert packed.dtypes == {"embed": "int8", "lm": "fp32", "decode": "fp32"}


def test_a_pack_holds_each_tensor_once_and_no_checkpoint_weight(packed_copy):
    from safetensors import safe_open

    _, ckpt = packed_copy
    manifest = json.loads((ckpt / PACK_DIR / PACK_MANIFEST).read_text())
    refs = [r for g in manifest["graphs"].values() for r in g["initializers"].values()]
    stored = [key for source, key, *_ in refs if source == "pack"]
    with safe_open(ckpt / PACK_DIR / PACK_TENSORS, framework="numpy") as f:
        keys = set(f.keys())
    assert keys == set(stored)  # every stored tensor is used, and stored once
    assert len(stored) > len(keys)  # lm and decode share theirs
    assert any(source == "model.safetensors" for source, *_ in refs)  # fp32 weights: by reference
    graph_bytes = sum((ckpt / PACK_DIR / g["file"]).stat().st_size
                      for g in manifest["graphs"].values())  # fmt: skip
    assert graph_bytes < 200_000  # no weights inside the graphs
    assert "checkpoint" not in manifest["source"]  # no path of the machine that packed it


def test_auto_runs_a_certified_pack_and_says_why(packed_copy):
    arch, ckpt = packed_copy
    model = fastlm.load(ckpt, threads=1)
    info = model.backend.describe()
    assert info["backend"] == "onnx" and info["dtypes"]["decode"] == "fp32"
    assert info["auto"]["chosen"] == "onnx" and "certified" in info["auto"]["why"]
    eager = fastlm.load(ckpt, backend="eager", threads=1)
    cos = (model.embed(TEXTS) * eager.embed(TEXTS)).sum(axis=1)
    assert cos[[0, 2, 3]].min() > 0.99
    assert model.generate("Once upon", max_new_tokens=12) == eager.generate(
        "Once upon", max_new_tokens=12
    )


def edited(ckpt, tmp_path, edit):
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    edit(copy / PACK_DIR)
    return copy


def rewrite_manifest(change):
    def edit(pack_dir):
        manifest = json.loads((pack_dir / PACK_MANIFEST).read_text())
        change(manifest)
        (pack_dir / PACK_MANIFEST).write_text(json.dumps(manifest))

    return edit


def _stale(m):
    m["source"]["weights_sha256"] = "0" * 64


def _flip(pack_dir):
    data = bytearray((pack_dir / PACK_TENSORS).read_bytes())
    data[-1] ^= 1
    (pack_dir / PACK_TENSORS).write_bytes(bytes(data))


def _uncertified(m):
    m["parity"]["decode"]["greedy"]["agreement"] = 0.97


def _missing_key(m):
    next(iter(m["graphs"]["lm"]["initializers"].values()))[1] = "no-such-tensor"


def _nan_overlap(m):
    m["parity"]["embed"]["ranking"]["top10_overlap"] = float("nan")


def _dropped_entry(m):
    refs = m["graphs"]["lm"]["initializers"]
    del refs[next(iter(refs))]  # the graph still wants it: ONNX Runtime must refuse


def _swapped_tensor(m):
    """A reference moved to another tensor, its recorded dtype and shape edited to match it:
    read_pack cannot tell, ONNX Runtime refuses the graph."""
    refs = m["graphs"]["decode"]["initializers"]
    names = sorted(refs, key=lambda n: refs[n][3])
    small, large = refs[names[0]], refs[names[-1]]
    assert small[3] != large[3]
    refs[names[0]] = list(large)


@pytest.mark.parametrize(
    "edit, says",
    [
        (rewrite_manifest(_stale), "stale"),
        (_flip, "sha256"),
        (lambda d: (d / PACK_MANIFEST).write_text("{not json"), "corrupt"),
        (rewrite_manifest(_uncertified), "greedy agreement 0.97"),
        (rewrite_manifest(_nan_overlap), "top-10 overlap nan"),
        (rewrite_manifest(_dropped_entry), "could not be opened"),
        (rewrite_manifest(_swapped_tensor), "could not be opened"),
    ],
    ids=[
        "stale",
        "edited-tensors",
        "corrupt-manifest",
        "uncertified",
        "nan-certificate",
        "dropped-reference",
        "swapped-tensor",
    ],
)
def test_a_refused_pack_falls_back_to_eager_with_a_warning(packed_copy, tmp_path, caplog, edit,
                                                           says):  # fmt: skip
    _, ckpt = packed_copy
    copy = edited(ckpt, tmp_path, edit)
    with caplog.at_level(logging.WARNING, logger="fastlm"):
        model = fastlm.load(copy, threads=1)
    info = model.backend.describe()
    assert info["backend"] == "eager" and says in info["auto"]["why"]
    assert any(says in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert model.embed(["still works"]).shape == (1, 256)


def _wrong_shape(m):
    next(iter(m["graphs"]["lm"]["initializers"].values()))[3] = [1, 2, 3]


def _not_a_ref(m):
    m["graphs"]["embed"]["file"] = ["embed.onnx"]


@pytest.mark.parametrize(
    "change, says",
    [
        (_missing_key, "no-such-tensor"),
        (_wrong_shape, r"is <f4 \[1, 2, 3\], but"),
        (_not_a_ref, "names no file"),
    ],
    ids=["missing-tensor", "recorded-shape", "file-not-a-name"],
)
def test_read_pack_refuses_bad_references(packed_copy, tmp_path, change, says):
    _, ckpt = packed_copy
    copy = edited(ckpt, tmp_path, rewrite_manifest(change))
    digest = load_checkpoint(copy).weights_digest
    with pytest.raises(ExportDirError, match=says):
        read_pack(copy, digest)


def test_a_tensors_file_that_is_not_safetensors_is_refused(packed_copy, tmp_path):
    from fastlm.io import sha256_file

    def garble(pack_dir):
        (pack_dir / PACK_TENSORS).write_bytes(b"not safetensors at all" * 10)
        rewrite_manifest(
            lambda m: m["files"].update({PACK_TENSORS: sha256_file(pack_dir / PACK_TENSORS)})
        )(pack_dir)

    _, ckpt = packed_copy
    copy = edited(ckpt, tmp_path, garble)
    with pytest.raises(ExportDirError, match="cannot be read"):
        read_pack(copy, load_checkpoint(copy).weights_digest)


def test_without_onnxruntime_auto_is_eager_and_says_so(packed_copy, monkeypatch, caplog):
    _, ckpt = packed_copy
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with caplog.at_level(logging.INFO, logger="fastlm"):
        model = fastlm.load(ckpt, threads=1)
    assert model.backend.describe()["backend"] == "eager"
    assert "fastlm[cpu]" in model.backend.describe()["auto"]["why"]
    assert any("onnxruntime is not installed" in r.getMessage() for r in caplog.records)


def test_an_onnxruntime_older_than_1_20_is_not_used(packed_copy, monkeypatch, caplog):
    """Its GroupQueryAttention ignores the cache for several tokens after a past (wrong logits):
    auto runs eager with a WARNING, and an explicit ONNX session is refused."""
    import onnxruntime

    from fastlm.ort.sessions import make_session, onnxruntime_too_old

    assert onnxruntime_too_old("1.20.1") is None and onnxruntime_too_old("1.32.0") is None
    assert "older than 1.20" in onnxruntime_too_old("1.19.2+cu118")
    _, ckpt = packed_copy
    monkeypatch.setattr(onnxruntime, "__version__", "1.19.2")
    with caplog.at_level(logging.INFO, logger="fastlm"):
        model = fastlm.load(ckpt, threads=1)
    assert model.backend.describe()["backend"] == "eager"
    assert "1.19.2 is older than 1.20" in model.backend.describe()["auto"]["why"]
    assert any(r.levelname == "WARNING" and "1.20" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError, match="older than 1.20"):
        make_session(ckpt / "model.safetensors", 1, ["CPUExecutionProvider"])


def test_a_checkpoint_without_a_pack_is_eager(small_checkpoints):
    name, options, why = choose_auto(
        __import__("torch").device("cpu"), load_checkpoint(small_checkpoints["lstm"])
    )
    assert (name, options) == ("eager", {}) and "no ONNX pack" in why


def test_explicit_backends_ignore_the_pack(packed_copy):
    _, ckpt = packed_copy
    model = fastlm.load(ckpt, backend="eager")
    assert model.backend.describe()["backend"] == "eager" and "auto" not in model.backend.describe()


@pytest.mark.parametrize("name", ARCHS)
def test_shipped_packs_match_the_shipped_weights_and_the_budget(name):
    """Fails when a shipped model's weights change without `python scripts/ship_onnx.py NAME`."""
    ckpt = load_checkpoint(WEIGHTS_DIR / name)
    read_pack(WEIGHTS_DIR / name, ckpt.weights_digest)  # raises when stale or edited
    chosen, _, why = choose_auto(__import__("torch").device("cpu"), ckpt)
    assert chosen == "onnx", why


def test_the_runtime_refuses_a_stale_pack_rather_than_falling_back(packed_copy, tmp_path):
    """fastlm.runtime.load has no eager to fall back to: a stale pack is an error."""
    import fastlm.runtime

    _, ckpt = packed_copy
    assert fastlm.runtime.load(ckpt, threads=1).backend.dtypes["embed"] == "int8"
    copy = edited(ckpt, tmp_path, rewrite_manifest(_stale))
    with pytest.raises(ExportDirError, match="stale"):
        fastlm.runtime.load(copy, threads=1)


def test_the_runtime_refuses_a_pack_from_before_a_weight_file_was_added(packed_copy, tmp_path):
    """A pack whose digest covers fewer weight files than the checkpoint now lists (packed before
    its lexical branch was added): stale for the runtime as for `fastlm.load`."""
    import fastlm.runtime
    from fastlm.checkpoint_files import verify_checkpoint, weights_digest

    _, ckpt = packed_copy
    manifest = verify_checkpoint(ckpt)
    older = weights_digest(ckpt, manifest, ["model.safetensors", "embedder.safetensors"])
    copy = edited(ckpt, tmp_path, rewrite_manifest(lambda m: m["source"].update(
        weights_sha256=older)))  # fmt: skip
    with pytest.raises(ExportDirError, match="stale"):
        fastlm.runtime.load(copy, threads=1)
    assert fastlm.load(copy, threads=1).backend.describe()["backend"] == "eager"


@pytest.mark.parametrize("name", ARCHS)
def test_the_torch_free_digest_is_the_checkpoints(name, small_checkpoints):
    from fastlm.checkpoint_files import listed_weight_files, verify_checkpoint, weights_digest

    for path in (WEIGHTS_DIR / name, small_checkpoints[name]):
        manifest = verify_checkpoint(path)
        digest = weights_digest(path, manifest, listed_weight_files(manifest))
        assert digest == load_checkpoint(path).weights_digest


def test_runtime_names_resolve_as_fastlm_load_does(tmp_path, monkeypatch, small_checkpoints):
    import fastlm.runtime

    (tmp_path / "lstm").mkdir()  # a folder named like a shipped model: the name still wins
    monkeypatch.chdir(tmp_path)
    assert fastlm.runtime.load("lstm", threads=1).path == WEIGHTS_DIR / "lstm"
    with pytest.raises(ExportDirError, match="checkpoint without an ONNX pack"):
        fastlm.runtime.load(small_checkpoints["lstm"], threads=1)
