"""The backend seam, with no torch: what `LanguageModel` needs from whatever runs the model.

A backend takes padded numpy batches and returns numpy results, so `LanguageModel` (validation,
tokenisation, batching, pooling of windows, sampling, streaming) is written once for all of them:
the torch backends (fastlm/engine/) and ONNX Runtime (fastlm/runtime.py) alike.

Padding: every model is causal and batches are right-padded, so pad tokens never influence the
states of real tokens; backends need no key-padding mask, only masked pooling.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from fastlm.char_ngrams import LexicalBranch
from fastlm.tokenizer import Tokenizer

SCORE_CHUNK = 1024  # time steps per scoring chunk: bounds logits (and LSTM activation) memory


@dataclass(frozen=True)
class ModelInfo:
    """What callers may know about a loaded model, whatever runs it."""

    architecture: str
    vocab_size: int
    embedding_dim: int
    context_length: int | None  # longest token sequence it takes; None: unbounded (recurrent)
    embed_window: int  # tokens per embedding window: longer texts are embedded window by window
    # What the embeddings are a function of (weights + tokenizer, `embedding_digest`); None when
    # unknown (a backend built by hand). An Index records it and refuses another model's.
    embedding_digest: str | None = None

    def with_identity(self, weights_sha256: str, tokenizer: Tokenizer) -> ModelInfo:
        """A copy whose `embedding_digest` names `weights_sha256` and `tokenizer`."""
        return replace(self, embedding_digest=embedding_digest(weights_sha256, tokenizer))

    @classmethod
    def from_facts(cls, facts: dict) -> ModelInfo:
        """From `Architecture.facts` (an export manifest's "model" entry)."""
        return cls(
            architecture=facts["architecture"],
            vocab_size=facts["vocab_size"],
            embedding_dim=facts["embed_dim"],
            context_length=facts["max_len"],
            embed_window=facts["embed_window"],
        )


def tokenizer_digest(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's JSON (what `Tokenizer.save` writes)."""
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()


def embedding_digest(weights_sha256: str, tokenizer: Tokenizer) -> str:
    """sha256 naming what a model's embeddings are computed from: the weights digest (LM +
    embedding tower, `Checkpoint.weights_digest`, an export's source.weights_sha256) and the
    tokenizer. Equal on every backend that runs the same checkpoint."""
    text = f"weights={weights_sha256}\ntokenizer={tokenizer_digest(tokenizer)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Decoder(Protocol):
    """Incremental decoding of one sequence: logits (V,) float32 numpy after each call. A
    decoder whose `verifies` is true also has `verify(ids)` (logits after each id, (T, V)),
    `rewind(length)` and `room()`, and greedy generation checks guessed tokens with them
    (fastlm/speculative.py)."""

    def prefill(self, ids: list[int]) -> np.ndarray: ...

    def step(self, token: int) -> np.ndarray: ...


class Backend:
    """Runs one model. Subclasses set `info` and `tokenizer` and override the methods below."""

    name = "base"
    info: ModelInfo
    tokenizer: Tokenizer
    # Score cells (batch x T^2) per scoring batch, for backends whose graphs materialise
    # attention scores; None: no such bound.
    max_attention_cells: int | None = None
    # The embedding's lexical branch, mixed into `embed()` by LanguageModel (None: the tower's
    # vector alone). numpy only, the same object on every backend of one checkpoint.
    lexical: LexicalBranch | None = None

    def embed_batch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, T) int64 ids + mask -> (B, D) float32 embedding-tower output, not normalised."""
        raise NotImplementedError

    def nll_batch(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, T) -> (B,) float64 summed NLL (nats) of tokens 1..len-1 given their prefixes."""
        raise NotImplementedError

    def new_decoder(self, max_seq: int) -> Decoder:
        """A decoder able to hold `max_seq` tokens (prompt + generated)."""
        raise NotImplementedError

    # set by `fastlm.load(..., backend="auto")`: {"chosen": name, "why": ...}
    auto_choice: dict | None = None

    def describe(self) -> dict:
        """What runs the model (`details()`), and why "auto" chose it when it did."""
        out = self.details()
        if self.auto_choice is not None:
            out["auto"] = dict(self.auto_choice)
        return out

    def details(self) -> dict:
        return {"backend": self.name}


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """logits (B, T, V) float32, targets (B, T) -> (B, T) float64 NLL in nats."""
    shift = logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(logits - shift).sum(axis=-1)) + shift[..., 0]  # (B, T)
    target = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return (lse - target).astype(np.float64)
