"""`LanguageModel`: what `fastlm.load` and `fastlm.runtime.load` return, whatever the backend.

It owns everything backends share: input validation, tokenisation, length-sorted batching,
windows, and generation: `stream` (the sampling loop of fastlm/generation.py, one `Step` per
token), which `generate` collects. Backends only run padded numpy
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
- stream / generate: text prompts are preceded by <|endoftext|> (the document separator the
  models were trained with); generation stops at <|endoftext|>, at a stop string, or after
  max_new_tokens.
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
from dataclasses import dataclass, replace

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
from fastlm.generation import (
    Step,
    check_context,
    is_prompt_list,
    prompt_ids,
    resolve_request,
    run,
)
from fastlm.sampling import SamplingParams
from fastlm.tokenizer import EOT_ID, pad_batch
from fastlm.validation import (
    ArgumentTypeError,
    ArgumentValueError,
    check_kind,
    check_optional_int,
    check_positive_int,
    check_text,
    check_texts,
)

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

    embeds_queries = True  # embed(kind="query") is the query side of a search (embed_queries)

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
        kind: str = "document",
    ) -> np.ndarray:
        """Embeddings (n, D) float32 (or (D,) for a single str), in the caller's order.

        Texts longer than `embed_window` tokens are embedded window by window (token-weighted
        mean of the windows, then normalised); `max_length` truncates each text first. A batch
        holds at most `batch_size` windows and `token_budget` padded tokens.

        `kind`: "document" (the default: texts to be found, and both sides of a similarity) or
        "query" (the queries of a search: `rank`, `Index.search` and `fastlm evaluate` embed
        queries so). A query vector mixes the tower and the lexical branch with the branch's
        `query_weight` instead of its document `weight`; a model without a branch embeds both
        kinds alike."""
        single = isinstance(texts, str)
        items = check_texts([texts] if single else texts)
        check_kind(kind)
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
                out = lexical.mix_vectors(out, vectors, kind)
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
        items = check_texts([texts] if single else texts)
        check_positive_int(batch_size, "batch_size")  # -1 would score nothing: PPL 1
        check_positive_int(token_budget, "token_budget")
        seqs = [[EOT_ID] + s for s in self.tokenizer.encode_many(items)]
        limit = self.context_length
        for i, s in enumerate(seqs):
            if limit is not None and len(s) > limit:
                raise ArgumentValueError(
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
        check_text(query, "query")
        docs = check_texts(documents)
        check_optional_int(top_k, "top_k", min=1)  # before embedding anything
        if not docs:
            return []
        q = self.embed(query, kind="query")
        d = self.embed(docs, batch_size=batch_size)
        return _top_hits(d @ q, top_k, docs)

    # ------------------------------------------------------------------ generate
    def stream(
        self, prompt: str | Sequence[int], params: SamplingParams | None = None, **overrides
    ) -> Iterator[Step]:
        """The generation primitive: continue `prompt` (a str, or token ids), one `Step` per
        token (fastlm/generation.py): its id, the text it releases (complete UTF-8, never part
        of a stop string), its logprob (with `logprobs=True`) and, on the last step,
        finish_reason "stop" (end of text
        or a stop string) or "length" (max_new_tokens). A text prompt is preceded by
        <|endoftext|>; the end of text is a last step with token_id EOT_ID.

        `params` (default `SamplingParams()`: greedy, 50 tokens) with `overrides` replacing
        its fields, e.g. `stream("Once", temperature=0.8, seed=1)`. Everything is checked here,
        the prompt against the context included, before the first step runs; the model runs
        only as steps are taken, and closing the iterator frees its decoder."""
        if params is None:
            params = SamplingParams(**overrides)
        elif isinstance(params, SamplingParams):
            params = replace(params, **overrides) if overrides else params
        else:
            raise ArgumentTypeError(
                f"params must be a SamplingParams, got {type(params).__name__}", "params"
            )
        ids = self._request_ids(prompt, params, params.max_new_tokens)
        return run(self.backend.new_decoder, ids, params, self.tokenizer)

    def _request_ids(self, prompt, params: SamplingParams, new_tokens: int) -> list[int]:
        """The ids `prompt` gives the model, checked with `params` against the context."""
        ids, as_text = prompt_ids(prompt, self.tokenizer, self.info.vocab_size)
        if params.stop and not as_text:
            raise ArgumentTypeError(
                "stop strings apply to text prompts; with token ids, use EOT or max_new_tokens"
            )
        check_context(len(ids), new_tokens, self.context_length)
        return ids

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
        """Continue a prompt: greedy by default, sampling when temperature > 0. What `stream()`
        yields, collected:

        - `generate("text", max_new_tokens=50)` -> the generated text (str), prompt excluded.
        - `generate(["text", "other"], ...)` -> a list of str, one per prompt (run in turn).
        - `generate([ids], max_new_tokens=50)` -> the generated ids (list[int]).
        - `generate(start_tokens=[ids], max_length=100)` -> start tokens + generated ids, at most
          max_length in all (the seed API).
        - `stream=True` returns an iterator of text pieces (str prompt) or ids instead.
        temperature 0 (the default, as in Hugging Face's generate) = greedy: the same text on
        every backend. temperature > 0 samples; `seed` makes sampling reproducible.
        """
        if is_prompt_list(prompt_or_ids):
            if stream:
                raise ArgumentTypeError("stream=True takes one prompt, not a list")
            opts = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop)
            return [self.generate(p, max_new_tokens, **opts) for p in prompt_or_ids]
        prompt, new, keep_prompt = resolve_request(
            prompt_or_ids, max_new_tokens, start_tokens, max_length, self.info.vocab_size
        )
        nothing = keep_prompt and new == 0  # the seed API's max_length leaves no token to make
        params = SamplingParams(1 if nothing else new, temperature, top_k, top_p, seed, stop)
        if nothing:  # checked as any request, none made
            self._request_ids(prompt, params, new_tokens=0)
            return iter(()) if stream else list(prompt)
        steps = self.stream(prompt, params)  # checked here; the model runs as it is consumed
        if isinstance(prompt, str):
            pieces = (step.text for step in steps if step.text)
            return pieces if stream else "".join(pieces)
        tokens = (step.token_id for step in steps if step.token_id != EOT_ID)
        if stream:
            return tokens
        return [*prompt, *tokens] if keep_prompt else list(tokens)


# ---------------------------------------------------------------------- helpers
def embed_queries(model, texts, **options) -> np.ndarray:
    """The query vectors of a search: `kind="query"` for a model that says it `embeds_queries`
    (a LanguageModel); any other object with `embed(texts)` (a user's model, a test double)
    embeds queries as it embeds documents."""
    if getattr(model, "embeds_queries", False):
        return model.embed(texts, kind="query", **options)
    return model.embed(texts, **options)


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


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False
