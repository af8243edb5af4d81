"""Embed a text stream of any length in bounded memory: read a chunk, embed it, write it, repeat.

    with open("vecs.npy", "wb") as f:
        stats = embed_stream(model, read_lines("docs.txt"), NpyWriter(f, model.embedding_dim))

`fastlm embed --input FILE --out F.npy|F.jsonl` runs this. Memory holds one chunk of texts
(at most `chunk_texts` lines and about `chunk_chars` characters, plus the one line that crosses
that bound) and its vectors, whatever the input's size. Writers:

    NpyWriter     an (n, D) float32 .npy: a fixed-size header, rows appended as they come, the
                  header rewritten with n at the end (a pipe is spooled to a temporary file)
    JsonlWriter   {"text": ..., "embedding": [D floats]} per line

Writing to a path atomically (nothing at `path` until the whole input is embedded) is the
caller's part: `fastlm.io.atomic_write`. numpy and tqdm only; the model is anything with
`embed(texts, ...)`, `embedding_dim` and `tokenizer.encode_many` (for the token count).
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

CHUNK_TEXTS = 2048  # lines per chunk: enough for length-sorted batching to remove padding
CHUNK_CHARS = 4_000_000  # ~4 MB of text per chunk, so long documents bound the chunk too
# The .npy header, padded to a fixed size so it can be rewritten in place once n is known:
# magic (6) + version (2) + length (2) + a dict whose shape has room for a 20-digit n.
NPY_HEADER_BYTES = 128
PIPE_WRITE_BYTES = 1 << 16  # a pipe's capacity: larger writes can end early, unreported


class InputLineError(ValueError):
    """A line of the input that is not UTF-8 text (named by its 1-based number)."""


def read_lines(stream: BinaryIO, name: str = "<stdin>") -> Iterator[tuple[str, int]]:
    """(text, bytes read) per line of a binary stream, lazily; the line end (LF or CRLF) and a
    leading byte-order mark are dropped. A line that is not UTF-8 is an InputLineError naming
    `name` and the line number (corpus_io reads index corpora the same way, with its own
    file:line errors)."""
    for number, raw in enumerate(stream, start=1):
        size = len(raw)
        raw = raw[:-1] if raw.endswith(b"\n") else raw
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputLineError(f"{name} line {number} is not UTF-8 text ({err.reason})") from None
        # a byte-order mark some editors write is not part of the first text (as corpus_io)
        yield (text.removeprefix("\ufeff") if number == 1 else text), size


def chunked(
    lines: Iterable[tuple[str, int]], max_texts: int = CHUNK_TEXTS, max_chars: int = CHUNK_CHARS
) -> Iterator[tuple[list[str], int]]:
    """(texts, bytes) chunks of at most `max_texts` lines, cut after the line that reaches
    `max_chars` characters; the last chunk may be shorter. Reads only as far as it yields."""
    texts, chars, size = [], 0, 0
    for text, nbytes in lines:
        texts.append(text)
        chars, size = chars + len(text), size + nbytes
        if len(texts) >= max_texts or chars >= max_chars:
            yield texts, size
            texts, chars, size = [], 0, 0
    if texts:
        yield texts, size


def npy_header(rows: int, dim: int) -> bytes:
    """A version 1.0 .npy header for a C-order (rows, dim) float32 array, NPY_HEADER_BYTES long
    (the format pads the dict with spaces before its final newline)."""
    text = repr({"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
    body = text.ljust(NPY_HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


class NpyWriter:
    """Rows of an (n, dim) float32 .npy written chunk by chunk to a binary file.

    in_place=True (a new file of our own, at offset 0): rows go straight to `out` behind a
    placeholder header that `close()` rewrites with the final n. in_place=False (a pipe, or a
    file that may be appending): rows are spooled to a temporary file and `out` receives the
    whole array at `close()`."""

    def __init__(self, out: BinaryIO, dim: int, in_place: bool = True):
        if in_place and (not out.seekable() or out.tell() != 0):
            raise ValueError("in_place needs a seekable file positioned at its start")
        self.out, self.dim, self.rows = out, dim, 0
        self._seekable = in_place
        self._body = out if in_place else tempfile.TemporaryFile()
        if in_place:
            out.write(npy_header(0, dim))

    def write(self, texts: list[str], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if vectors.shape != (len(texts), self.dim):
            raise ValueError(f"expected ({len(texts)}, {self.dim}) vectors, got {vectors.shape}")
        self._body.write(vectors.tobytes())
        self.rows += len(texts)

    def close(self) -> None:
        if self._seekable:
            end = self.out.tell()
            self.out.seek(0)
            self.out.write(npy_header(self.rows, self.dim))
            self.out.seek(end)
        else:
            self.out.write(npy_header(self.rows, self.dim))
            self._body.seek(0)
            shutil.copyfileobj(self._body, self.out, PIPE_WRITE_BYTES)
            self._body.close()
        self.out.flush()


class JsonlWriter:
    """One JSON object per text, {"text": ..., "embedding": [D floats, 7 decimals]}."""

    def __init__(self, out: BinaryIO):
        self.out, self.rows = out, 0

    def write(self, texts: list[str], vectors: np.ndarray) -> None:
        # line by line: one large write to a pipe whose reader has gone can end without the
        # BrokenPipeError that a small write raises (measured: a 900 KB write returned quietly)
        for t, v in zip(texts, vectors):
            row = {"text": t, "embedding": [round(float(x), 7) for x in v]}
            self.out.write(_json_line(row))
        self.rows += len(texts)

    def close(self) -> None:
        self.out.flush()


def _json_line(row: dict) -> bytes:
    """A JSON line in UTF-8; a text with lone surrogates (undecodable bytes of a command-line
    argument) has them written as \\u escapes, which UTF-8 cannot hold raw."""
    try:
        return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(row) + "\n").encode("ascii")


@dataclass
class StreamStats:
    """What a stream embedded: texts, tokens embedded (after any max_length cut), input bytes,
    seconds."""

    texts: int = 0
    tokens: int = 0
    bytes: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.texts:,} texts, {self.tokens:,} tokens in {self.seconds:.1f} s "
            f"({self.texts / max(self.seconds, 1e-9):,.0f} texts/s, "
            f"{self.tokens_per_second:,.0f} tokens/s)"
        )


def embed_stream(
    model,
    lines: Iterable[tuple[str, int]],
    writer: NpyWriter | JsonlWriter,
    *,
    chunk_texts: int = CHUNK_TEXTS,
    chunk_chars: int = CHUNK_CHARS,
    on_chunk: Callable[[StreamStats, int], None] | None = None,
    count_tokens: bool = True,
    **embed_options,
) -> StreamStats:
    """Embed `lines` ((text, bytes) pairs, e.g. from `read_lines`) chunk by chunk into `writer`,
    then close it. embed_options go to `model.embed` (batch_size, max_length, normalize, ...).
    on_chunk(stats so far, bytes of this chunk) runs after each chunk is written (progress).
    count_tokens=False skips the token count (a second tokenisation, ~1-2% of the time)."""
    stats, start = StreamStats(), time.perf_counter()
    cut = embed_options.get("max_length") or float("inf")
    for texts, nbytes in chunked(lines, chunk_texts, chunk_chars):
        vectors = model.embed(texts, show_progress_bar=False, **embed_options)
        writer.write(texts, vectors)
        stats.texts += len(texts)
        if count_tokens:
            seqs = model.tokenizer.encode_many(texts)
            stats.tokens += int(sum(min(len(ids), cut) for ids in seqs))
        stats.bytes += nbytes
        stats.seconds = time.perf_counter() - start
        if on_chunk is not None:
            on_chunk(stats, nbytes)
    writer.close()
    stats.seconds = time.perf_counter() - start
    return stats
