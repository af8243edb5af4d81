"""Byte-level BPE tokenizer built on the `tokenizers` library.

Design choices:
- Special tokens (`<pad>` = 0, `<|endoftext|>` = 1) live in the BPE vocabulary but are *not*
  registered as "added tokens". So the text "<|endoftext|>" typed by a user is tokenised as plain
  bytes and can never inject a control token; only code places special ids. This also keeps
  `decode(encode(s)) == s` true for every Python string.
- No normaliser, no prefix space, byte-level alphabet: every UTF-8 string round-trips.
- Numpy in, numpy out: this module does not import torch, so the ONNX runtime can use it alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from fastlm.io import atomic_write_text
from fastlm.validation import check_text, check_texts

PAD_TOKEN = "<pad>"
EOT_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (PAD_TOKEN, EOT_TOKEN)
PAD_ID = 0
EOT_ID = 1


@dataclass(frozen=True)
class BatchEncoding:
    """Right-padded batch. input_ids: (B, L) int64; attention_mask: (B, L) int64 (1 = real).

    L is the longest text in the batch (after truncation), never a global maximum.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """(B,) int64 number of real tokens per row."""
        return self.attention_mask.sum(axis=1)


class Tokenizer:
    """Byte-level BPE tokenizer with a pad (id 0) and an end-of-text (id 1) token."""

    def __init__(self, hf_tokenizer: _HFTokenizer):
        self._tok = hf_tokenizer
        for i, name in enumerate(SPECIAL_TOKENS):
            if hf_tokenizer.token_to_id(name) != i:
                raise ValueError(f"tokenizer must map {name!r} to id {i}")

    # ------------------------------------------------------------------ building
    @classmethod
    def train(cls, files: Sequence[str | os.PathLike], vocab_size: int = 2000) -> Tokenizer:
        """Train a byte-level BPE of `vocab_size` tokens (special tokens included) on text files."""
        min_size = len(SPECIAL_TOKENS) + 256  # specials + the full byte alphabet
        if vocab_size < min_size:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: need at least {min_size} "
                f"({len(SPECIAL_TOKENS)} special tokens + 256 byte tokens)"
            )
        paths = [str(f) for f in files]
        if not paths:
            raise ValueError("no files to train the tokenizer on")
        for p in paths:
            if not Path(p).is_file():
                raise FileNotFoundError(f"tokenizer training file not found: {p}")
        tok = _HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train(paths, trainer)
        return cls(_strip_added_tokens(tok))

    @classmethod
    def from_str(cls, json_text: str) -> Tokenizer:
        return cls(_strip_added_tokens(_HFTokenizer.from_str(json_text)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a tokenizer saved with `save` (one JSON file)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            return cls.from_str(path.read_text(encoding="utf-8"))
        except Exception as err:  # tokenizers raises a bare Exception on bad JSON
            if isinstance(err, ValueError) and "must map" in str(err):
                raise
            raise ValueError(f"{path} is not a valid tokenizer file: {err}") from err

    def to_str(self) -> str:
        return self._tok.to_str()

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as one JSON file, atomically."""

        atomic_write_text(path, self.to_str())

    # ------------------------------------------------------------------ use
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    pad_id = PAD_ID
    eot_id = EOT_ID

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens added)."""
        return self._tok.encode(check_text(text), add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`. Special ids are dropped (or rendered as their names)."""
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i >= len(SPECIAL_TOKENS)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return self._tok.decode(ids, skip_special_tokens=False)

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """Unpadded ids for many texts (parallel in Rust)."""
        texts = check_texts(texts)
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def encode_batch(self, texts: Sequence[str], max_length: int | None = None) -> BatchEncoding:
        """Encode and right-pad to the longest text; texts longer than `max_length` are cut."""
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        return pad_batch(self.encode_many(texts), max_length)


def pad_batch(seqs: Sequence[Sequence[int]], max_length: int | None = None) -> BatchEncoding:
    """Right-pad token lists with PAD_ID to the longest one (capped at max_length)."""
    if max_length is not None:
        seqs = [s[:max_length] for s in seqs]
    width = max((len(s) for s in seqs), default=0)
    ids = np.full((len(seqs), width), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = s
        mask[row, : len(s)] = 1
    return BatchEncoding(ids, mask)


def _strip_added_tokens(tok: _HFTokenizer) -> _HFTokenizer:
    """Keep special tokens in the BPE vocab but stop the tokenizer matching them in text."""
    data = json.loads(tok.to_str())
    if not data.get("added_tokens"):
        return tok
    data["added_tokens"] = []
    return _HFTokenizer.from_str(json.dumps(data))
