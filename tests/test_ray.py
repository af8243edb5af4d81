"""Ray Data scale-out on a local 2-CPU Ray: embeddings written to Parquet equal the in-process
ones, row for row, whatever order the workers finish in."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pq = pytest.importorskip("pyarrow.parquet")

from fastlm.scale import Embedder, embed_dataset  # noqa: E402

MODEL = "lstm"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_embed_dataset_writes_parquet_matching_the_api(local_ray, tmp_path):
    import fastlm

    texts = [f"document {i}: " + "some words " * (i % 7) for i in range(40)] + ["", "naïve 日本"]
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    out = embed_dataset(ds, model=MODEL, backend="eager", concurrency=1, batch_size=16, threads=1)
    out.write_parquet(str(tmp_path / "emb"))
    table = pq.read_table(tmp_path / "emb").to_pydict()
    assert sorted(table["id"]) == list(range(len(texts)))  # nothing lost, nothing twice
    got = np.zeros((len(texts), 256), np.float32)
    for i, text, vec in zip(table["id"], table["text"], table["embedding"]):
        assert text == texts[i]
        got[i] = np.asarray(vec, dtype=np.float32).reshape(-1)
    expected = fastlm.load(MODEL, backend="eager", device="cpu").embed(texts)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_embedder_refuses_a_missing_column_and_non_text():
    embedder = Embedder(MODEL, threads=1)
    with pytest.raises(ValueError, match="no 'text' column"):
        embedder({"body": np.array(["a"], dtype=object)})
    with pytest.raises(TypeError, match=r"text\[1\] is NoneType"):
        embedder({"text": np.array(["a", None], dtype=object)})
