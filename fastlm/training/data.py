"""Text files -> one cached token stream -> (batch, seq_len) training windows.

Policy for bad bytes: text is read as UTF-8; undecodable bytes are replaced by U+FFFD, counted,
and reported with a warning naming the file (never a crash, never silent loss).
"""

from __future__ import annotations

import codecs
import hashlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fastlm.io import atomic_write, sha256_file
from fastlm.tokenizer import EOT_ID, Tokenizer

_CHUNK_CHARS = 1 << 20  # tokenise in ~1 MB pieces split at newlines: bounded memory, parallel


def resolve_text_files(paths: Sequence[str | os.PathLike], role: str = "data") -> list[Path]:
    """Expand files and directories (a directory gives its train*.txt, else all *.txt)."""
    if not paths:
        raise ValueError(f"no {role} paths given")
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("train*.txt")) or sorted(p.glob("*.txt"))
            if not found:
                raise ValueError(f"{role} directory {p} holds no .txt files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{role} path not found: {p}")
    for f in files:
        if f.stat().st_size == 0:
            raise ValueError(f"{role} file {f} is empty")
    return files


def read_text(path: str | os.PathLike) -> tuple[str, int]:
    """Read UTF-8 text; returns (text, number of undecodable byte runs replaced by U+FFFD)."""
    raw = Path(path).read_bytes()
    bad = 0

    def _count(err: UnicodeDecodeError):
        nonlocal bad
        bad += 1
        return "\ufffd", err.end

    name = f"fastlm-count-{id(_count)}"
    codecs.register_error(name, _count)
    text = raw.decode("utf-8", errors=name)
    if bad:
        warnings.warn(
            f"{path}: {bad} invalid UTF-8 byte sequence(s) replaced by U+FFFD", stacklevel=2
        )
    return text, bad


def train_tokenizer(files: Sequence[Path], vocab_size: int) -> Tokenizer:
    """A BPE trained on `files` under this module's bad-bytes policy.

    The tokenizers library reads files as strict UTF-8 and fails on one bad byte; a file with
    invalid bytes is trained on from a copy with them replaced by U+FFFD (warned by read_text).
    """
    with tempfile.TemporaryDirectory(prefix="fastlm-tok-") as tmp:
        clean = []
        for i, f in enumerate(files):
            text, bad = read_text(f)
            if bad:
                f = Path(tmp) / f"{i}.txt"
                f.write_text(text, encoding="utf-8")
            clean.append(f)
            del text
        return Tokenizer.train(clean, vocab_size)


def tokenize_text(tok: Tokenizer, text: str) -> np.ndarray:
    """Token ids (N,) uint16 of `text`, tokenised in newline-aligned chunks."""
    pieces, start = [], 0
    while start < len(text):
        end = min(start + _CHUNK_CHARS, len(text))
        if end < len(text):
            nl = text.rfind("\n", start, end)
            end = nl + 1 if nl > start else end
        pieces.append(text[start:end])
        start = end
    ids = tok.encode_many(pieces)
    return np.concatenate([np.asarray(i, dtype=np.uint16) for i in ids] or [np.zeros(0, np.uint16)])


def token_stream(
    files: Sequence[Path], tok: Tokenizer, cache_dir: str | os.PathLike | None = None
) -> np.ndarray:
    """All files as one uint16 token stream, each file followed by <|endoftext|>.

    Cached as .npy under cache_dir keyed by file contents and tokenizer, so re-runs skip the work.
    """
    assert tok.vocab_size <= np.iinfo(np.uint16).max
    key = hashlib.sha256(tok.to_str().encode())
    for f in files:
        key.update(sha256_file(f).encode())
    cache = Path(cache_dir) / f"tokens-{key.hexdigest()[:24]}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        return np.load(cache, mmap_mode="r")
    parts = []
    for f in files:
        text, _ = read_text(f)
        parts += [tokenize_text(tok, text), np.array([EOT_ID], dtype=np.uint16)]
    stream = np.concatenate(parts)
    if cache is not None:

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, stream)

        atomic_write(cache, write)
    return stream


class WindowSampler:
    """Random (B, seq_len + 1) windows from this rank's shard of a token stream.

    Batch `step` depends only on (seed, rank, step): resuming at step s gives exactly the batches
    an uninterrupted run would have seen, with no sampler state to save.
    """

    def __init__(
        self,
        stream: np.ndarray,
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if seq_len <= 1:
            raise ValueError(f"seq_len must be > 1, got {seq_len}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        shard = len(stream) // world_size
        self.stream = stream[rank * shard : (rank + 1) * shard]
        if len(self.stream) < seq_len + 2:
            raise ValueError(
                f"training data has {len(self.stream)} tokens per rank, fewer than seq_len+2 "
                f"({seq_len + 2}); use more text or a shorter --seq-len"
            )
        self.seq_len, self.batch_size, self.seed, self.rank = seq_len, batch_size, seed, rank

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (B, seq_len) int64."""
        gen = torch.Generator().manual_seed(seed_of(self.seed, self.rank, step))
        high = len(self.stream) - self.seq_len - 1
        starts = torch.randint(0, high, (self.batch_size,), generator=gen).numpy()
        rows = np.stack([self.stream[s : s + self.seq_len + 1] for s in starts]).astype(np.int64)
        rows = torch.from_numpy(rows)
        return rows[:, :-1], rows[:, 1:]


def eval_windows(stream: np.ndarray, seq_len: int, max_tokens: int | None = None):
    """Non-overlapping (inputs, targets) windows covering the stream once, in order.

    Yields tensors (1, n) with n <= seq_len; every token after the first is predicted once.
    """
    end = len(stream) - 1 if max_tokens is None else min(len(stream) - 1, max_tokens)
    for s in range(0, end, seq_len):
        n = min(seq_len, end - s)
        chunk = torch.from_numpy(np.asarray(stream[s : s + n + 1], dtype=np.int64))
        yield chunk[:-1].unsqueeze(0), chunk[1:].unsqueeze(0)


def seed_of(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed that is a function of (seed, rank, step) alone: resume is bit-exact."""
    h = hashlib.blake2b(f"{seed}:{rank}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)
