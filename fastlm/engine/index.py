"""A small embedding index: embed a corpus once, query it many times.

On disk (format fastlm-index/2) an index directory holds complete, never-modified versions and a
pointer that names the current one:

    DIR/manifest.json        {"format": "fastlm-index/2", "current": "v00000007"}
    DIR/v00000007/           index.json (texts, model), embeddings.npy ((n, D) float32) and
                             manifest.json ({"format": ..., "files": {name: sha256}})
    DIR/.fastlm-index.lock   flock-ed by a saving process for its whole save

`save` writes a new version, fsyncs it, then replaces the pointer atomically (temp file, fsync,
os.replace). `load` resolves the pointer once and reads only that version: it never pairs one
save's texts with another's vectors, and after a kill -9 at any point of a save the pointer still
names the last complete version. Each save, holding the lock, then removes what killed saves left
and every version but the new one and the one it replaced (a reader that resolved the pointer
just before may still be reading that one); a reader whose version is removed all the same (two
saves finished during its read) resolves the pointer again.

Every file is read as untrusted: regular files only, JSON size-capped, the .npy header checked
against the texts before any data is allocated. A fastlm-index/1 directory (its files directly in
DIR) still loads, and the next save turns it into a fastlm-index/2 one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.typing import ArrayLike

from fastlm.io import (
    UnreadableFileError,
    atomic_write_text,
    fsync_dir,
    open_regular,
    parse_json,
    read_regular,
    sha256_file,
)
from fastlm.tokenizer import _check_text, _check_texts

try:
    import fcntl
except ImportError:  # no flock (Windows): concurrent saves to one directory are unsupported there
    fcntl = None

EMBEDDINGS_FILE, META_FILE, INDEX_MANIFEST = "embeddings.npy", "index.json", "manifest.json"
INDEX_FORMAT, LEGACY_FORMAT = "fastlm-index/2", "fastlm-index/1"
LOCK_FILE = ".fastlm-index.lock"
# What a load reads before parsing: a manifest is a few hundred bytes; index.json holds every text.
MAX_MANIFEST_BYTES = 1 << 20
MAX_META_BYTES = 1 << 30
LOAD_ATTEMPTS = 10  # pointer resolutions before a load gives up on an index saved non-stop
_LEGACY = ""  # the "version" of a fastlm-index/1 index: its files lie in DIR itself
_VERSION = re.compile(r"v\d{8,}")
_POINTER_TMP = re.compile(r"\.manifest\.json\..+\.tmp")  # atomic_write's temporary pointer
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # no "/", "\\" or "..": stays in its dir
_SHA256 = re.compile(r"[0-9a-f]{64}")


class IndexFileError(ValueError):
    """A saved index is missing a file, fails its sha256 check, or cannot be parsed."""


class Index:
    """Normalised document embeddings (n, D) float32 + their texts.

    >>> index = Index(model); index.add(docs); index.search("query", top_k=5)
    """

    def __init__(self, model, embeddings: ArrayLike | None = None, texts: Iterable[str] = ()):
        """`embeddings`: any (n, D) array-like of numbers (stored as float32), n = len(texts)."""
        self.model = model
        self.texts = _check_texts(texts if isinstance(texts, str | Sequence) else list(texts))
        self.embeddings = _as_matrix(embeddings, len(self.texts), model.embedding_dim)

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, texts: Sequence[str], batch_size: int = 64) -> Index:
        texts = _check_texts(texts)
        vecs = self.model.embed(texts, batch_size=batch_size)
        self.embeddings = np.concatenate([self.embeddings, vecs])
        self.texts.extend(texts)
        return self

    def search(self, query: str, top_k: int = 10) -> list[dict]:
        """Best matches first: [{"corpus_id", "score", "text"}]."""
        from fastlm.language_model import _top_hits

        _check_text(query, "query")
        if not self.texts:
            return []
        return _top_hits(self.embeddings @ self.model.embed(query), top_k, self.texts)

    def save(self, path: str | os.PathLike) -> None:
        """Write a new version of index directory `path` and point it there (module docstring).

        `path` may be new, empty or an index; anything else is refused (FileExistsError), never
        replaced. Saves to one directory from several processes run one after the other.
        """
        path = Path(path)
        _refuse_foreign(path)
        path.mkdir(parents=True, exist_ok=True)
        with _writer_lock(path):
            previous = _current_or_none(path)
            version = _next_version(path)
            (path / version).mkdir()
            try:
                self._write_version(path / version)
                pointer = {"format": INDEX_FORMAT, "current": version}
                atomic_write_text(path / INDEX_MANIFEST, json.dumps(pointer))
            except BaseException:
                if _current_or_none(path) != version:  # never published: nobody reads it
                    shutil.rmtree(path / version, ignore_errors=True)
                raise
            _remove_stale(path, keep={version, previous})

    def _write_version(self, vdir: Path) -> None:
        """Every file of _WRITERS, then their sha256 manifest, all fsynced."""
        for name, write in _WRITERS.items():
            with open(vdir / name, "xb") as f:
                write(self, f)
                f.flush()
                os.fsync(f.fileno())
        files = {name: sha256_file(vdir / name) for name in _WRITERS}
        manifest = json.dumps({"format": INDEX_FORMAT, "files": files}, indent=2)
        with open(vdir / INDEX_MANIFEST, "x", encoding="utf-8") as f:
            f.write(manifest)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(vdir)

    @classmethod
    def load(cls, path: str | os.PathLike, model) -> Index:
        """The current version of an index saved by `save`, every file checked first."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"index directory not found: {path}")
        for _ in range(LOAD_ATTEMPTS):
            version = _current(path)
            try:
                texts, vecs = _read_version(path, version, model)
            except IndexFileError:
                if _current_or_none(path) == version:
                    raise  # still the current version: the defect is real
                continue  # two saves finished meanwhile and removed it: read the new one
            try:
                return cls(model, vecs, texts)
            except (TypeError, ValueError) as err:  # e.g. a lone surrogate in a text
                raise IndexFileError(f"{path / version / META_FILE}: {err}") from None
        raise IndexFileError(
            f"{path}: saves replaced the index {LOAD_ATTEMPTS} times while it was read; retry"
        )


# ------------------------------------------------------------------ writing
def _write_meta(index: Index, f: BinaryIO) -> None:
    model = index.model
    meta = {
        "model": model.name,
        "architecture": model.architecture,
        "dim": int(index.embeddings.shape[1]),
        "texts": index.texts,
    }
    f.write(json.dumps(meta).encode("utf-8"))


def _write_embeddings(index: Index, f: BinaryIO) -> None:
    np.save(f, np.ascontiguousarray(index.embeddings, dtype=np.float32))


# The files of one version, each listed with its sha256 in the version's manifest.json. A new
# file is one more entry here (and a read in _read_version).
_WRITERS: dict[str, Callable[[Index, BinaryIO], None]] = {
    META_FILE: _write_meta,
    EMBEDDINGS_FILE: _write_embeddings,
}


def _refuse_foreign(path: Path) -> None:
    """FileExistsError unless `path` is new, empty, an index, or what a killed first save left."""
    if not path.exists():
        return
    refuse = f"{path} exists and is not a fastlm index; not replacing it"
    if not path.is_dir():
        raise FileExistsError(f"{refuse} (it is not a directory)")
    names = os.listdir(path)
    if INDEX_MANIFEST not in names:
        if names and (LOCK_FILE not in names or not all(map(_is_internal, names))):
            raise FileExistsError(f"{refuse} (it holds {sorted(names)[0]!r}, no {INDEX_MANIFEST})")
        return
    try:
        file = path / INDEX_MANIFEST
        manifest = parse_json(read_regular(file, MAX_MANIFEST_BYTES), file)
    except (OSError, UnreadableFileError) as err:
        raise FileExistsError(f"{refuse} ({err})") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt not in (INDEX_FORMAT, LEGACY_FORMAT):
        raise FileExistsError(f"{refuse} (its {INDEX_MANIFEST} has format {fmt!r})")


def _is_internal(name: str) -> bool:
    return name == LOCK_FILE or bool(_VERSION.fullmatch(name) or _POINTER_TMP.fullmatch(name))


@contextlib.contextmanager
def _writer_lock(path: Path) -> Iterator[None]:
    """One saving process at a time; the kernel drops the lock when its holder dies."""
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_NONBLOCK", 0), 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _next_version(path: Path) -> str:
    """A name above every version present, published or left by a killed save."""
    numbers = [int(name[1:]) for name in os.listdir(path) if _VERSION.fullmatch(name)]
    return f"v{max(numbers, default=0) + 1:08d}"


def _remove_stale(path: Path, keep: set[str | None]) -> None:
    """Remove every version not in `keep`, and temporary pointers of killed saves. The caller
    holds the lock: no other process is writing any of them."""
    for name in os.listdir(path):
        if _VERSION.fullmatch(name) and name not in keep:
            shutil.rmtree(path / name, ignore_errors=True)
        elif _POINTER_TMP.fullmatch(name):
            (path / name).unlink(missing_ok=True)
    if _LEGACY not in keep:  # the files of a fastlm-index/1 index, two saves ago
        for name in (META_FILE, EMBEDDINGS_FILE):
            (path / name).unlink(missing_ok=True)


# ------------------------------------------------------------------ reading
def _current(path: Path) -> str:
    """The version the pointer names ("" for a fastlm-index/1 index)."""
    file = path / INDEX_MANIFEST
    try:
        pointer = _read_json(file, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise IndexFileError(
            f"{path} has no {INDEX_MANIFEST}: not a fastlm index (Index.save writes one)"
        ) from None
    fmt = pointer.get("format") if isinstance(pointer, dict) else None
    if fmt == LEGACY_FORMAT:
        return _LEGACY
    if fmt != INDEX_FORMAT:
        raise IndexFileError(f"{file} is not a {LEGACY_FORMAT} or {INDEX_FORMAT} manifest")
    current = pointer.get("current")
    if not isinstance(current, str) or not _VERSION.fullmatch(current):
        raise IndexFileError(f"{file}: 'current' must name a version like v00000001: {current!r}")
    return current


def _current_or_none(path: Path) -> str | None:
    try:
        return _current(path)
    except (OSError, ValueError):
        return None


def _read_version(path: Path, version: str, model) -> tuple[list[str], np.ndarray]:
    """(texts, (n, D) float32 vectors) of one version, each file checked before it is used."""
    vdir = path / version
    try:
        files = _listed_files(vdir, LEGACY_FORMAT if version == _LEGACY else INDEX_FORMAT)
        meta = _read_json(vdir / META_FILE, MAX_META_BYTES, files[META_FILE])
        texts = _check_meta(meta, vdir / META_FILE, model)
        shape = (len(texts), model.embedding_dim)
        vecs = _read_embeddings(vdir / EMBEDDINGS_FILE, files[EMBEDDINGS_FILE], shape)
    except FileNotFoundError as err:
        raise IndexFileError(f"index file missing: {err.filename}") from None
    return texts, vecs


def _read_json(file: Path, max_bytes: int, sha256: str | None = None) -> object:
    """Parsed JSON of a regular file of <= max_bytes, after its sha256 check when one is given."""
    try:
        data = read_regular(file, max_bytes)
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise IndexFileError(f"sha256 mismatch for {file}: the file is corrupt or was edited")
        return parse_json(data, file)
    except UnreadableFileError as err:
        raise IndexFileError(str(err)) from None


def _listed_files(vdir: Path, fmt: str) -> dict[str, str]:
    """{file name: sha256} of a version's manifest, which must list every file a load reads."""
    file = vdir / INDEX_MANIFEST
    manifest = _read_json(file, MAX_MANIFEST_BYTES)
    ok = isinstance(manifest, dict) and manifest.get("format") == fmt
    files = manifest.get("files") if ok else None
    if not isinstance(files, dict):
        raise IndexFileError(f"{file} is not a {fmt} manifest")
    for name, digest in files.items():
        if not _FILE_NAME.fullmatch(name) or not isinstance(digest, str):
            raise IndexFileError(f"{file}: {name!r} is not a plain file name of this version")
        if not _SHA256.fullmatch(digest):
            raise IndexFileError(f"{file}: the sha256 of {name!r} is not 64 hex digits")
    missing = [name for name in _WRITERS if name not in files]
    if missing:
        raise IndexFileError(f"{file} does not list {', '.join(missing)}")
    return files


def _check_meta(meta: object, file: Path, model) -> list[str]:
    """The texts of index.json, after checking the index was built with `model`'s kind."""
    texts = meta.get("texts") if isinstance(meta, dict) else None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise IndexFileError(f"{file}: 'texts' must be a list of str")
    if meta.get("architecture") != model.architecture or meta.get("dim") != model.embedding_dim:
        raise ValueError(
            f"index at {file.parent} was built with {meta.get('model')!r} "
            f"({meta.get('architecture')}, dim {meta.get('dim')}); load it with that model"
        )
    return texts


def _read_embeddings(file: Path, sha256: str, shape: tuple[int, int]) -> np.ndarray:
    """The (n, D) float32 matrix of an .npy file whose header must give exactly `shape` and
    whose size must match that header: both checked before the data is allocated."""
    try:
        f, size = open_regular(file)
    except UnreadableFileError as err:
        raise IndexFileError(str(err)) from None
    with f:
        dtype, offset = _npy_header(f, file, shape)
        expected = offset + shape[0] * shape[1] * dtype.itemsize
        if size != expected:
            raise IndexFileError(
                f"{file}: size {size:,} bytes, but its header says {expected:,}: truncated or "
                "extended"
            )
        f.seek(0)
        buf = bytearray(size)  # writable, so the array needs no copy
        view, got = memoryview(buf), 0
        while got < size and (n := f.readinto(view[got:])):
            got += n
        if got != size:
            raise IndexFileError(f"{file} shrank while read")
    if hashlib.sha256(buf).hexdigest() != sha256:
        raise IndexFileError(f"sha256 mismatch for {file}: the file is corrupt or was edited")
    vecs = np.frombuffer(buf, dtype=dtype, count=shape[0] * shape[1], offset=offset)
    vecs = vecs.reshape(shape).astype(np.float32, copy=False)  # a copy only if byte-swapped
    if not np.isfinite(vecs).all():
        raise IndexFileError(f"{file}: embeddings hold NaN or inf")
    return vecs


def _npy_header(f: BinaryIO, file: Path, shape: tuple[int, int]) -> tuple[np.dtype, int]:
    """(dtype, data offset) of an .npy header that must say float32, C order and `shape`."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"npy format version {version} is not one np.save writes here")
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        got, fortran, dtype = read(f)  # numpy caps the header's size (max_header_size)
    except ValueError as err:  # EOF, a bad magic string, an unparsable or oversized header
        raise IndexFileError(f"{file} is not a readable .npy file: {err}") from None
    if dtype.kind != "f" or dtype.itemsize != 4:
        raise IndexFileError(f"{file}: embeddings must be float32; the header says {dtype}")
    if fortran:
        raise IndexFileError(f"{file}: embeddings must be in C order; the header says Fortran")
    if got != shape:
        raise IndexFileError(
            f"{file}: the header's shape {got} does not match {shape[0]} texts of dimension "
            f"{shape[1]}"
        )
    return dtype, f.tell()


def _as_matrix(embeddings: ArrayLike | None, n: int, dim: int) -> np.ndarray:
    """`embeddings`, any array-like of numbers, as an (n, dim) float32 array (None: (0, dim))."""
    if embeddings is None:
        return np.zeros((0, dim), np.float32)
    try:
        raw = np.asarray(embeddings)
    except ValueError as err:  # ragged rows
        raise ValueError(f"embeddings must be an (n, {dim}) array of numbers: {err}") from None
    if raw.dtype.kind not in "iuf":
        raise TypeError(
            f"embeddings must be numbers, got {type(embeddings).__name__} of dtype {raw.dtype}"
        )
    if raw.size == 0 and n == 0:
        raw = raw.reshape(0, dim)
    if raw.shape != (n, dim):
        raise ValueError(
            f"embeddings shape {raw.shape} does not match {n} texts of dimension {dim}"
        )
    matrix = raw.astype(np.float32, copy=False)
    if not np.isfinite(matrix).all():
        raise ValueError("embeddings hold NaN or inf")
    return matrix
