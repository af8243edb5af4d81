"""Tokenised training data for the embedding tower, batched deterministically, and the readers
of the scored/labelled pair files that training and `fastlm evaluate` share.

Readers refuse a malformed file with a DataFileError (a ValueError) naming the file and line; a
UTF-8 BOM is dropped.

A batch is a pure function of (seed, step), so a resumed run sees exactly the batches the killed
run would have seen. Texts are bucketed by length within large random chunks to limit padding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastlm.tokenizer import Tokenizer, pad_batch

CHUNK_BATCHES = 64  # batches per length-sorted chunk


class DataFileError(ValueError):
    """A data file is malformed: the message names the file and, where one is at fault, the line."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path, self.line = str(path), line
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


@dataclass
class StsPairs:
    """Sentence pairs with gold similarity, tokenised."""

    left: list[list[int]]
    right: list[list[int]]
    gold: np.ndarray  # (N,) float32


def text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its ending) of a UTF-8 file, a leading BOM dropped.

    Decoded line by line, so a bad byte is reported on its own line (a text-mode read decodes
    8 KiB at a time and fails before yielding the good lines in front of it).
    """
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataFileError(path, n, f"not UTF-8 (byte {e.object[e.start]:#04x})") from None
            yield n, text.rstrip("\r\n")


def finite_number(path: str | Path, line: int, text: str, what: str) -> float:
    """float(text), refusing words and NaN/inf (a NaN gold score silently changes a rank
    correlation; an inf relevance overflows int())."""
    try:
        value = float(text)
    except ValueError:
        raise DataFileError(path, line, f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataFileError(path, line, f"{what} {text!r} is not a finite number")
    return value


def _column_indices(path, header: list[str], columns: Sequence[str | tuple[str, ...]]) -> list[int]:
    """Where each wanted column is; a tuple names alternatives, the first present is used."""
    indices, missing = [], []
    for col in columns:
        names = (col,) if isinstance(col, str) else col
        found = [name for name in names if name in header]
        if not found:
            missing.append(" or ".join(names))
        elif header.count(found[0]) > 1:  # which of the two holds the data is anyone's guess
            raise DataFileError(path, 1, f"the header {header} names {found[0]!r} twice")
        else:
            indices.append(header.index(found[0]))
    if missing:
        raise DataFileError(path, 1, f"missing column(s) {missing} in the header {header}")
    return indices


def tsv_rows(
    path: str | Path, columns: Sequence[str | tuple[str, ...]]
) -> Iterator[tuple[int, list[str]]]:
    """(line number, the wanted columns' values) of each row of a tab-separated file whose header
    names at least `columns` (other columns are ignored). Quoting is off (texts contain `"`);
    blank lines are skipped; a row with another column count than the header is an error,
    since a stray tab shifts every column after it."""
    lines = text_lines(path)
    first = next(lines, None)
    if first is None:
        raise DataFileError(path, None, f"empty file (expected a header naming {list(columns)})")
    header = first[1].split("\t")
    indices = _column_indices(path, header, columns)
    for n, text in lines:
        if not text:
            continue
        row = text.split("\t")
        if len(row) != len(header):
            raise DataFileError(path, n, f"{len(row)} columns, the header has {len(header)}")
        yield n, [row[i] for i in indices]


def read_sts_tsv(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """sentence1, sentence2 and score (N,) float64 of a tab-separated file with a header row.
    Scores must be finite; Spearman needs at least 2 pairs whose scores are not all equal."""
    s1, s2, gold = [], [], []
    for n, (a, b, score) in tsv_rows(path, ("sentence1", "sentence2", "score")):
        gold.append(finite_number(path, n, score, "score"))
        s1.append(a)
        s2.append(b)
    if len(gold) < 2:
        raise DataFileError(path, None, f"need at least 2 scored pairs, found {len(gold)}")
    if min(gold) == max(gold):
        raise DataFileError(path, None, f"every score is equal ({gold[0]}): Spearman is undefined")
    return s1, s2, np.asarray(gold, dtype=np.float64)


def read_sick(path: str | Path, split: str) -> tuple[list[str], list[str], np.ndarray]:
    """The rows of one split ("train", "trial", "test") of SICK's pairs.tsv (columns sentence1,
    sentence2, score, split): sentence1, sentence2 and score (N,) float64."""
    s1, s2, gold = [], [], []
    for n, (a, b, score, part) in tsv_rows(path, ("sentence1", "sentence2", "score", "split")):
        if part == split:
            gold.append(finite_number(path, n, score, "score"))
            s1.append(a)
            s2.append(b)
    if not gold:
        raise DataFileError(path, None, f"no rows of split {split!r}")
    return s1, s2, np.asarray(gold, dtype=np.float64)


def read_labelled_pairs_tsv(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """sentence1, sentence2 and label (N,) int8 of a tab-separated file with a header row; the
    label column may be called `label` or `score` and holds 0 or 1; both must occur."""
    s1, s2, labels = [], [], []
    for n, (a, b, text) in tsv_rows(path, ("sentence1", "sentence2", ("label", "score"))):
        try:
            label = float(text)
        except ValueError:
            label = None
        if label not in (0.0, 1.0):
            raise DataFileError(path, n, f"label {text!r} is not 0 or 1")
        s1.append(a)
        s2.append(b)
        labels.append(int(label))
    positives = sum(labels)
    if positives == 0 or positives == len(labels):
        raise DataFileError(
            path,
            None,
            f"needs both labels: {positives} pairs labelled 1, {len(labels) - positives} "
            "labelled 0 (average precision needs a positive and a negative)",
        )
    return s1, s2, np.asarray(labels, dtype=np.int8)


def load_sts_pairs(path: str | Path, tokenizer: Tokenizer, max_tokens: int) -> StsPairs:
    s1, s2, gold = read_sts_tsv(path)
    cut = lambda seqs: [s[:max_tokens] for s in tokenizer.encode_many(seqs)]  # noqa: E731
    return StsPairs(cut(s1), cut(s2), gold.astype(np.float32))


def epoch_batches(lengths: np.ndarray, batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Index batches covering every item once, length-bucketed, in a (seed, epoch) order."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    out = []
    step = batch * CHUNK_BATCHES
    for start in range(0, len(perm), step):
        chunk = perm[start : start + step]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out.extend(chunk[i : i + batch] for i in range(0, len(chunk), batch))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


class BatchSchedule:
    """Step -> batch of indices, over as many epochs as the steps need."""

    def __init__(self, lengths: np.ndarray, batch: int, seed: int):
        if len(lengths) == 0:
            raise ValueError("no training items")
        self.lengths, self.batch, self.seed = lengths, min(batch, len(lengths)), seed
        self._epoch, self._batches = -1, []
        self.per_epoch = len(epoch_batches(lengths, self.batch, seed, 0))

    def __call__(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = (
                epoch,
                epoch_batches(self.lengths, self.batch, self.seed, epoch),
            )
        return self._batches[i]


def padded(seqs: list[list[int]]):
    b = pad_batch(seqs)
    return b.input_ids, b.attention_mask
