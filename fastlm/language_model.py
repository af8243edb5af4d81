"""`LanguageModel`: what `fastlm.load` and `fastlm.runtime.load` return, whatever the backend.

It owns everything backends share: input validation, tokenisation, length-sorted batching,
windows, the sampling loop (fastlm/sampling.py) and streaming. Backends only run padded numpy
batches (fastlm/backend.py). No torch: the torch-free runtime is this same class over ONNX
Runtime.

Documented behaviour for edge cases:
- embed: [] -> (0, D) array; "" (no tokens) -> zero vector (stays zero when normalised);
  whitespace-only text is ordinary text (it has tokens). A text of any length embeds in bounded
  memory: longer than the embedding window (`embed_window`: the Transformer's 256 trained
  positions, 1,024 for the LSTM) it is embedded window by window and the windows pooled
  (fastlm/batching.py); `max_length=` truncates first. A progress bar is drawn when asked
  (`show_progress_bar=True`), or by default for >= 1,000 texts when stderr is a terminal.
- score: "" -> log_likelihood 0, perplexity 1, bits_per_byte 0, tokens 0. Every token is scored,
  the first one given <|endoftext|> as context. Text longer than the Transformer's context is a
  ValueError (truncating would silently change the score); the LSTM scores any length, in
  chunks that carry its state.
- batches are bounded by `token_budget` padded tokens (and `batch_size` texts or windows).
- generate: text prompts are preceded by <|endoftext|> (the document separator the models were
  trained with); generation stops at <|endoftext|>, at a stop string, or after max_new_tokens.
  A prompt is fed to the model in chunks that carry its state (the decoders' `prefill_chunk`),
  so the LSTM takes a prompt of any length in bounded memory; the Transformer refuses a prompt
  + max_new_tokens over its context (ValueError) before running anything.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from fastlm.backend import Backend, ModelInfo
from fastlm.batching import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_TOKEN_BUDGET,
    embed_windowed,
    l2_normalize,
    plan_batches,
    truncate,
)
from fastlm.sampling import check_sampling, make_rng, sample_next
from fastlm.tokenizer import EOT_ID, _check_text, _check_texts, pad_batch
from fastlm.validation import check_int, check_optional_int, check_positive_int, check_seed

# progress bar on by default only from this many texts, and only when stderr is a terminal:
# captured logs (servers, CI, notebooks' redirected stderr) get no bar unless one is asked for
PROGRESS_MIN_TEXTS = 1000
# the lexical branch runs in a thread beside the tower from this many texts (below, a thread
# costs more than it hides)
OVERLAP_MIN_TEXTS = 32


@dataclass(frozen=True)
class ScoreResult:
    log_likelihood: float  # natural log, summed over the text's tokens
    perplexity: float  # token perplexity
    bits_per_byte: float  # -log2 likelihood / UTF-8 bytes
    tokens: int
    bytes: int


class LanguageModel:
    """A trained fastlm model behind one backend: embed, generate, score, rank."""

    def __init__(self, name: str, backend: Backend):
        self.name = name
        self.backend = backend
        self.info: ModelInfo = backend.info
        self.tokenizer = backend.tokenizer
        # the checkpoint's config dataclass on torch backends; None on the torch-free runtime
        self.config = getattr(backend, "config", None)

    def __repr__(self) -> str:
        return (
            f"LanguageModel({self.name!r}, architecture={self.architecture!r}, "
            f"backend={self.backend.name!r})"
        )

    @property
    def architecture(self) -> str:
        return self.info.architecture

    @property
    def embedding_dim(self) -> int:
        return self.info.embedding_dim

    @property
    def context_length(self) -> int | None:
        """Longest token sequence the model takes (None: unbounded, the LSTM)."""
        return self.info.context_length

    @property
    def embedding_digest(self) -> str | None:
        """sha256 of what the embeddings are computed from (weights + tokenizer), equal on every
        backend of one checkpoint; an Index records it and refuses another model's."""
        return self.info.embedding_digest

    @property
    def embed_window(self) -> int:
        """Tokens per embedding window: longer texts are embedded window by window."""
        return self.info.embed_window

    # ------------------------------------------------------------------ embed
    def embed(
        self,
        texts: str | Sequence[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        normalize: bool = True,
        max_length: int | None = None,
        show_progress_bar: bool | None = None,
        convert_to_tensor: bool = False,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
    ) -> np.ndarray:
        """Embeddings (n, D) float32 (or (D,) for a single str), in the caller's order.

        Texts longer than `embed_window` tokens are embedded window by window (token-weighted
        mean of the windows, then normalised); `max_length` truncates each text first. A batch
        holds at most `batch_size` windows and `token_budget` padded tokens."""
        single = isinstance(texts, str)
        items = _check_texts([texts] if single else texts)
        check_positive_int(batch_size, "batch_size")
        check_positive_int(token_budget, "token_budget")
        check_optional_int(max_length, "max_length", min=1)
        seqs = truncate(self.tokenizer.encode_many(items), max_length)
        if show_progress_bar is None:
            show_progress_bar = len(seqs) >= PROGRESS_MIN_TEXTS and _stderr_is_terminal()

        def bar(batches):
            # no tqdm object at all when off: creating one takes tqdm's process-shared lock
            return tqdm(batches, desc="embed") if show_progress_bar else batches

        lexical = self.backend.lexical
        # the branch reads the text the tower read: cut where max_length cut the tokens
        cut = (
            [self.tokenizer.decode(s) if max_length is not None else t for s, t in zip(seqs, items)]
            if lexical is not None
            else []
        )
        with ThreadPoolExecutor(1) if len(cut) >= OVERLAP_MIN_TEXTS else nullcontext() as pool:
            # numpy and the backends release the GIL: the branch runs beside the tower
            branch = pool.submit(lexical.vectors, cut) if pool is not None else None
            out = embed_windowed(
                seqs,
                self.embedding_dim,
                self.backend.embed_batch,
                self.embed_window,
                batch_size,
                token_budget,
                bar,
            )
            if lexical is not None:
                vectors = branch.result() if branch is not None else lexical.vectors(cut)
                out = lexical.mix_vectors(out, vectors)
        if normalize:
            out = l2_normalize(out)
        result = out[0] if single else out
        if convert_to_tensor:  # a torch.Tensor, as sentence-transformers returns
            import torch

            return torch.from_numpy(result)
        return result

    # ------------------------------------------------------------------ score
    def score(
        self,
        texts: str | Sequence[str],
        batch_size: int = 32,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
    ):
        """Log-likelihood, perplexity and bits per byte of each text (a list, or one result).

        A batch holds at most `batch_size` texts and `token_budget` padded tokens (and, on
        backends that materialise attention scores, a bounded number of score cells)."""
        single = isinstance(texts, str)
        items = _check_texts([texts] if single else texts)
        check_positive_int(batch_size, "batch_size")  # -1 would score nothing: PPL 1
        check_positive_int(token_budget, "token_budget")
        seqs = [[EOT_ID] + s for s in self.tokenizer.encode_many(items)]
        limit = self.context_length
        for i, s in enumerate(seqs):
            if limit is not None and len(s) > limit:
                raise ValueError(
                    f"texts[{i}] has {len(s) - 1} tokens; the model scores at most {limit - 1}"
                )
        nll = np.zeros(len(seqs))
        # scored lengths: a text of one token (just <|endoftext|>) has nothing to score
        lengths = [len(s) if len(s) > 1 else 0 for s in seqs]
        cells = self.backend.max_attention_cells
        for idx in plan_batches(lengths, batch_size, token_budget, cells):
            batch = pad_batch([seqs[i] for i in idx])
            nll[idx] = self.backend.nll_batch(batch.input_ids, batch.attention_mask)
        results = [
            _score_result(n, len(s) - 1, len(t.encode("utf-8")))
            for n, s, t in zip(nll, seqs, items)
        ]
        return results[0] if single else results

    # ------------------------------------------------------------------ rank
    def rank(
        self, query: str, documents: Sequence[str], top_k: int | None = None, batch_size: int = 64
    ) -> list[dict]:
        """Documents by cosine similarity to the query: [{"corpus_id", "score", "text"}], best
        first (top_k of them)."""
        _check_text(query, "query")
        docs = _check_texts(documents)
        check_optional_int(top_k, "top_k", min=1)  # before embedding anything
        if not docs:
            return []
        q = self.embed(query)
        d = self.embed(docs, batch_size=batch_size)
        return _top_hits(d @ q, top_k, docs)

    # ------------------------------------------------------------------ generate
    def generate(
        self,
        prompt_or_ids: str | Sequence[str] | Sequence[int] | None = None,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stream: bool = False,
        *,
        start_tokens: Sequence[int] | None = None,
        max_length: int | None = None,
    ):
        """Continue a prompt: greedy by default, sampling when temperature > 0.

        - `generate("text", max_new_tokens=50)` -> the generated text (str), prompt excluded.
        - `generate(["text", "other"], ...)` -> a list of str, one per prompt (run in turn).
        - `generate([ids], max_new_tokens=50)` -> the generated ids (list[int]).
        - `generate(start_tokens=[ids], max_length=100)` -> start tokens + generated ids, at most
          max_length in all (the seed API).
        - `stream=True` returns an iterator of text pieces (str prompt) or ids instead.
        temperature 0 (the default, as in Hugging Face's generate) = greedy: the same text on
        every backend. temperature > 0 samples; `seed` makes sampling reproducible.
        """
        if _is_prompt_list(prompt_or_ids):
            if stream:
                raise TypeError("stream=True takes one prompt, not a list")
            opts = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop)
            return [self.generate(p, max_new_tokens, **opts) for p in prompt_or_ids]
        ids, as_text, new, keep_prompt = self._generation_request(
            prompt_or_ids, max_new_tokens, start_tokens, max_length
        )
        check_sampling(temperature, top_k, top_p)
        check_seed(seed)
        stops = _check_stop(stop)
        if stops and not as_text:
            raise TypeError(
                "stop strings apply to text prompts; with token ids, use EOT or max_new_tokens"
            )
        tokens = self._sample(ids, new, temperature, top_k, top_p, seed)
        if as_text:
            pieces = self._text_pieces(tokens, stops)
            return pieces if stream else "".join(pieces)
        if stream:
            return tokens
        out = list(tokens)
        return (ids + out) if keep_prompt else out

    def _generation_request(self, prompt, max_new_tokens, start_tokens, max_length):
        if start_tokens is not None:
            if prompt is not None:
                raise TypeError("give either prompt_or_ids or start_tokens, not both")
            ids = _check_ids(start_tokens, self.info.vocab_size)
            if max_length is None:
                max_length = len(ids) + (
                    check_optional_int(max_new_tokens, "max_new_tokens") or 100
                )
            if check_int(max_length, "max_length") < 1:
                raise ValueError(f"max_length must be a positive int, got {max_length!r}")
            return ids, False, max(0, max_length - len(ids)), True
        if prompt is None:
            raise TypeError("generate() needs a prompt (str or token ids) or start_tokens")
        if max_new_tokens is None:
            max_new_tokens = 50
        check_int(max_new_tokens, "max_new_tokens")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        if isinstance(prompt, str):
            return [EOT_ID] + self.tokenizer.encode(prompt), True, max_new_tokens, False
        return _check_ids(prompt, self.info.vocab_size), False, max_new_tokens, False

    def _sample(self, ids: list[int], new: int, temperature, top_k, top_p, seed) -> Iterator[int]:
        limit = self.context_length
        if limit is not None and len(ids) + new > limit:
            raise ValueError(
                f"prompt ({len(ids)} tokens) + {new} new tokens exceeds the context ({limit})"
            )
        decoder = self.backend.new_decoder(len(ids) + new)  # checks run before the first yield
        rng = make_rng(seed)

        def run() -> Iterator[int]:
            if new == 0:
                return
            logits = decoder.prefill(ids)
            for i in range(new):
                token = sample_next(logits, temperature, top_k, top_p, rng)
                if token == EOT_ID:
                    return
                yield token
                if i + 1 < new:
                    logits = decoder.step(token)

        return run()

    def _text_pieces(self, tokens: Iterator[int], stops: list[str]) -> Iterator[str]:
        """Decode incrementally: emit text once it is complete UTF-8, cut at a stop string."""
        produced, emitted = [], ""
        hold = max((len(s) for s in stops), default=1) - 1
        for token in tokens:
            produced.append(token)
            text = self.tokenizer.decode(produced)
            cut = _first_stop(text, stops)
            if cut is not None:
                if cut > len(emitted):
                    yield text[len(emitted) : cut]
                return
            ready = len(text) - hold if not text.endswith("\ufffd") else len(text) - hold - 1
            if ready > len(emitted):
                yield text[len(emitted) : ready]
                emitted = text[:ready]
        text = self.tokenizer.decode(produced)
        if len(text) > len(emitted):
            yield text[len(emitted) :]


# ---------------------------------------------------------------------- helpers
def _score_result(nll: float, tokens: int, n_bytes: int) -> ScoreResult:
    if tokens == 0:
        return ScoreResult(0.0, 1.0, 0.0, 0, n_bytes)
    ppl = math.exp(min(nll / tokens, 700.0))
    return ScoreResult(
        -float(nll), ppl, float(nll) / math.log(2) / max(n_bytes, 1), tokens, n_bytes
    )


def _top_hits(scores: np.ndarray, top_k: int | None, docs: Sequence[str]) -> list[dict]:
    check_optional_int(top_k, "top_k", min=1)
    order = np.argsort(-scores, kind="stable")[: top_k or len(scores)]
    return [{"corpus_id": int(i), "score": float(scores[i]), "text": docs[i]} for i in order]


def _check_ids(ids, vocab_size: int) -> list[int]:
    if hasattr(ids, "reshape") and hasattr(ids, "tolist"):  # a numpy array or torch tensor
        ids = ids.reshape(-1).tolist()
    if not isinstance(ids, Sequence) or isinstance(ids, str | bytes):
        raise TypeError(f"token ids must be a list of int, got {type(ids).__name__}")
    out = []
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, int | np.integer):
            raise TypeError(f"token ids[{i}] must be int, got {type(t).__name__}")
        if not 0 <= t < vocab_size:
            raise ValueError(f"token ids[{i}] = {t} is outside the vocabulary [0, {vocab_size})")
        out.append(int(t))
    if not out:
        raise ValueError("token ids are empty: give at least one token")
    return out


def _is_prompt_list(value) -> bool:
    """A non-empty list/tuple of str (a list of ints is token ids)."""
    return (
        isinstance(value, list | tuple)
        and len(value) > 0
        and all(isinstance(p, str) for p in value)
    )


def _check_stop(stop) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    for i, s in enumerate(stops):
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop[{i}] must be a non-empty str")
    return stops


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False
