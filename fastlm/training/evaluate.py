"""Token perplexity and bits per byte of a model on a text stream."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fastlm.models import architecture_of
from fastlm.tokenizer import EOT_ID, Tokenizer
from fastlm.training.data import eval_windows, read_text, tokenize_text
from fastlm.validation import check_positive_int


@dataclass
class EvalResult:
    nll: float  # total negative log-likelihood, nats
    tokens: int  # tokens scored
    bytes: int  # UTF-8 bytes those tokens cover

    @property
    def loss(self) -> float:
        return self.nll / max(self.tokens, 1)

    @property
    def ppl(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / max(self.bytes, 1)

    def as_dict(self) -> dict:
        return {
            "loss": self.loss,
            "ppl": self.ppl,
            "bits_per_byte": self.bits_per_byte,
            "tokens": self.tokens,
            "bytes": self.bytes,
        }


@torch.no_grad()
def stream_nll(
    model, stream: np.ndarray, seq_len: int, max_tokens: int | None = None, device="cpu"
) -> tuple[float, int]:
    """Sum of NLL (nats) over non-overlapping windows; the LSTM carries its state across them.

    stream (N,) should start with <|endoftext|> so the first real token is predicted too.
    """
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    architecture = architecture_of(model)
    for inputs, targets in eval_windows(stream, seq_len, max_tokens):
        inputs, targets = inputs.to(device), targets.to(device)
        states, new_state = model.hidden_states(inputs, state)
        state = architecture.window_state(new_state)
        logits = model.fc(states)
        total += F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), reduction="sum"
        ).item()
        count += targets.numel()
    model.train(was_training)
    return total, count


def prepare_eval_stream(tok: Tokenizer, path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """([EOT] + tokens of the file, UTF-8 byte count of the text scored)."""
    text, _ = read_text(path)
    ids = tokenize_text(tok, text)
    stream = np.concatenate([np.array([EOT_ID], dtype=np.uint16), ids])
    return stream, len(text.encode("utf-8"))


def evaluate_file(model, tok: Tokenizer, path, seq_len: int = 256, device="cpu") -> EvalResult:
    """Score a whole text file: every token predicted once; bits per byte over all its bytes.

    seq_len: window length, an int in [1, the model's position table] (a negative or zero
    window would score nothing and report perplexity 1).
    """
    check_positive_int(seq_len, "seq_len", max=model.config.max_len)
    stream, n_bytes = prepare_eval_stream(tok, path)
    if len(stream) < 2:
        raise ValueError(f"{path} holds no text to score")
    nll, n = stream_nll(model, stream, seq_len, device=device)
    return EvalResult(nll, n, n_bytes)
