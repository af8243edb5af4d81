"""The dense side of an Index: (n, D) vectors stored float32 or float16, their .npy file, and
exact search.

A saved embeddings.npy is untrusted: its header must give exactly the expected dtype, C order
and (n, D) shape, and its size must match the header, all before any data is allocated or
mapped; its sha256 and finiteness are checked in one streaming pass.

mmap: with `mmap=True` the file is mapped read-only (np.memmap) after that pass, so a large
index costs page cache, not process memory. The pass still reads the whole file once (about
1 s for 512 MB, a 1M x 256 float16 index): a load is then verified end to end, which a lazy
check could not promise once the vectors are in use. An edit of a mapped index (add, remove)
copies the vectors into memory first.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.typing import ArrayLike

from fastlm.index.store import IndexFileError
from fastlm.io import UnreadableFileError, open_regular

STORAGE = {"float32": np.float32, "float16": np.float16}
ROWS_PER_CHUNK = 1 << 16  # rows upcast / checked at a time: bounds the float32 temporaries


def check_storage(storage: object) -> np.dtype:
    if not isinstance(storage, str) or storage not in STORAGE:
        raise ValueError(f"storage must be one of {', '.join(STORAGE)}; got {storage!r}")
    return np.dtype(STORAGE[storage])


def as_matrix(embeddings: ArrayLike | None, n: int, dim: int, dtype: np.dtype) -> np.ndarray:
    """`embeddings`, any array-like of numbers, as an (n, dim) `dtype` array (None: (0, dim))."""
    if embeddings is None:
        return np.zeros((0, dim), dtype)
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
    if not np.isfinite(raw).all():
        raise ValueError("embeddings hold NaN or inf")
    matrix = raw.astype(dtype, copy=False)
    if not np.isfinite(matrix).all():  # a float32 value beyond float16's range
        raise ValueError(f"embeddings overflow {dtype} storage")
    return matrix


def dense_scores(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(n_q, n) float32 inner products of `queries` (n_q, D) float32 with `vectors` (n, D),
    float16 storage upcast a chunk of rows at a time."""
    if vectors.dtype == np.float32:
        return queries @ vectors.T
    out = np.empty((len(queries), len(vectors)), np.float32)
    for start in range(0, len(vectors), ROWS_PER_CHUNK):
        chunk = vectors[start : start + ROWS_PER_CHUNK].astype(np.float32)
        out[:, start : start + len(chunk)] = queries @ chunk.T
    return out


def as_float32(vectors: np.ndarray) -> np.ndarray:
    """The vectors as one float32 array (what the ANN graph is built from)."""
    return np.ascontiguousarray(vectors, dtype=np.float32)


# ------------------------------------------------------------------ files
def write_npy(vectors: np.ndarray, f: BinaryIO) -> None:
    np.save(f, np.ascontiguousarray(vectors))


def read_npy(
    file: Path, sha256: str, shape: tuple[int, int], dtype: np.dtype, mmap: bool
) -> np.ndarray:
    """The (n, D) `dtype` matrix of an .npy file whose header must give exactly `shape` and
    `dtype` and whose size must match that header (both checked before any data is read);
    sha256 and finiteness checked in one pass. mmap: a read-only memory map of the file."""
    try:
        f, size = open_regular(file)
    except UnreadableFileError as err:
        raise IndexFileError(str(err)) from None
    except FileNotFoundError:
        raise IndexFileError(f"index file missing: {file}") from None
    with f:
        file_dtype, offset = _npy_header(f, file, shape, dtype)
        expected = offset + shape[0] * shape[1] * file_dtype.itemsize
        if size != expected:
            raise IndexFileError(
                f"{file}: size {size:,} bytes, but its header says {expected:,}: truncated or "
                "extended"
            )
        f.seek(0)
        data = _checked_bytes(f, file, size, offset, file_dtype, shape[1], sha256, keep=not mmap)
    if mmap:
        return np.memmap(file, dtype=file_dtype, mode="r", offset=offset, shape=shape)
    vecs = np.frombuffer(data, dtype=file_dtype, count=shape[0] * shape[1], offset=offset)
    return vecs.reshape(shape).astype(dtype, copy=False)  # a copy only if byte-swapped


def _checked_bytes(f, file, size, offset, dtype, dim, sha256, keep: bool) -> bytearray | None:
    """Stream the file once: sha256 of all of it, every value finite. keep: return its bytes
    (a writable buffer, so the array needs no copy); else read it a chunk at a time."""
    digest = hashlib.sha256()
    head = f.read(offset)
    if len(head) != offset:
        raise IndexFileError(f"{file} shrank while read")
    digest.update(head)
    data_size, row_bytes = size - offset, max(dim * dtype.itemsize, 1)
    step = max(1, (1 << 24) // row_bytes) * row_bytes  # whole rows, about 16 MB
    buf = bytearray(size if keep else min(data_size, step))
    finite = True
    for pos in range(0, data_size, step):
        n = min(step, data_size - pos)
        view = memoryview(buf)[offset + pos : offset + pos + n] if keep else memoryview(buf)[:n]
        _read_exactly(f, view, file)
        digest.update(view)
        finite = finite and bool(np.isfinite(np.frombuffer(view, dtype=dtype)).all())
    if digest.hexdigest() != sha256:  # first: an edited file is named as such
        raise IndexFileError(f"sha256 mismatch for {file}: the file is corrupt or was edited")
    if not finite:
        raise IndexFileError(f"{file}: embeddings hold NaN or inf")
    if keep:
        buf[:offset] = head
        return buf
    return None


def _read_exactly(f: BinaryIO, view: memoryview, file: Path) -> None:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise IndexFileError(f"{file} shrank while read")
        got += n


def _npy_header(
    f: BinaryIO, file: Path, shape: tuple[int, int], want: np.dtype
) -> tuple[np.dtype, int]:
    """(dtype, data offset) of an .npy header that must say `want`, C order and `shape`."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"npy format version {version} is not one np.save writes here")
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        got, fortran, dtype = read(f)  # numpy caps the header's size (max_header_size)
    except ValueError as err:  # EOF, a bad magic string, an unparsable or oversized header
        raise IndexFileError(f"{file} is not a readable .npy file: {err}") from None
    if dtype.kind != "f" or dtype.itemsize != want.itemsize:
        raise IndexFileError(f"{file}: embeddings must be {want}; the header says {dtype}")
    if fortran:
        raise IndexFileError(f"{file}: embeddings must be in C order; the header says Fortran")
    if got != shape:
        raise IndexFileError(
            f"{file}: the header's shape {got} does not match {shape[0]} texts of dimension "
            f"{shape[1]}"
        )
    return dtype, f.tell()
