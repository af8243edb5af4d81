"""Document files for an index: JSON lines, TSV or plain text, read in batches.

    for ids, texts, metadata in read_corpus("corpus.jsonl"):   # batches of <= chunk_size
        index.add(texts, ids, metadata)

- `.jsonl`: one JSON object per line. The id is `--id-field` (default: `_id`, else `id`), a
  non-empty string; the text is `--text-field` (default `text`), a non-empty string. A string
  `title` is put before the text, as BEIR does; every other field goes to the metadata.
- `.tsv`: a header row naming the columns, then one document per row, tab-separated and not
  quoted (a `"` is an ordinary character). Same field rules; other columns are metadata.
- `.txt`: one document per line; its id is its line number ("1", "2", ...).

Blank lines are skipped (a .txt keeps its line-number ids). Anything else that is not a
document (invalid JSON or UTF-8, no text, a non-string id, a row with another column count, an
id seen before) raises CorpusFileError naming the file and line, so the document is never
silently dropped. The file is read once per pass, a batch at a time: a large corpus is held
only by the index it goes into. Standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

FORMATS = {".jsonl": "jsonl", ".tsv": "tsv", ".txt": "txt"}
DEFAULT_ID_FIELDS = ("_id", "id")
DEFAULT_TEXT_FIELD = "text"
TITLE_FIELD = "title"
CHUNK_SIZE = 4096  # documents per batch: bounds memory, and how often an index is updated

Batch = tuple[list[str], list[str], list[dict | None]]  # ids, texts, metadata (None: none)
Doc = tuple[int, str, str, dict | None]  # line number, id, text, metadata


class CorpusFileError(ValueError):
    """A corpus file holds something that is not a document: names the file and line."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path, self.line = str(path), line
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


def corpus_format(path: str | Path, fmt: str | None = None) -> str:
    """ "jsonl", "tsv" or "txt": `fmt` if given, else from the file's suffix."""
    if fmt is not None:
        if fmt not in FORMATS.values():
            raise ValueError(f"unknown corpus format {fmt!r} (expected jsonl, tsv or txt)")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"{path}: cannot tell the format from the suffix {suffix!r}; name the file "
            ".jsonl, .tsv or .txt (or give --format)"
        )
    return FORMATS[suffix]


def read_corpus(
    path: str | Path,
    *,
    fmt: str | None = None,
    id_field: str | None = None,
    text_field: str = DEFAULT_TEXT_FIELD,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[Batch]:
    """Batches (ids, texts, metadata) of at most `chunk_size` documents, in file order."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    fmt = corpus_format(path, fmt)
    if fmt == "jsonl":
        docs = _jsonl_docs(path, id_field, text_field)
    elif fmt == "tsv":
        docs = _tsv_docs(path, id_field, text_field)
    else:
        docs = ((n, str(n), text, None) for n, text in _lines(path) if text.strip())
    yield from _batched(_unique(path, docs), chunk_size)


# ----------------------------------------------------------------------------- lines
def _lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its LF / CRLF end), each line decoded on its own so
    that invalid UTF-8 is reported at its line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise CorpusFileError(path, n, f"not valid UTF-8 ({err.reason})") from None
            if n == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark some editors write
            yield n, line.rstrip("\n").rstrip("\r")


def _batched(docs: Iterator[tuple[str, str, dict | None]], size: int) -> Iterator[Batch]:
    ids: list[str] = []
    texts: list[str] = []
    metadata: list[dict | None] = []
    for doc_id, text, meta in docs:
        ids.append(doc_id)
        texts.append(text)
        metadata.append(meta)
        if len(ids) == size:
            yield ids, texts, metadata
            ids, texts, metadata = [], [], []
    if ids:
        yield ids, texts, metadata


def _unique(path, docs: Iterator[Doc]) -> Iterator[tuple[str, str, dict | None]]:
    """(id, text, metadata) of each (line, id, text, metadata), refusing an id seen on an
    earlier line (the index would refuse it only after embedding every batch before it)."""
    first: dict[str, int] = {}
    for n, doc_id, text, meta in docs:
        if doc_id in first:
            raise CorpusFileError(
                path, n, f"duplicate id {doc_id!r} (first on line {first[doc_id]})"
            )
        first[doc_id] = n
        yield doc_id, text, meta


# ----------------------------------------------------------------------------- checks
def _text(path, n: int, value, title, name: str) -> str:
    """The document's text (the title, if any, before it), or CorpusFileError."""
    if not isinstance(value, str) or not value.strip():
        got = "missing" if value is None else f"{type(value).__name__} {value!r}"[:60]
        raise CorpusFileError(path, n, f"text field {name!r} must be a non-empty string ({got})")
    if title is not None and not isinstance(title, str):
        raise CorpusFileError(
            path, n, f"{TITLE_FIELD!r} must be a string, not {type(title).__name__}"
        )
    text = f"{title} {value}" if title and title.strip() else value
    try:
        text.encode("utf-8")  # JSON escapes can spell lone surrogates
    except UnicodeEncodeError:
        raise CorpusFileError(
            path, n, "the text holds a lone surrogate (\\ud800-\\udfff)"
        ) from None
    return text


def _doc_id(path, n: int, value, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise CorpusFileError(
            path, n, f"id field {name!r} must be a non-empty string, got {value!r}"[:200]
        )
    return value


def _id_field(path, n: int, fields, id_field: str | None) -> str:
    """The id field of a record: `id_field`, else the first of _id / id that it has."""
    names = (id_field,) if id_field is not None else DEFAULT_ID_FIELDS
    for name in names:
        if name in fields:
            return name
    wanted = " or ".join(repr(name) for name in names)
    raise CorpusFileError(path, n, f"no id field {wanted} (give --id-field)")


# ----------------------------------------------------------------------------- readers
def _jsonl_docs(path, id_field, text_field) -> Iterator[Doc]:
    for n, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            why = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
            raise CorpusFileError(path, n, f"not JSON ({why})") from None
        if not isinstance(row, dict):
            raise CorpusFileError(path, n, f"not a JSON object but a {type(row).__name__}")
        id_name = _id_field(path, n, row, id_field)
        doc_id = _doc_id(path, n, row.pop(id_name), id_name)
        text = _text(path, n, row.pop(text_field, None), row.pop(TITLE_FIELD, None), text_field)
        yield n, doc_id, text, _metadata(path, n, row)


def _metadata(path, n: int, rest: dict) -> dict | None:
    if not rest:
        return None
    try:
        json.dumps(rest, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError) as err:
        raise CorpusFileError(
            path, n, f"a metadata field cannot be saved as JSON ({err})"
        ) from None
    return rest


def _tsv_docs(path, id_field, text_field) -> Iterator[Doc]:
    lines = ((n, line) for n, line in _lines(path) if line.strip())
    first = next(lines, None)
    if first is None:
        raise CorpusFileError(path, None, "empty file (expected a header row naming the columns)")
    header_line, header = first[0], first[1].split("\t")
    if len(set(header)) != len(header):
        raise CorpusFileError(path, header_line, f"the header names a column twice: {header}")
    if text_field not in header:
        raise CorpusFileError(
            path,
            header_line,
            f"no column {text_field!r} in the header {header} (give --text-field)",
        )
    id_name = _id_field(path, header_line, header, id_field)
    for n, line in lines:
        row = line.split("\t")
        if len(row) != len(header):
            raise CorpusFileError(
                path, n, f"{len(row)} columns, the header has {len(header)} (tab-separated)"
            )
        fields = dict(zip(header, row, strict=True))
        doc_id = _doc_id(path, n, fields.pop(id_name), id_name)
        text = _text(path, n, fields.pop(text_field), fields.pop(TITLE_FIELD, None), text_field)
        yield n, doc_id, text, fields or None
