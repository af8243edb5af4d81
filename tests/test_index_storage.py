"""fastlm.index storage: float16 vectors, memory-mapped loads that copy on edit, and the HNSW
graph (top-1 equal to exact search, kept through save, mmap and edits; float16 graphs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from index_helpers import (
    DIM,
    QUERY,
    BagModel,
    TableModel,
    corpus_index,
    ids_of,
    random_unit,
    version_dir,
)

from fastlm.index import Index


# ------------------------------------------------------------ storage, mmap, graph
@pytest.mark.parametrize("mmap", [True, False])
def test_float16_storage_round_trip(tmp_path, mmap):
    index = corpus_index(storage="float16")
    full = corpus_index()
    assert index.embeddings.dtype == np.float16
    np.testing.assert_allclose(index.embeddings, full.embeddings, atol=1e-3)
    index.save(tmp_path / "idx")
    manifest = json.loads((version_dir(tmp_path / "idx") / "manifest.json").read_text())
    assert manifest["storage"] == "float16"
    again = Index.load(tmp_path / "idx", BagModel(), mmap=mmap)
    assert again.embeddings.dtype == np.float16 and again.storage == "float16"
    np.testing.assert_array_equal(again.embeddings, index.embeddings)
    for q in (QUERY, "bread"):
        assert again.search(q, top_k=3) == index.search(q, top_k=3)
        hits = zip(again.search(q, top_k=3, mode="dense"), full.search(q, top_k=3, mode="dense"))
        assert all(a["score"] == pytest.approx(b["score"], abs=2e-3) for a, b in hits)


def test_mmap_load_maps_read_only_and_an_edit_copies(tmp_path):
    corpus_index().save(tmp_path / "idx")
    saved = {p.name: p.read_bytes() for p in version_dir(tmp_path / "idx").iterdir()}
    again = Index.load(tmp_path / "idx", BagModel())  # mmap=True by default
    assert isinstance(again.embeddings, np.memmap) and not again.embeddings.flags.writeable
    again.add(["ship"], ids=["boat"]).add(["ship sale"], ids=["auto"], upsert=True)
    again.remove("van")
    assert ids_of(again.search("ship", top_k=2, mode="dense")) == ["boat", "auto"]
    assert {p.name: p.read_bytes() for p in version_dir(tmp_path / "idx").iterdir()} == saved


def test_ann_top1_equals_exact_and_survives_save_mmap_and_edits(tmp_path):
    table = random_unit(3000, 0)
    model = TableModel(table)
    texts = [f"doc {i}" for i in range(len(table))]
    graph = Index.from_embeddings(model, table, texts, lexical=False, ann=True)
    exact = Index.from_embeddings(model, table, texts, lexical=False, ann=False)
    queries = [f"doc {i}" for i in range(0, 3000, 60)]
    assert (
        ids_of(h[0] for h in graph.search(queries, top_k=1))
        == ids_of(h[0] for h in exact.search(queries, top_k=1))
        == [str(i) for i in range(0, 3000, 60)]
    )
    graph.save(tmp_path / "idx")
    vdir = version_dir(tmp_path / "idx")
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert "ann.usearch" in manifest["files"] and manifest["ann"]["graph"]["size"] == 3000
    loaded = Index.load(tmp_path / "idx", model)
    assert loaded._ann is not None and loaded._ann.view  # the saved graph, mapped
    assert loaded.search(queries[:5], top_k=1) == graph.search(queries[:5], top_k=1)
    loaded.save(tmp_path / "copy")  # the mapped graph's file, copied into the new version
    assert (version_dir(tmp_path / "copy") / "ann.usearch").read_bytes() == (
        vdir / "ann.usearch"
    ).read_bytes()
    model.table = np.concatenate([table, random_unit(1, 1)])
    loaded.add("doc 3000")  # an edit of a mapped graph: an editable copy, then the new row
    assert not loaded._ann.view and len(loaded._ann) == 3001
    assert loaded.search("doc 3000", top_k=1)[0]["id"] == "3000"
    loaded.remove(["0"])  # rows renumber: rebuilt on the next search
    assert loaded.search("doc 3000", top_k=1)[0]["id"] == "3000"


def test_float16_storage_keeps_the_graph_in_float16_too(tmp_path):
    table = random_unit(2000, 2)
    texts = [f"doc {i}" for i in range(len(table))]
    sizes = {}
    for storage in ("float32", "float16"):
        index = Index.from_embeddings(
            TableModel(table), table, texts, lexical=False, ann=True, storage=storage
        )
        index.save(tmp_path / storage)
        vdir = version_dir(tmp_path / storage)
        manifest = json.loads((vdir / "manifest.json").read_text())
        assert manifest["ann"]["graph"]["dtype"] == ("f16" if storage == "float16" else "f32")
        sizes[storage] = (vdir / "ann.usearch").stat().st_size
        assert index.search("doc 7", top_k=1)[0]["id"] == "7"
    # the graph's vectors: 4 bytes a value in float32, 2 in float16
    assert sizes["float32"] - sizes["float16"] >= 2000 * DIM * 2


def test_automatic_ann_is_exact_below_the_threshold():
    index = corpus_index()  # ann=None
    index.search(QUERY)
    assert index._ann is None
