"""fastlm.index: document ids and metadata, upsert/remove, dense / lexical / hybrid search
(weighted and RRF), and a saved index bound to the model that built it. Storage, mmap and the
HNSW graph: test_index_storage.py. The stand-in model (BagModel): tests/index_helpers.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from index_helpers import (
    DIM,
    DOCS,
    QUERY,
    RELEVANT,
    BagModel,
    TableModel,
    corpus_index,
    ids_of,
    random_unit,
    version_dir,
)

import fastlm
from fastlm.index import (
    DEFAULT_MODE_HYBRID_WEIGHT,
    Index,
    IndexFileError,
    IndexModelMismatch,
)


# ------------------------------------------------------------ ids and metadata
def test_default_ids_continue_after_the_largest_integer_id():
    index = Index(BagModel(), lexical=False).add(["a", "b"])
    assert index.ids == ["0", "1"]
    index.add(["c", "d"], ids=["7", "x9"]).add("e")
    assert index.ids == ["0", "1", "7", "x9", "8"] and len(index) == 5


def test_metadata_and_get_round_trip_through_save(tmp_path):
    index = Index(BagModel()).add(
        ["car sale", "sea ship"], ids=["a", "b"], metadata=[{"tags": ("x", 1)}, None]
    )
    assert index.get("a") == {"id": "a", "text": "car sale", "metadata": {"tags": ["x", 1]}}
    index.save(tmp_path / "idx")
    again = Index.load(tmp_path / "idx", BagModel())
    assert again.get("a") == index.get("a") and again.get("b")["metadata"] is None
    assert again.ids == ["a", "b"] and again.texts == ["car sale", "sea ship"]
    hit = again.search("car", top_k=1)[0]
    assert (hit["id"], hit["text"], hit["metadata"]) == ("a", "car sale", {"tags": ["x", 1]})


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"ids": ["a", "b", "a"]}, ValueError, "duplicate ids in one call: 'a'"),
        ({"ids": ["a", "b"]}, ValueError, "2 entries for 3 texts"),
        ({"ids": ["a", 2, "c"]}, TypeError, "ids[1]"),
        ({"ids": ["a", "", "c"]}, ValueError, "ids[1] is empty"),
        ({"ids": "abc"}, TypeError, "ids must be a list"),
        ({"ids": list("abc"), "metadata": [{}, [1], None]}, TypeError, "document 'b'"),
        ({"ids": list("abc"), "metadata": [{}, {"f": object()}, None]}, TypeError, "'b'"),
        ({"ids": list("abc"), "metadata": [{}, {"f": float("nan")}, None]}, TypeError, "'b'"),
        ({"ids": list("abc"), "metadata": [{}, {1: 2}, None]}, TypeError, "'b'"),
        ({"metadata": [{}]}, ValueError, "1 entries for 3 texts"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"upsert": "yes"}, TypeError, "upsert"),
    ],
)
def test_add_refuses_bad_input_and_changes_nothing(kwargs, error, fragment):
    index = Index(BagModel()).add(["sea"], ids=["z"])
    with pytest.raises(error) as err:
        index.add(["car", "bread", "ship"], **kwargs)
    assert fragment in str(err.value)
    assert index.ids == ["z"] and len(index.embeddings) == 1


def test_an_existing_id_is_refused_unless_upsert_replaces_it():
    index = corpus_index()
    with pytest.raises(ValueError, match=r"already in the index: 'bake'.*upsert=True"):
        index.add(["sea ship", "car"], ids=["new", "bake"])
    assert len(index) == len(DOCS) and "new" not in index.ids
    index.add(["sea ship", "ship report"], ids=["new", "bake"], metadata=[None, {"v": 2}],
              upsert=True)  # fmt: skip
    assert len(index) == len(DOCS) + 1 and index.ids.index("bake") == 4  # replaced in place
    assert index.get("bake") == {"id": "bake", "text": "ship report", "metadata": {"v": 2}}
    assert ids_of(index.search("ship", top_k=2, mode="lexical")) == ["bake", "new"]
    assert index.search("recipe", top_k=1, mode="dense")[0]["score"] == pytest.approx(0.0)


def test_remove_drops_documents_everywhere_and_names_unknown_ids():
    index = corpus_index()
    assert ids_of(index.search("zx81", mode="lexical", top_k=1)) == ["code"]
    assert index.remove(["code", "van"]) == 2 and index.remove("news") == 1
    assert index.ids == ["auto", "rumour", "bake"] and index.embeddings.shape == (3, DIM)
    assert ids_of(index.search("zx81", mode="lexical", top_k=1)) == ["rumour"]  # refitted
    assert ids_of(index.search("car", mode="dense", top_k=1)) == ["auto"]
    with pytest.raises(KeyError, match=r"'code', 'nope'"):
        index.remove(["code", "nope"])
    with pytest.raises(KeyError, match="'code'"):
        index.get("code")
    assert len(index) == 3


# ------------------------------------------------------------ search
def test_search_refuses_bad_arguments():
    index = corpus_index()
    cases = [
        (("",), {}, ValueError, "query is empty"),
        ((["car", "  "],), {}, ValueError, "query 1 is empty"),
        (("car",), {"top_k": 0}, ValueError, "top_k"),
        (("car",), {"mode": "fuzzy"}, ValueError, "hybrid, dense, lexical"),
        (("car",), {"fusion": "max"}, ValueError, "weighted, rrf"),
        (("car",), {"weight": 1.5}, ValueError, "weight"),
        (("car",), {"fusion": "rrf", "weight": 0.3}, ValueError, "weight applies"),
        ((3,), {}, TypeError, "list of str"),
    ]
    for args, kwargs, error, fragment in cases:
        with pytest.raises(error) as err:
            index.search(*args, **kwargs)
        assert fragment in str(err.value), (args, kwargs)
    dense_only = Index(BagModel(), lexical=False).add(["car"])
    for mode in ("lexical", "hybrid"):
        with pytest.raises(ValueError, match="lexical=False"):
            dense_only.search("car", mode=mode)
    assert dense_only.search("car")[0]["id"] == "0"  # mode None: dense without a lexical side


def test_empty_index_and_empty_batch():
    index = Index(BagModel())
    assert index.search("car") == [] and index.search(["car", "sea"]) == [[], []]
    assert corpus_index().search([]) == []


@pytest.mark.parametrize(
    ("mode", "fusion"),
    [("dense", "weighted"), ("lexical", "weighted"), ("hybrid", "weighted"), ("hybrid", "rrf")],
)
@pytest.mark.parametrize("ann", [False, True])
def test_batched_search_equals_per_query_search(mode, fusion, ann):
    index = corpus_index(ann=ann)
    queries = [QUERY, "bread recipe", "weather", "sea ship"]
    model = index.model
    before = model.calls
    batched = index.search(queries, top_k=3, mode=mode, fusion=fusion)
    assert model.calls - before == (0 if mode == "lexical" else 1)  # one embed call for all
    assert batched == [index.search(q, top_k=3, mode=mode, fusion=fusion) for q in queries]
    assert all(sorted(h) == ["id", "metadata", "score", "text"] for hits in batched for h in hits)


def test_hybrid_finds_what_each_side_misses():
    index = corpus_index()
    dense = set(ids_of(index.search(QUERY, top_k=2, mode="dense")))
    lexical = set(ids_of(index.search(QUERY, top_k=2, mode="lexical")))
    hybrid = set(ids_of(index.search(QUERY, top_k=2, weight=0.5)))  # mode None: hybrid
    assert dense == {"auto", "van"} and lexical == {"code", "rumour"}
    assert hybrid == RELEVANT
    # no weight given: the default (chosen on the dev sets)
    default = index.search(QUERY, top_k=2, weight=DEFAULT_MODE_HYBRID_WEIGHT)
    assert index.search(QUERY, top_k=2) == default


def test_weighted_fusion_scores_by_hand():
    """weight * minmax(cosine) + (1 - weight) * minmax(BM25), both computed here."""
    index = corpus_index()
    model = BagModel()
    cos = model.embed(list(DOCS.values())) @ model.embed([QUERY])[0]
    bm25 = index._lexical_index().scores([QUERY])[0]

    def norm(x):
        return (x - x.min()) / (x.max() - x.min())

    for weight in (0.0, 0.3, DEFAULT_MODE_HYBRID_WEIGHT, 1.0):
        expected = weight * norm(cos) + (1 - weight) * norm(bm25)
        got = {h["id"]: h["score"] for h in index.search(QUERY, top_k=6, weight=weight)}
        assert got == pytest.approx(dict(zip(DOCS, expected.tolist())), abs=1e-6)


def test_rrf_scores_by_hand():
    """Each side's ranking (score, then row), 1 / (60 + rank) summed; a document without a
    query word is no lexical match."""
    index = corpus_index()
    model = BagModel()
    cos = model.embed(list(DOCS.values())) @ model.embed([QUERY])[0]
    bm25 = index._lexical_index().scores([QUERY])[0]
    expected = dict.fromkeys(DOCS, 0.0)
    dense_order = sorted(range(len(DOCS)), key=lambda i: (-cos[i], i))
    lexical_order = [i for i in sorted(range(len(DOCS)), key=lambda i: (-bm25[i], i)) if bm25[i]]
    for order in (dense_order, lexical_order):
        for rank, row in enumerate(order, 1):
            expected[list(DOCS)[row]] += 1 / (60 + rank)
    got = {h["id"]: h["score"] for h in index.search(QUERY, top_k=6, fusion="rrf")}
    assert got == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------ files bound to their model
def test_load_with_another_model_is_refused_naming_both(tmp_path):
    corpus_index().save(tmp_path / "idx")
    with pytest.raises(IndexModelMismatch) as err:
        Index.load(tmp_path / "idx", BagModel(name="other", digest="b" * 64))
    message = str(err.value)
    assert "'bag'" in message and "'other'" in message and "built with" in message
    assert "a" * 16 in message and "b" * 16 in message
    assert isinstance(err.value, ValueError)
    Index.load(tmp_path / "idx", BagModel(name="renamed"))  # same digest: the same model


def test_manifest_records_the_model_and_settings(tmp_path):
    corpus_index(storage="float16").save(tmp_path / "idx")
    manifest = json.loads((version_dir(tmp_path / "idx") / "manifest.json").read_text())
    assert manifest["format"] == "fastlm-index/3" and manifest["count"] == len(DOCS)
    assert manifest["model"] == {
        "name": "bag", "architecture": "bag", "dim": DIM, "embedding_digest": "a" * 64,
        "tokenizer_digest": None,
    }  # fmt: skip
    assert manifest["lexical"]["k1"] == 1.5 and manifest["ann"] == {"mode": None, "graph": None}
    assert {n for n in manifest["files"] if n.startswith("bm25.")} >= {"bm25.data.npy"}


def _flip_last_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x01
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["bm25.data.npy", "bm25.vocab.json", "bm25.settings.json"])
def test_edited_or_missing_bm25_file_is_refused(tmp_path, name):
    corpus_index().save(tmp_path / "idx")
    file = version_dir(tmp_path / "idx") / name
    _flip_last_byte(file)
    with pytest.raises(IndexFileError, match=f"sha256 mismatch for {re.escape(str(file))}"):
        Index.load(tmp_path / "idx", BagModel())
    file.unlink()
    with pytest.raises(IndexFileError, match=f"missing: {re.escape(str(file))}"):
        Index.load(tmp_path / "idx", BagModel())


def test_an_unlisted_bm25_file_is_refused(tmp_path):
    corpus_index().save(tmp_path / "idx")
    planted = version_dir(tmp_path / "idx") / "bm25.nonoccurrence.npy"
    np.save(planted, np.zeros(3, np.float32))
    with pytest.raises(IndexFileError, match=f"{re.escape(str(planted))} is not listed"):
        Index.load(tmp_path / "idx", BagModel())


def test_edited_ann_file_is_refused(tmp_path):
    table = random_unit(1200, 2)
    Index.from_embeddings(TableModel(table), table, [f"doc {i}" for i in range(1200)],
                          lexical=False, ann=True).save(tmp_path / "idx")  # fmt: skip
    vdir = version_dir(tmp_path / "idx")
    _flip_last_byte(vdir / "ann.usearch")
    with pytest.raises(IndexFileError, match=re.escape(str(vdir / "ann.usearch"))):
        Index.load(tmp_path / "idx", TableModel(table))
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["files"]["ann.usearch"] = hashlib.sha256(b"").hexdigest()
    (vdir / "ann.usearch").write_bytes(b"")  # self-consistent, still no graph
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFileError, match=re.escape(str(vdir / "ann.usearch"))):
        Index.load(tmp_path / "idx", TableModel(table))


def test_older_index_without_digest_still_loads(tmp_path):
    """A fastlm-index/2 version (texts only, no digest): ids "0".., dense only."""
    path = tmp_path / "old"
    vdir = path / "v00000001"
    vdir.mkdir(parents=True)
    vecs = BagModel().embed(["car", "sea"])
    np.save(vdir / "embeddings.npy", vecs)
    meta = {"model": "bag", "architecture": "bag", "dim": DIM, "texts": ["car", "sea"]}
    (vdir / "index.json").write_text(json.dumps(meta))
    files = {n: hashlib.sha256((vdir / n).read_bytes()).hexdigest() for n in os.listdir(vdir)}
    (vdir / "manifest.json").write_text(json.dumps({"format": "fastlm-index/2", "files": files}))
    (path / "manifest.json").write_text(
        json.dumps({"format": "fastlm-index/2", "current": "v00000001"})
    )
    old = Index.load(path, BagModel(digest="c" * 64))
    assert old.ids == ["0", "1"] and not old.lexical and old.search("sea")[0]["id"] == "1"


# ------------------------------------------------------------ without torch or the extras
def test_import_needs_neither_torch_nor_the_extras():
    child = textwrap.dedent("""
        import sys
        for name in ("torch", "bm25s", "Stemmer", "usearch"):
            sys.modules[name] = None  # importing it now raises ImportError
        import numpy as np
        import fastlm
        import fastlm.index
        assert fastlm.Index is fastlm.index.Index

        class M:
            name = architecture = "m"
            embedding_dim = 2
            def embed(self, texts, batch_size=64, show_progress_bar=None):
                return np.tile(np.float32([0.6, 0.8]), (len(texts), 1))

        index = fastlm.index.Index(M(), lexical=False).add(["a", "b"])
        assert [h["id"] for h in index.search("q", top_k=2)] == ["0", "1"]
        for kwargs in ({}, {"lexical": False, "ann": True}):
            try:
                fastlm.index.Index(M(), **kwargs)
            except ImportError as err:
                print(err)
        assert "torch" not in [m.split(".")[0] for m, v in sys.modules.items() if v is not None]
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(fastlm.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'pip install "fastlm[lexical]"' in done.stdout
    assert 'pip install "fastlm[ann]"' in done.stdout


# ------------------------------------------------------------ real models
@pytest.mark.slow
def test_embedding_digest_is_one_per_checkpoint_on_every_backend(small_checkpoints, export_of,
                                                                 tmp_path):  # fmt: skip
    from fastlm.runtime import load as load_runtime

    eager = fastlm.load(small_checkpoints["lstm"], backend="eager", threads=1)
    runtime = load_runtime(export_of("lstm"), threads=1)
    other = fastlm.load(small_checkpoints["transformer"], backend="eager", threads=1)
    assert re.fullmatch(r"[0-9a-f]{64}", eager.embedding_digest)
    assert runtime.embedding_digest == eager.embedding_digest != other.embedding_digest
    Index(eager).add(["the cat sat", "a dog ran"]).save(tmp_path / "idx")
    assert Index.load(tmp_path / "idx", runtime).ids == ["0", "1"]
    with pytest.raises(IndexModelMismatch, match="built with"):
        Index.load(tmp_path / "idx", other)
