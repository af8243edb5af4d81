"""Embed a corpus bigger than one machine on Ray Data (extra `fastlm[ray]`).

    import ray
    from fastlm.scale import Embedder, embed_dataset

    ds = ray.data.read_parquet("s3://bucket/corpus/")           # a "text" column
    ds = embed_dataset(ds, model="transformer", concurrency=8)  # adds "embedding" (D floats)
    ds.write_parquet("s3://bucket/embeddings/")

`Embedder` is the callable class Ray Data runs in a pool of actors: each actor loads the model
once in `__init__` and then embeds batch after batch, so the load (a second or two) is paid once
per worker, not per batch. `embed_dataset` is `ds.map_batches(Embedder, ...)` with defaults
that suit it; call map_batches yourself for anything else (GPUs: `num_gpus=1` and
`device="cuda"`). The same code runs on a laptop (`ray.init()`) and on a cluster
(`ray.init("auto")` or `ray job submit`): Ray ships the work, fastlm needs no cluster code.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


class Embedder:
    """`Embedder(model)(batch)` -> the batch with an (n, D) float32 column of embeddings.

    batch: {column: array} as Ray Data passes it with batch_format="numpy"; the texts are in
    `text_column` (str values; None is refused). Other columns pass through unchanged.
    """

    def __init__(
        self,
        model: str | os.PathLike = "transformer",
        text_column: str = "text",
        output_column: str = "embedding",
        backend: str = "auto",
        device: str | None = None,
        threads: int | None = None,
        batch_size: int = 64,
        normalize: bool = True,
        **backend_options: Any,
    ):
        from fastlm.engine import load  # torch, in each Ray actor: not at import

        self.model = load(model, backend=backend, device=device, threads=threads, **backend_options)
        self.text_column, self.output_column = text_column, output_column
        self.batch_size, self.normalize = batch_size, normalize

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.text_column not in batch:
            raise ValueError(
                f"no {self.text_column!r} column in the batch; columns: {sorted(batch)} "
                "(pass text_column=...)"
            )
        texts = list(batch[self.text_column])
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"{self.text_column}[{i}] is {type(t).__name__}, not str")
        vecs = self.model.embed(texts, batch_size=self.batch_size, normalize=self.normalize)
        return {**batch, self.output_column: vecs}


def embed_dataset(
    ds,
    model: str | os.PathLike = "transformer",
    concurrency: int | tuple[int, int] = 1,
    batch_size: int = 256,
    num_cpus: float = 1,
    num_gpus: float = 0,
    **embedder_kwargs: Any,
):
    """`ds` (a ray.data.Dataset) with an embedding column, computed by `concurrency` actors.

    batch_size: rows per map_batches call (each actor sorts them by length and runs them in
    model batches of Embedder's batch_size). embedder_kwargs go to `Embedder`.
    """
    try:
        import ray.data  # noqa: F401
    except ImportError as err:
        raise ImportError(
            'embed_dataset needs Ray Data: pip install "fastlm[ray]"', name=err.name
        ) from None
    return ds.map_batches(
        Embedder,
        fn_constructor_kwargs={"model": model, **embedder_kwargs},
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )


__all__ = ["Embedder", "embed_dataset"]
