"""Index.load of special or hostile files (FIFOs, /dev/zero, forged manifests and .npy headers,
paths outside the index), an old format's upgrade, and array-like constructor input.

The index holds a stand-in model (index_helpers.StubModel); `saved_index` is corpus(1) saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time

import numpy as np
import pytest
from index_helpers import (
    STUB_DIM,
    StubModel,
    corpus,
    forge,
    npy_header,
    save_stub_index,
    seed_of,
    unblock_fifo_later,
    version_dir,
)

from fastlm.index import Index, IndexFileError


# ------------------------------------------------------------ special and hostile files
def _deep_json() -> bytes:
    return b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: os.mkfifo(p), id="fifo"),
        pytest.param(lambda p: os.symlink("/dev/zero", p), id="dev_zero"),
        pytest.param(lambda p: p.mkdir(), id="directory"),
        pytest.param(lambda p: p.write_bytes(_deep_json()), id="deep_json"),
        pytest.param(lambda p: p.write_bytes(b" " * (2 << 20) + b"{}"), id="oversized"),
        pytest.param(lambda p: p.write_bytes(b"\xff\xfe"), id="not_utf8"),
    ],
)
@pytest.mark.parametrize("where", ["pointer", "version"])
def test_hostile_manifest_is_an_index_file_error(saved_index, make, where):
    target = (
        saved_index / "manifest.json"
        if where == "pointer"
        else version_dir(saved_index) / "manifest.json"
    )
    target.unlink()
    make(target)
    if target.is_fifo():
        unblock_fifo_later(target, 3.0)
    start = time.monotonic()
    with pytest.raises(IndexFileError, match=re.escape(str(target))):
        Index.load(saved_index, StubModel())
    assert time.monotonic() - start < 1.5


@pytest.mark.parametrize(
    ("name", "data", "fragment"),
    [
        ("index.json", _deep_json(), "is corrupt"),
        ("index.json", b'{"texts": "abc"}', "texts"),
        ("index.json", b"[]", "texts"),
        ("embeddings.npy", b"", "npy"),
        ("embeddings.npy", b"not an npy file at all", "npy"),
        ("embeddings.npy", npy_header((10**10, STUB_DIM)), "shape"),
        ("embeddings.npy", npy_header((10**10, 256)), "shape"),
        ("embeddings.npy", npy_header((41, STUB_DIM), descr="<f8"), "float32"),
        ("embeddings.npy", npy_header((41, STUB_DIM), fortran=True), "order"),
        ("embeddings.npy", npy_header((41, STUB_DIM)) + b"\0" * 12, "size"),
        ("embeddings.npy", npy_header((41, STUB_DIM), descr="|O"), "float32"),
    ],
)
def test_forged_version_file_is_an_index_file_error(saved_index, name, data, fragment):
    """Files whose sha256 matches a forged manifest are still checked (type, size, shape) before
    anything is allocated. corpus(1) has 41 rows."""
    vdir = version_dir(saved_index)
    forge(vdir, name, data)
    with pytest.raises(IndexFileError, match=re.escape(str(vdir / name))) as err:
        Index.load(saved_index, StubModel())
    assert fragment in str(err.value)


@pytest.mark.parametrize("name", ["index.json", "embeddings.npy"])
def test_special_version_file_is_an_index_file_error(saved_index, name):
    target = version_dir(saved_index) / name
    target.unlink()
    os.mkfifo(target)
    unblock_fifo_later(target, 3.0)
    start = time.monotonic()
    with pytest.raises(IndexFileError, match=re.escape(str(target))):
        Index.load(saved_index, StubModel())
    assert time.monotonic() - start < 1.5


def test_pointer_outside_the_index_is_refused(saved_index):
    (saved_index / "manifest.json").write_text(
        json.dumps({"format": "fastlm-index/2", "current": ".."})
    )
    with pytest.raises(IndexFileError, match="manifest.json"):
        Index.load(saved_index, StubModel())


def test_manifest_listing_a_path_outside_the_version_is_refused(saved_index):
    vdir = version_dir(saved_index)
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["files"]["../index.json"] = manifest["files"].pop("index.json")
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFileError, match="manifest.json"):
        Index.load(saved_index, StubModel())


def test_a_fastlm_index_1_directory_loads_and_a_save_upgrades_it(tmp_path):
    """The previous on-disk format (files directly in DIR) is still read."""
    path = tmp_path / "old"
    path.mkdir()
    vecs, texts = corpus(5)
    np.save(path / "embeddings.npy", vecs)
    meta = {"model": "stub", "architecture": "stub", "dim": STUB_DIM, "texts": texts}
    (path / "index.json").write_text(json.dumps(meta))
    files = {
        n: hashlib.sha256((path / n).read_bytes()).hexdigest()
        for n in ("embeddings.npy", "index.json")
    }
    (path / "manifest.json").write_text(json.dumps({"format": "fastlm-index/1", "files": files}))
    assert seed_of(Index.load(path, StubModel())) == 5
    save_stub_index(path, 6)
    assert seed_of(Index.load(path, StubModel())) == 6
    save_stub_index(path, 7)  # the old files are the previous version until this save
    assert seed_of(Index.load(path, StubModel())) == 7
    assert not (path / "embeddings.npy").exists() and not (path / "index.json").exists()


# ------------------------------------------------------------ constructor input
def test_constructor_accepts_array_likes():
    index = Index.from_embeddings(StubModel(), [[0.5] * STUB_DIM, [1] * STUB_DIM], ["a", "b"])
    assert index.embeddings.dtype == np.float32 and index.embeddings.shape == (2, STUB_DIM)
    assert Index.from_embeddings(StubModel(), [], []).embeddings.shape == (0, STUB_DIM)
    one = Index.from_embeddings(StubModel(), np.ones((1, STUB_DIM)), ("a",))
    assert one.embeddings.dtype == np.float32
    two = Index.from_embeddings(StubModel(), np.ones((2, STUB_DIM)), np.array(["a", "b"]))
    assert two.texts == ["a", "b"]


@pytest.mark.parametrize(
    ("embeddings", "texts", "error", "fragment"),
    [
        ([0.0] * STUB_DIM, ["a"], ValueError, "shape"),
        ([[0.0] * 3], ["a"], ValueError, "shape"),
        ([[0.0] * STUB_DIM], ["a", "b"], ValueError, "shape"),
        ([[0.0] * STUB_DIM, [0.0]], ["a", "b"], ValueError, "embeddings"),
        ([["x"] * STUB_DIM], ["a"], TypeError, "embeddings"),
        ([[float("nan")] * STUB_DIM], ["a"], ValueError, "NaN"),
        ("abc", ["a"], TypeError, "embeddings"),
        ([[0.0] * STUB_DIM], [3], TypeError, "texts[0]"),
        ([[0.0] * STUB_DIM], "a", TypeError, "list of str"),
    ],
)
def test_constructor_refuses_bad_input(embeddings, texts, error, fragment):
    with pytest.raises(error) as err:
        Index.from_embeddings(StubModel(), embeddings, texts)
    assert fragment in str(err.value)
