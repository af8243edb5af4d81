"""fastlm.embed_stream: lazy chunked reading, bounded chunks, .npy / JSON-lines writers, bad lines.

A fake model records what it is asked, so the order of reads and embeds is visible; the real
command is tested in test_cli_console.py."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from fastlm.embed_stream import (
    NPY_HEADER_BYTES,
    InputLineError,
    JsonlWriter,
    NpyWriter,
    chunked,
    embed_stream,
    npy_header,
    read_lines,
)

DIM = 4


class FakeTokenizer:
    def encode_many(self, texts):
        return [[0] * len(t.split()) for t in texts]


class FakeModel:
    """embed(texts) -> rows [len(text), index in the call, 0, 1]; logs each call."""

    embedding_dim = DIM
    tokenizer = FakeTokenizer()

    def __init__(self, log: list):
        self.log = log

    def embed(self, texts, show_progress_bar=None, **options):
        self.log.append(("embed", list(texts), options, show_progress_bar))
        return np.array([[len(t), i, 0, 1] for i, t in enumerate(texts)], dtype=np.float32)


def logged_lines(texts: list[str], log: list):
    for t in texts:
        log.append(("read", t))
        yield t, len(t.encode()) + 1


def test_reads_one_chunk_ahead_of_nothing_and_keeps_order():
    log, texts = [], [f"text {i}" for i in range(7)]
    out = io.BytesIO()
    stats = embed_stream(
        FakeModel(log), logged_lines(texts, log), JsonlWriter(out), chunk_texts=3, max_length=1
    )
    kinds = [e[0] if e[0] == "embed" else e[1] for e in log]
    # each chunk is embedded before the next line is read: memory holds one chunk
    assert kinds == ["text 0", "text 1", "text 2", "embed", "text 3", "text 4", "text 5", "embed",
                     "text 6", "embed"]  # fmt: skip
    assert all(e[2] == {"max_length": 1} and e[3] is False for e in log if e[0] == "embed")
    rows = [json.loads(line) for line in out.getvalue().decode().splitlines()]
    assert [r["text"] for r in rows] == texts
    assert [r["embedding"][1] for r in rows] == [0, 1, 2, 0, 1, 2, 0]
    # tokens after the max_length cut: 2 words each, cut to 1
    assert (stats.texts, stats.tokens, stats.bytes) == (7, 7, sum(len(t) + 1 for t in texts))


def test_a_chunk_is_also_cut_by_characters():
    lines = [("x" * 10, 11)] * 5
    sizes = [len(texts) for texts, _ in chunked(iter(lines), max_texts=100, max_chars=25)]
    assert sizes == [3, 2]  # cut after the line that reaches 25 characters


@pytest.mark.parametrize("in_place", [True, False])
@pytest.mark.parametrize("n", [0, 1, 5])
def test_npy_writer_rows_load_back(n, in_place):
    out = io.BytesIO()
    writer = NpyWriter(out, DIM, in_place=in_place)
    rows = np.arange(n * DIM, dtype=np.float32).reshape(n, DIM)
    for start in range(0, n, 2):
        writer.write([""] * len(rows[start : start + 2]), rows[start : start + 2])
    writer.close()
    got = np.load(io.BytesIO(out.getvalue()))
    assert got.dtype == np.float32 and got.shape == (n, DIM)
    np.testing.assert_array_equal(got, rows)
    assert len(out.getvalue()) == NPY_HEADER_BYTES + rows.nbytes


def test_npy_header_has_room_for_any_row_count():
    for rows in (0, 7, 10**19):
        header = npy_header(rows, 256)
        assert len(header) == NPY_HEADER_BYTES and header.endswith(b"\n")
        shape = np.lib.format.read_array_header_1_0(io.BytesIO(header[8:]))[0]  # after magic
        assert shape == (rows, 256)


def test_npy_writer_refuses_to_rewrite_a_file_it_does_not_start():
    out = io.BytesIO(b"already here")
    out.seek(0, io.SEEK_END)
    with pytest.raises(ValueError, match="start"):
        NpyWriter(out, DIM, in_place=True)


def test_npy_writer_checks_the_vector_shape():
    writer = NpyWriter(io.BytesIO(), DIM)
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        writer.write(["a", "b"], np.zeros((2, 3), np.float32))


def test_read_lines_strips_lf_and_crlf_only():
    data = b"alpha\r\nbe\rta\n\nlast"
    assert list(read_lines(io.BytesIO(data))) == [
        ("alpha", 7),
        ("be\rta", 6),
        ("", 1),
        ("last", 4),
    ]


def test_a_byte_order_mark_is_not_text():
    assert list(read_lines(io.BytesIO(b"\xef\xbb\xbfhello\n\xef\xbb\xbfkept\n"))) == [
        ("hello", 9),
        ("\ufeffkept", 8),  # only the file's first bytes can be a mark
    ]


def test_a_line_that_is_not_utf8_names_its_number():
    lines = read_lines(io.BytesIO(b"ok\nfine\nbad \xff byte\n"), "docs.txt")
    assert next(lines) == ("ok", 3) and next(lines) == ("fine", 5)
    with pytest.raises(InputLineError, match="docs.txt line 3 is not UTF-8"):
        next(lines)


def test_jsonl_escapes_lone_surrogates_instead_of_failing():
    out = io.BytesIO()
    JsonlWriter(out).write(["caf\udce9", "naïve"], np.zeros((2, DIM), np.float32))
    first, second = out.getvalue().decode("utf-8").splitlines()
    assert json.loads(first)["text"] == "caf\udce9" and "\\udce9" in first
    assert json.loads(second)["text"] == "naïve" and "naïve" in second
