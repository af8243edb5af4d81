"""Reading one saved version back into an Index: the manifest's facts first (model identity,
storage, settings: a mismatch is found before 1 GB of texts is parsed), then every file checked
against its sha256 before it is parsed, mapped, or handed to bm25s / usearch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastlm import ann as ann_mod
from fastlm import lexical as lexical_mod
from fastlm.index import records, store
from fastlm.index.store import INDEX_FORMAT, IndexFileError
from fastlm.index.vectors import STORAGE, read_npy

META_FILE, EMBEDDINGS_FILE, ANN_FILE = "index.json", "embeddings.npy", "ann.usearch"
MAX_META_BYTES = 1 << 30  # index.json holds every text
_GRAPH_SETTINGS = ("connectivity", "expansion_add", "expansion_search", "metric", "dtype")


def read_version(cls, vdir: Path, version: str, model, mmap: bool):
    """An Index (class `cls`) of version directory `vdir` loaded for `model`."""
    try:
        return _read_version(cls, vdir, version, model, mmap)
    except FileNotFoundError as err:  # e.g. the version removed by two saves meanwhile
        raise IndexFileError(f"index file missing: {err.filename}") from None


def _read_version(cls, vdir: Path, version: str, model, mmap: bool):
    manifest = store.read_manifest(vdir, version, (META_FILE, EMBEDDINGS_FILE))
    files, where = manifest["files"], vdir / store.INDEX_MANIFEST
    current = manifest["format"] == INDEX_FORMAT
    if current:
        records.check_model(manifest.get("model"), model, where)
        storage, settings, ann_choice, graph = _facts(manifest, where)
    else:  # fastlm-index/1 and /2: float32, no lexical side, no graph, facts in index.json
        storage, settings, ann_choice, graph = "float32", None, None, None
    meta = store.read_json(vdir / META_FILE, MAX_META_BYTES, files[META_FILE])
    if not current:
        legacy = meta if isinstance(meta, dict) else {}
        facts = {k: legacy.get(k) for k in ("architecture", "dim")}
        records.check_model({"name": legacy.get("model"), **facts}, model, vdir / META_FILE)
    ids, texts, metadata = records.parse_records(meta, vdir / META_FILE)
    if current and manifest.get("count") != len(texts):
        raise IndexFileError(f"{where}: 'count' is not the {len(texts)} texts of {META_FILE}")
    shape = (len(texts), model.embedding_dim)
    dtype = np.dtype(STORAGE[storage])
    vecs = read_npy(vdir / EMBEDDINGS_FILE, files[EMBEDDINGS_FILE], shape, dtype, mmap)
    index = cls(model, lexical=False, ann=ann_choice, storage=storage)
    index._set_records(ids, texts, metadata, vecs)
    if settings is not None:
        index._lexical_settings = settings
        index._lexical = _read_lexical(vdir, files, settings, len(texts))
    if graph is not None:
        index._ann_settings = graph
        index._ann = _read_graph(vdir, files, graph, mmap, shape)
        index._ann_file = vdir / ANN_FILE if mmap else None
    return index


def _facts(manifest: dict, where: Path):
    """(storage, lexical settings or None, ann choice, graph settings or None) of a manifest."""
    storage = manifest.get("storage")
    if storage not in STORAGE:
        raise IndexFileError(f"{where}: 'storage' must be one of {', '.join(STORAGE)}")
    try:
        lexical = manifest.get("lexical")
        settings = None if lexical is None else lexical_mod.LexicalSettings.from_dict(lexical)
        ann = manifest.get("ann")
        if not isinstance(ann, dict) or ann.get("mode") not in (None, True, False):
            raise ValueError("'ann' must be an object whose 'mode' is null, true or false")
        graph = ann.get("graph")
        if graph is not None:
            if not isinstance(graph, dict):
                raise ValueError("'ann.graph' must be an object")
            graph = ann_mod.AnnSettings(**{k: graph.get(k) for k in _GRAPH_SETTINGS})
    except (TypeError, ValueError) as err:
        raise IndexFileError(f"{where}: {err}") from None
    return storage, settings, ann.get("mode"), graph


def _read_lexical(vdir: Path, files: dict, settings, n: int) -> lexical_mod.LexicalIndex:
    """The BM25 side: every bm25.* file listed and matching its sha256 before bm25s reads it."""
    where = vdir / store.INDEX_MANIFEST
    unlisted = [name for name in lexical_mod.LexicalIndex.files(vdir) if name not in files]
    if unlisted:
        raise IndexFileError(f"{vdir / unlisted[0]} is not listed in {where}")
    optional = lexical_mod.BM25_NAMES["nnoc_name"]
    missing = [n for n in lexical_mod.ALL_FILES if n not in files and n != optional]
    if missing:
        raise IndexFileError(f"{where} does not list {', '.join(missing)}")
    for name in lexical_mod.ALL_FILES:
        if name in files:
            store.verify_file(vdir / name, files[name])
    try:
        lexical = lexical_mod.LexicalIndex.load(vdir, settings)
    except FileNotFoundError as err:
        raise IndexFileError(f"index file missing: {err.filename}") from None
    except ValueError as err:
        raise IndexFileError(f"{vdir}: the lexical index cannot be read: {err}") from None
    if len(lexical) != n:
        raise IndexFileError(f"{vdir}: the lexical index holds {len(lexical)} documents, not {n}")
    return lexical


def _read_graph(vdir: Path, files: dict, settings, mmap: bool, shape) -> ann_mod.AnnIndex:
    """The HNSW graph, its file checked against its sha256 before usearch opens it."""
    file = vdir / ANN_FILE
    if ANN_FILE not in files:
        raise IndexFileError(f"{vdir / store.INDEX_MANIFEST} does not list {ANN_FILE}")
    store.verify_file(file, files[ANN_FILE])
    try:
        graph = ann_mod.AnnIndex.load(file, view=mmap, settings=settings)
    except ValueError as err:
        raise IndexFileError(f"{file}: {err}") from None
    if graph.dim != shape[1] or len(graph) > shape[0]:
        raise IndexFileError(
            f"{file}: a graph of {len(graph)} x {graph.dim} vectors does not "
            f"fit {shape[0]} documents of dimension {shape[1]}"
        )
    return graph
