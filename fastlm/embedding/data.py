"""Tokenised training data for the embedding tower, batched deterministically.

A batch is a pure function of (seed, step), so a resumed run sees exactly the batches the killed
run would have seen. Texts are bucketed by length within large random chunks to limit padding.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastlm.tokenizer import Tokenizer, pad_batch

CHUNK_BATCHES = 64  # batches per length-sorted chunk


@dataclass
class StsPairs:
    """Sentence pairs with gold similarity, tokenised."""

    left: list[list[int]]
    right: list[list[int]]
    gold: np.ndarray  # (N,) float32


def read_sts_tsv(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """sentence1, sentence2, score columns of a tab-separated file with a header row."""
    s1, s2, gold = [], [], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"sentence1", "sentence2", "score"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        for n, row in enumerate(reader, start=2):
            try:
                score = float(row["score"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{n}: score {row['score']!r} is not a number") from None
            if row["sentence1"] is None or row["sentence2"] is None:
                raise ValueError(f"{path}:{n}: row has too few columns")
            s1.append(row["sentence1"])
            s2.append(row["sentence2"])
            gold.append(score)
    return s1, s2, np.asarray(gold, dtype=np.float32)


def load_sts_pairs(path: str | Path, tokenizer: Tokenizer, max_tokens: int) -> StsPairs:
    s1, s2, gold = read_sts_tsv(path)
    cut = lambda seqs: [s[:max_tokens] for s in tokenizer.encode_many(seqs)]  # noqa: E731
    return StsPairs(cut(s1), cut(s2), gold)


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
