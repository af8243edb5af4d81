"""write_lancedb: embeddings (from a fastlm model, or precomputed) into a LanceDB table whose
schema metadata records the model (fastlm/lance/table.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from fastlm.index.records import model_facts
from fastlm.lance.table import (
    FORMAT,
    METADATA_KEY,
    check_record,
    lancedb_modules,
    load_model,
    open_table,
)
from fastlm.validation import check_int

WRITE_MODES = ("create", "append", "overwrite")


def write_lancedb(
    data: Any,
    uri: str | os.PathLike,
    table: str,
    *,
    model: Any,
    mode: str = "create",
    id_column: str = "id",
    text_column: str = "text",
    vector_column: str = "embedding",
    batch_size: int = 1024,
    fts_index: bool = True,
    storage_options: dict[str, str] | None = None,
) -> int:
    """Rows written from `data` into LanceDB table `table` at `uri` (a directory or s3://...).

    data: a ray.data.Dataset (read batch by batch, `batch_size` rows), a pyarrow Table or
    RecordBatch, a {column: array} dict, or an iterable of those, each with the id, text and
    (n, D) vector columns; D must be `model.embedding_dim`. Only these three columns are kept.
    mode: "create" (the table must not exist), "append" (it must, written by the same model)
    or "overwrite". A write that fails commits nothing. fts_index: (re)build the full-text
    index over the whole table afterwards (rows added later are still found, only slower)."""
    lancedb, pa = lancedb_modules()
    if mode not in WRITE_MODES:
        raise ValueError(f"mode must be one of {', '.join(WRITE_MODES)}; got {mode!r}")
    columns = {"id": id_column, "text": text_column, "vector": vector_column}
    if len(set(columns.values())) != 3:
        raise ValueError(f"id, text and vector columns must differ; got {columns}")
    model = load_model(model)
    batch_size = check_int(batch_size, "batch_size", min=1)
    db = lancedb.connect(os.fspath(uri), storage_options=storage_options)
    existing = _target(db, table, mode, os.fspath(uri))
    stream = _Stream(_batches(data, batch_size, pa), columns, int(model.embedding_dim))
    if existing is not None and mode == "append":
        where = f"LanceDB table {table!r} at {os.fspath(uri)}"
        check_record(existing.schema, model, where, columns)
        stream.schema = existing.schema
        _consume(stream, existing.add)
        tbl = existing
    else:
        stream.schema = _schema(pa, stream.first_id_type(), columns, stream.dim, model)
        tbl = _consume(
            stream,
            lambda reader: db.create_table(table, data=reader, schema=stream.schema, mode=mode),
        )
    if fts_index:
        from lancedb.index import FTS  # the lancedb extra, checked by lancedb_modules()

        tbl.create_index(text_column, config=FTS(), replace=True)
    return stream.rows


def _target(db, table: str, mode: str, uri: str):
    """The table `mode` writes into: None for a new one, the existing one to append to; a
    ValueError where the mode does not fit what is there."""
    existing = open_table(db, table)
    if mode == "create" and existing is not None:
        raise ValueError(
            f"LanceDB table {table!r} at {uri} already exists: pass mode='append' or "
            "mode='overwrite'"
        )
    if mode == "append" and existing is None:
        raise ValueError(f"there is no table {table!r} at {uri}: write it with mode='create'")
    return existing


def _batches(data: Any, batch_size: int, pa) -> Iterable:
    if hasattr(data, "iter_batches"):  # a ray.data.Dataset: streamed to this process
        return data.iter_batches(batch_size=batch_size, batch_format="numpy")
    if isinstance(data, pa.Table):
        return data.to_batches(max_chunksize=batch_size)
    if isinstance(data, (pa.RecordBatch, Mapping)):
        return [data]
    if not isinstance(data, Iterable):
        raise TypeError(
            f"data is {type(data).__name__}: give a ray.data.Dataset, a pyarrow Table or "
            "RecordBatch, a {column: array} dict, or an iterable of batches"
        )
    return data


def _schema(pa, id_type, columns: dict[str, str], dim: int, model) -> Any:
    record = {"format": FORMAT, "model": model_facts(model), "columns": columns}
    return pa.schema(
        [
            pa.field(columns["id"], id_type, nullable=False),
            pa.field(columns["text"], pa.string(), nullable=False),
            pa.field(columns["vector"], pa.list_(pa.float32(), dim), nullable=False),
        ],
        metadata={METADATA_KEY: json.dumps(record).encode()},
    )


def _consume(stream: _Stream, write):
    """write(reader)'s result; a batch's own error re-raised, not LanceDB's RuntimeError
    wrapping it (LanceDB pulls the batches from inside its writer)."""
    _, pa = lancedb_modules()
    try:
        return write(pa.RecordBatchReader.from_batches(stream.schema, iter(stream)))
    except Exception:
        if stream.error is not None:
            raise stream.error from None
        raise


class _Stream:
    """The input batches as pyarrow RecordBatches of `schema` (set before iterating), each
    checked: columns present, texts str, vectors (n, dim) finite. Remembers the error that
    stopped it and the rows it produced."""

    def __init__(self, batches: Iterable, columns: dict[str, str], dim: int):
        self.columns, self.dim = columns, dim
        self.schema = None
        self.error: Exception | None = None
        self.rows = 0
        self._batches = iter(batches)
        first = next(self._batches, None)  # read ahead: its id type makes the schema
        self._first = None if first is None else self._arrays(first, 0)

    def first_id_type(self):
        _, pa = lancedb_modules()
        return pa.string() if self._first is None else self._first[0].type

    def __iter__(self) -> Iterator:
        _, pa = lancedb_modules()
        try:
            for i, (ids, texts, vecs) in enumerate(self._converted()):
                ids = self._cast_ids(ids, i, pa)
                record = pa.RecordBatch.from_arrays([ids, texts, vecs], schema=self.schema)
                self.rows += record.num_rows
                yield record
        except Exception as err:
            self.error = err
            raise

    def _cast_ids(self, ids, i: int, pa):
        want = self.schema.field(self.columns["id"]).type
        try:
            return ids.cast(want)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ValueError(
                f"batch {i}, column {self.columns['id']!r}: {ids.type} ids do not fit the "
                f"table's {want} ids"
            ) from None

    def _converted(self) -> Iterator[tuple]:
        first, self._first = self._first, None  # not held while the rest streams
        if first is None:
            return
        yield first
        for i, batch in enumerate(self._batches, start=1):
            yield self._arrays(batch, i)

    def _arrays(self, batch: Any, i: int) -> tuple:
        """(ids, texts, vectors) pyarrow arrays of batch `i`, or a ValueError naming it."""
        _, pa = lancedb_modules()
        cols = _columns(batch, i, pa)
        for name in self.columns.values():
            if name not in cols:
                raise ValueError(
                    f"batch {i} has no column {name!r}; its columns: {sorted(cols)} "
                    "(pass id_column=, text_column=, vector_column=)"
                )
        where = {key: f"batch {i}, column {name!r}" for key, name in self.columns.items()}
        ids = _ids(cols[self.columns["id"]], where["id"], pa)
        texts = _texts(cols[self.columns["text"]], where["text"])
        vecs = _vectors(cols[self.columns["vector"]], where["vector"], self.dim, pa)
        if not len(ids) == len(texts) == len(vecs):
            raise ValueError(
                f"batch {i} has {len(ids)} ids, {len(texts)} texts, {len(vecs)} vectors"
            )
        flat = pa.array(vecs.reshape(-1), pa.float32())
        return ids, pa.array(texts, pa.string()), pa.FixedSizeListArray.from_arrays(flat, self.dim)


def _columns(batch: Any, i: int, pa) -> dict[str, Any]:
    if isinstance(batch, (pa.RecordBatch, pa.Table)):
        return {name: batch.column(name) for name in batch.schema.names}
    if isinstance(batch, Mapping):
        return dict(batch)
    raise TypeError(
        f"batch {i} is {type(batch).__name__}: give {{column: array}} dicts, pyarrow "
        "RecordBatches or Tables"
    )


def _ids(values: Any, where: str, pa):
    ids = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if not isinstance(ids, pa.Array):
        try:
            ids = pa.array(np.asarray(values).tolist())
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ValueError(f"{where}: ids must all be str or all int ({err})") from None
    if ids.null_count:
        raise ValueError(f"{where}: {ids.null_count} null id(s); every row needs an id")
    return ids


def _texts(values: Any, where: str) -> list[str]:
    texts = values.to_pylist() if hasattr(values, "to_pylist") else list(values)
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{where}, row {row}: {type(text).__name__}, not str")
    return texts


def _vectors(values: Any, where: str, dim: int, pa) -> np.ndarray:
    """(n, dim) float32, finite, from an (n, D) array, a sequence of rows or a list column."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        if values.null_count:
            raise ValueError(f"{where}: {values.null_count} null vector(s); every row needs one")
        if pa.types.is_fixed_size_list(values.type):  # no per-row objects: one flat buffer
            flat = values.flatten().to_numpy(zero_copy_only=False)
            values = flat.reshape(len(values), values.type.list_size)
        else:
            values = values.to_numpy(zero_copy_only=False)  # one array per row
    if isinstance(values, np.ndarray) and values.dtype != object:
        matrix = values
    else:
        matrix = _stack_rows(list(values), where, dim)
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        width = matrix.shape[1] if matrix.ndim == 2 else f"shape {matrix.shape}, not (n, D)"
        raise ValueError(
            f"{where}: vectors are {width} wide; the model embeds to {dim}: embed with the "
            "model passed as model="
        )
    matrix = matrix.astype(np.float32, copy=False)
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if len(bad):
        raise ValueError(f"{where}: row {bad[0]} is not finite (NaN or inf)")
    return matrix


def _stack_rows(rows: list, where: str, dim: int) -> np.ndarray:
    nulls = sum(row is None for row in rows)
    if nulls:
        raise ValueError(f"{where}: {nulls} null vector(s); every row needs one")
    widths = sorted({np.size(row) for row in rows})
    if len(widths) > 1:
        raise ValueError(f"{where}: vectors of different widths {widths[:5]}")
    if not rows:
        return np.zeros((0, dim), np.float32)
    return np.stack([np.asarray(row, np.float32).reshape(-1) for row in rows])
