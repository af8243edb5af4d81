"""LanceDB route: embedding batches streamed into a LanceDB table on disk, searched there
(LanceDB's cosine vector search, its full-text index, its hybrid query), bound to the model that
embedded them. A stand-in model with a hand-made vocabulary keeps the expected hits obvious."""

from __future__ import annotations

import numpy as np
import pytest

lancedb = pytest.importorskip("lancedb")
pa = pytest.importorskip("pyarrow")

from fastlm.index import IndexModelMismatch  # noqa: E402
from fastlm.lance import open_lancedb_search, write_lancedb  # noqa: E402

# Dimension i of the stand-in embedding counts the words of group i; synonyms share a group, so
# the dense side matches "feline" to "cats" while the lexical side cannot. Other words land in
# the last dimension only when a text has no known word.
GROUPS = (
    {"cat", "cats", "feline", "kitten"},
    {"dog", "dogs", "puppy"},
    {"rocket", "rockets", "launch"},
    {"bread", "oven", "bake"},
)
DIM = 8


class WordModel:
    """Quacks like fastlm.LanguageModel for what the LanceDB route uses."""

    architecture = "words"
    embedding_dim = DIM

    def __init__(self, name: str = "words", digest: str = "a" * 64):
        self.name, self.embedding_digest = name, digest

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                for g, group in enumerate(GROUPS):
                    out[row, g] += word in group
            if not out[row].any():
                out[row, DIM - 1] = 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


# Dense ranks for "feline zebra" (only "feline" is known): cats > kitten_zebra > cat_dog_rocket
# > cat_dog_rocket_bread > the rest; lexical ranks: zebras > kitten_zebra (only they hold a query
# word). Reciprocal-rank fusion puts kitten_zebra, second on both sides, first.
CORPUS = {
    "cats": "cats purr softly",
    "kitten_zebra": "a kitten and a puppy met a zebra",
    "cat_dog_rocket": "cat dog rocket",
    "cat_dog_rocket_bread": "cat dog rocket bread",
    "zebras": "zebra zebra herds",
    "rockets": "rockets launch at dawn",
    "oven": "bake bread in the oven",
}


def batch(model: WordModel, ids: list[str]) -> dict[str, np.ndarray]:
    texts = [CORPUS[i] for i in ids]
    return {
        "id": np.array(ids, dtype=object),
        "text": np.array(texts, dtype=object),
        "embedding": model.embed(texts),
    }


def top_ids(hits: list[dict]) -> list[str]:
    return [h["id"] for h in hits]


@pytest.fixture
def corpus_table(tmp_path):
    model = WordModel()
    ids = list(CORPUS)
    batches = [batch(model, ids[:3]), batch(model, ids[3:5]), batch(model, ids[5:])]
    written = write_lancedb(iter(batches), tmp_path / "db", "docs", model=model)
    assert written == len(CORPUS)
    return tmp_path / "db", model


def test_dense_lexical_and_hybrid_top_hits(corpus_table):
    uri, model = corpus_table
    searcher = open_lancedb_search(uri, "docs", model)
    assert len(searcher) == len(CORPUS)

    dense = searcher.search("feline", top_k=3, mode="dense")
    assert top_ids(dense)[0] == "cats"
    assert dense[0]["text"] == CORPUS["cats"]
    assert dense[0]["score"] == pytest.approx(1.0, abs=1e-5)  # cosine similarity, not distance
    assert dense[0]["score"] >= dense[1]["score"] >= dense[2]["score"]
    assert "cats" not in top_ids(searcher.search("feline", mode="lexical"))  # no shared word

    lexical = searcher.search("zebra", top_k=2, mode="lexical")
    assert top_ids(lexical) == ["zebras", "kitten_zebra"]
    assert lexical[0]["score"] > lexical[1]["score"] > 0

    hybrid = searcher.search("feline zebra", top_k=3, mode="hybrid")
    assert top_ids(hybrid)[0] == "kitten_zebra"
    assert searcher.search("feline zebra", top_k=3) == hybrid  # hybrid is the default


def test_arrow_batches_with_list_vectors(tmp_path):
    """Parquet written by Ray Data reads back as list<float> vectors: accepted as well."""
    model = WordModel()
    ids = ["cats", "rockets"]
    texts = [CORPUS[i] for i in ids]
    table = pa.table({"doc": ids, "body": texts, "vec": list(model.embed(texts))})
    assert pa.types.is_list(table.schema.field("vec").type)
    write_lancedb(
        table, tmp_path, "t", model=model, id_column="doc", text_column="body", vector_column="vec"
    )
    hits = open_lancedb_search(tmp_path, "t", model).search("launch", top_k=1, mode="dense")
    assert hits == [{"id": "rockets", "score": pytest.approx(1.0, abs=1e-5), "text": texts[1]}]


def test_append_adds_rows_searchable_both_ways(tmp_path):
    model = WordModel()
    write_lancedb([batch(model, ["cats", "oven"])], tmp_path, "docs", model=model)
    write_lancedb([batch(model, ["zebras"])], tmp_path, "docs", model=model, mode="append")
    searcher = open_lancedb_search(tmp_path, "docs", model)
    assert len(searcher) == 3
    assert top_ids(searcher.search("zebra", top_k=1, mode="lexical")) == ["zebras"]
    assert top_ids(searcher.search("kitten", top_k=1, mode="dense")) == ["cats"]
    renamed = {"doc": ["oven"], "text": [CORPUS["oven"]], "embedding": model.embed(["oven"])}
    with pytest.raises(ValueError, match="written with columns.*pass the same id_column="):
        write_lancedb(renamed, tmp_path, "docs", model=model, mode="append", id_column="doc")


def test_create_refuses_an_existing_table_and_overwrite_replaces_it(tmp_path):
    model = WordModel()
    write_lancedb([batch(model, ["cats", "oven"])], tmp_path, "docs", model=model)
    with pytest.raises(ValueError, match="'docs' at .* already exists.*mode='append'"):
        write_lancedb([batch(model, ["zebras"])], tmp_path, "docs", model=model)
    write_lancedb([batch(model, ["zebras"])], tmp_path, "docs", model=model, mode="overwrite")
    assert len(open_lancedb_search(tmp_path, "docs", model)) == 1
    with pytest.raises(ValueError, match="no table 'nope'.*mode='create'"):
        write_lancedb([batch(model, ["zebras"])], tmp_path, "nope", model=model, mode="append")
    with pytest.raises(ValueError, match="mode must be one of create, append, overwrite"):
        write_lancedb([], tmp_path, "docs", model=model, mode="upsert")


def test_width_mismatch_and_missing_columns_are_refused(tmp_path):
    model = WordModel()
    narrow = batch(model, ["cats"])
    narrow["embedding"] = narrow["embedding"][:, :5]
    with pytest.raises(ValueError, match=r"'embedding'.*5 wide.*embeds to 8"):
        write_lancedb([narrow], tmp_path, "docs", model=model)
    no_text = batch(model, ["cats"])
    del no_text["text"]
    with pytest.raises(ValueError, match=r"batch 0 has no column 'text'.*\['embedding', 'id'\]"):
        write_lancedb([no_text], tmp_path, "docs", model=model)
    with pytest.raises(ValueError, match="no table 'docs'"):  # nothing was written
        open_lancedb_search(tmp_path, "docs", model)


def test_a_bad_later_batch_raises_its_own_error_and_commits_nothing(tmp_path):
    """LanceDB reads the batches in its own writer; the caller still gets the ValueError."""
    model = WordModel()
    write_lancedb([batch(model, ["cats"])], tmp_path, "docs", model=model)
    bad = batch(model, ["oven"])
    bad["embedding"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"batch 1.*'embedding'.*row 0.*not finite"):
        write_lancedb([batch(model, ["zebras"]), bad], tmp_path, "docs", model=model, mode="append")
    assert len(open_lancedb_search(tmp_path, "docs", model)) == 1


def test_a_failed_create_leaves_no_table_and_can_be_retried(tmp_path):
    model = WordModel()
    ragged = {"id": ["cats", "oven"], "text": [CORPUS["cats"], CORPUS["oven"]]}
    ragged["embedding"] = [np.ones(DIM, np.float32), np.ones(DIM - 1, np.float32)]
    with pytest.raises(ValueError, match=r"batch 1, column 'embedding'.*different widths"):
        write_lancedb([batch(model, ["zebras"]), ragged], tmp_path, "docs", model=model)
    with pytest.raises(ValueError, match="no table 'docs'"):
        open_lancedb_search(tmp_path, "docs", model)
    assert write_lancedb([batch(model, ["zebras"])], tmp_path, "docs", model=model) == 1
    assert top_ids(open_lancedb_search(tmp_path, "docs", model).search("zebra")) == ["zebras"]


def test_null_ids_texts_and_vectors_are_named(tmp_path):
    model = WordModel()
    table = pa.table({"id": ["a", None], "text": ["x", "y"], "embedding": list(np.eye(2, DIM))})
    with pytest.raises(ValueError, match="batch 0, column 'id': 1 null id"):
        write_lancedb(table, tmp_path, "docs", model=model)
    table = pa.table({"id": ["a", "b"], "text": ["x", None], "embedding": list(np.eye(2, DIM))})
    with pytest.raises(TypeError, match="batch 0, column 'text', row 1: NoneType, not str"):
        write_lancedb(table, tmp_path, "docs", model=model)
    vectors = pa.array([[1.0] * DIM, None], pa.list_(pa.float32()))
    table = pa.table({"id": ["a", "b"], "text": ["x", "y"], "embedding": vectors})
    with pytest.raises(ValueError, match="batch 0, column 'embedding': 1 null vector"):
        write_lancedb(table, tmp_path, "docs", model=model)


def test_another_models_table_is_refused(tmp_path):
    model, other = WordModel(), WordModel("other-words", digest="b" * 64)
    write_lancedb([batch(model, ["cats"])], tmp_path, "docs", model=model)
    with pytest.raises(IndexModelMismatch, match="'words'.*'other-words'"):
        open_lancedb_search(tmp_path, "docs", other)
    with pytest.raises(IndexModelMismatch, match="built with 'words'"):
        write_lancedb([batch(other, ["oven"])], tmp_path, "docs", model=other, mode="append")
    assert len(open_lancedb_search(tmp_path, "docs", model)) == 1


def test_a_table_not_written_by_fastlm_is_refused(tmp_path):
    db = lancedb.connect(tmp_path)
    db.create_table("foreign", data=pa.table({"id": ["x"], "vector": [[0.0] * DIM]}))
    with pytest.raises(ValueError, match="'foreign'.*no fastlm model record"):
        open_lancedb_search(tmp_path, "foreign", WordModel())


def test_search_arguments_are_checked(corpus_table):
    uri, model = corpus_table
    searcher = open_lancedb_search(uri, "docs", model)
    with pytest.raises(ValueError, match="mode must be one of hybrid, dense, lexical"):
        searcher.search("cats", mode="bm25")
    with pytest.raises(ValueError, match="top_k"):
        searcher.search("cats", top_k=0)
    with pytest.raises(ValueError, match="query is empty"):
        searcher.search("  ")
    with pytest.raises(TypeError, match="query must be a str"):
        searcher.search(["cats"])


@pytest.mark.slow
def test_ray_data_embeddings_to_lancedb(tmp_path):
    """embed_dataset on a local 2-CPU Ray, streamed into LanceDB: every row once, and a
    document's own text finds it first."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    import fastlm
    from fastlm.scale import embed_dataset

    texts = [
        f"document {i} about " + ("rockets " if i % 2 else "bread ") * (i % 5) for i in range(24)
    ]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ds = ray.data.from_items([{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
        ds = embed_dataset(ds, model="lstm", concurrency=1, batch_size=8, threads=1)
        model = fastlm.load("lstm", backend="eager", device="cpu", threads=1)
        assert write_lancedb(ds, tmp_path, "docs", model=model, batch_size=8) == len(texts)
    finally:
        ray.shutdown()
    searcher = open_lancedb_search(tmp_path, "docs", model)
    assert len(searcher) == len(texts)
    hit = searcher.search(texts[7], top_k=1, mode="dense")[0]
    assert hit["id"] == "d7" and hit["text"] == texts[7]
