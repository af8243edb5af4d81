"""The HTTP app: OpenAI-style embeddings and completions over one loaded `LanguageModel`.

    POST /v1/embeddings    {"model", "input": str | [str], "encoding_format": "float"|"base64"}
    POST /v1/completions   {"model", "prompt": str | [str], "max_tokens", "temperature", "top_p",
                            "stop", "seed", "stream", "stream_options": {"include_usage"}}
    POST /v1/search        {"query": str | [str], "top_k": 10, "mode": "dense"|"lexical"|"hybrid"}
                           (with `fastlm serve MODEL --index DIR`; a 404 without an index)
    GET  /v1/models, GET /v1/models/{id}, GET /health

Embedding requests go through the dynamic batcher (serve/batcher.py). Searches run one at a
time on their own thread (query embedding, the index's matrix product), off the event loop.
Completions run one at a time per token in a single worker thread: decoding is batch 1, so
concurrent streams interleave token by token instead of competing for the cores. Generation
is greedy unless a temperature > 0 is given (fastlm's default everywhere; OpenAI's own default
is 1).

A client that leaves stops its work: a streamed or a whole completion stops generating at the
next piece, and a body that stops arriving ends the request. Either is one INFO log line: a
client hanging up is not a server error.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from fastlm.serve.batcher import EmbedBatcher
from fastlm.serve.requests import (
    ApiError,
    ServeConfig,
    check_float,
    check_int,
    check_model,
    check_search,
    check_stop,
    check_stream_options,
    check_texts,
    check_unsupported,
    parse_body,
)
from fastlm.tokenizer import EOT_ID

log = logging.getLogger("fastlm.serve")
MIN_TEMPERATURE = 1e-6  # below this, sampling is greedy in all but name
CLIENT_CLOSED = 499  # nginx's "client closed request": the status nobody receives


class ClientGone(ClientDisconnect):
    """The client disconnected; the message says when (for the log line)."""


def create_app(model, name: str, config: ServeConfig | None = None, index=None) -> FastAPI:
    """A FastAPI app serving `model` (a fastlm `LanguageModel`) under the model id `name`, and
    `index` (a `fastlm.Index` loaded with `model`, or None) at /v1/search."""
    config = config or ServeConfig()
    state = _State(model, name, config, index)
    app = FastAPI(title="fastlm", lifespan=state.lifespan)
    app.state.fastlm = state

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, err: ApiError):
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(ClientDisconnect)  # not a server error: one INFO line, no traceback
    async def client_gone(request: Request, err: ClientDisconnect):
        when = str(err) or "before its request body arrived"
        log.info("client disconnected %s: %s %s", when, request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(Exception)  # a bug, not bad input: still JSON, and logged
    async def server_error(_request: Request, err: Exception):
        log.error("internal error: %r", err, exc_info=err)
        return JSONResponse(ApiError(500, "internal server error").body(), status_code=500)

    @app.exception_handler(StarletteHTTPException)  # 404 / 405 in the same JSON shape
    async def http_error(_request: Request, err: StarletteHTTPException):
        return JSONResponse(ApiError(err.status_code, str(err.detail)).body(), err.status_code)

    @app.get("/health")
    async def health():
        return state.health()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [state.model_entry()]}

    @app.get("/v1/models/{model_id:path}")  # ids may hold a "/" (a checkpoint path)
    async def one_model(model_id: str):
        check_model({"model": model_id}, name)
        return state.model_entry()

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        return await state.embeddings(parse_body(await _read_body(request, config), config))

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = parse_body(await _read_body(request, config), config)
        return await state.completions(body, request)

    @app.post("/v1/search")
    async def search(request: Request):
        if state.index is None:  # before the body is read: no body makes this one succeed
            raise ApiError(
                404, "this server has no index; start it with: fastlm serve MODEL --index DIR"
            )
        return await state.search(parse_body(await _read_body(request, config), config))

    return app


async def _read_body(request: Request, config: ServeConfig) -> bytes:
    """The request body, within the size limit and `timeout_read` seconds. A refused body is
    left unread, so its connection cannot carry another request: the answer closes it."""
    close = {"connection": "close"}
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit():  # else the server has refused it already
        # a 5,000-digit length is too long to convert (ValueError), and to send
        if len(declared) > 20 or int(declared) > config.max_body_bytes:
            msg = f"request body is over {config.max_body_bytes} bytes"
            raise ApiError(413, msg, headers=close)
    try:
        return await asyncio.wait_for(request.body(), config.timeout_read)
    except asyncio.TimeoutError:
        msg = f"request body did not arrive within {config.timeout_read:g} s"
        raise ApiError(408, msg, headers=close) from None


class _State:
    """What the endpoints share: the model, the batcher, the generation thread, counters."""

    def __init__(self, model, name: str, config: ServeConfig, index=None):
        self.model, self.name, self.config, self.index = model, name, config, index
        self.tokenizer = model.tokenizer
        self.started = int(time.time())
        self.generator = ThreadPoolExecutor(1, thread_name_prefix="fastlm-generate")
        # one search at a time: each is already batched (one embed call, one matrix product)
        self.searcher = ThreadPoolExecutor(1, thread_name_prefix="fastlm-search")
        self.batcher: EmbedBatcher | None = None
        self.active_streams = 0
        self.requests = 0

    async def lifespan(self, _app):
        self.batcher = EmbedBatcher(
            lambda texts: self.model.embed(texts, batch_size=self.config.embed_batch_size),
            self.config.batch_window_ms / 1000,
            self.config.max_batch_tokens,
        )
        self.batcher.start()
        yield
        # uvicorn has stopped accepting connections and finished in-flight requests (SIGTERM)
        await self.batcher.stop()
        self.generator.shutdown(wait=True)
        self.searcher.shutdown(wait=True)

    def health(self) -> dict:
        b = self.batcher
        return {
            "status": "ok",
            "model": self.name,
            "requests": self.requests,
            "queued_embedding_jobs": b.queued if b else 0,
            "embedding_batches": b.batches if b else 0,
            "embedded_texts": b.texts if b else 0,
            "embedding_busy_seconds": round(b.busy_seconds, 3) if b else 0.0,
            "active_streams": self.active_streams,
            "index_documents": len(self.index) if self.index is not None else None,
        }

    def model_entry(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.started, "owned_by": "fastlm"}

    # ------------------------------------------------------------------ embeddings
    async def embeddings(self, body: dict) -> dict:
        self.requests += 1
        check_model(body, self.name)
        texts = check_texts(body.get("input"), "input", self.config)
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise ApiError(400, "'encoding_format' must be 'float' or 'base64'", "encoding_format")
        dims = body.get("dimensions")
        if dims is not None and dims != self.model.embedding_dim:
            raise ApiError(
                400, f"'dimensions' must be {self.model.embedding_dim} for this model", "dimensions"
            )
        # off the event loop: 256 texts of 20k characters take a while to tokenise
        encoded = await asyncio.to_thread(self.tokenizer.encode_many, texts)
        tokens = sum(len(ids) for ids in encoded)
        vecs = await self.batcher.embed(texts, max(tokens, 1))
        data = [
            {"object": "embedding", "index": i, "embedding": _encode_vector(v, fmt)}
            for i, v in enumerate(vecs)
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": self.name, "usage": usage}

    # ------------------------------------------------------------------ search
    async def search(self, body: dict) -> dict:
        """One query -> "data": [hit, ...]; a list of queries -> "data": [[hit, ...], ...],
        in the order given. A hit is {"id", "score", "text", "metadata"}, best first."""
        self.requests += 1
        if body.get("model") is not None:
            check_model(body, self.name)
        queries, top_k, mode = check_search(body, self.config)
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(
                self.searcher, lambda: self.index.search(queries, top_k=top_k, mode=mode)
            )
        except ValueError as err:  # e.g. a lexical search of an index built --no-lexical
            raise ApiError(400, str(err), "mode" if mode is not None else None) from None
        data = [[_hit(h) for h in hits] for hits in results]
        single = isinstance(body["query"], str)
        return {"object": "list", "data": data[0] if single else data, "model": self.name}

    # ------------------------------------------------------------------ completions
    def _sampling(self, body: dict) -> dict:
        check_unsupported(body)
        opts = {
            "max_new_tokens": check_int(body, "max_tokens", 16, 1, self.config.max_tokens),
            "temperature": check_float(body, "temperature", 0.0, 0.0, 2.0),
            "top_p": check_float(body, "top_p", None, 0.0, 1.0),
            "seed": check_int(body, "seed", None, 0, 2**63 - 1),
        }
        if opts["top_p"] == 0:
            raise ApiError(400, "'top_p' must be > 0", "top_p")
        # API policy, not a numerical limit (the sampler takes any temperature > 0): this cold,
        # sampling is greedy in all but name, so the client is told to ask for 0 (README).
        if 0 < opts["temperature"] < MIN_TEMPERATURE:
            raise ApiError(
                400, f"'temperature' must be 0 (greedy) or >= {MIN_TEMPERATURE}", "temperature"
            )
        return opts

    async def completions(self, body: dict, request: Request):
        self.requests += 1
        check_model(body, self.name)
        prompts = check_texts(body.get("prompt"), "prompt", self.config)
        opts, stops = self._sampling(body), check_stop(body)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, "'stream' must be true or false", "stream")
        include_usage = check_stream_options(body, stream)
        encoded = await asyncio.to_thread(
            lambda: [self._check_prompt(p, opts["max_new_tokens"]) for p in prompts]
        )
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if stream:
            if len(encoded) != 1:
                raise ApiError(400, "streaming takes one prompt", "prompt")
            run = self._start(encoded[0], opts, stops)
            events = self._sse(run, cid, created, request, include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        choices, runs = [], []
        for i, ids in enumerate(encoded):
            run = self._start(ids, opts, stops)  # one decoder (KV cache) alive at a time
            text = await self._collect(run, request)
            choices.append({"text": text, "index": i, "logprobs": None, "finish_reason": run.why})
            runs.append(run)
        return {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": self.name,
            "choices": choices,
            "usage": _usage(runs),
        }

    def _check_prompt(self, prompt: str, max_new_tokens: int) -> list[int]:
        ids = self.tokenizer.encode(prompt)
        limit = self.model.context_length
        if limit is not None and len(ids) + 1 + max_new_tokens > limit:
            raise ApiError(
                400,
                f"prompt ({len(ids)} tokens) + max_tokens ({max_new_tokens}) exceeds the "
                f"context of {limit} tokens",
                "max_tokens",
            )
        return ids

    def _start(self, ids: list[int], opts: dict, stops: list[str]) -> _Run:
        try:
            tokens = self.model.generate([EOT_ID, *ids], stream=True, **opts)
        except (ValueError, TypeError) as err:
            raise ApiError(400, str(err)) from None
        count = _Counted(tokens)
        # the engine's incremental decoder: complete UTF-8 only, cut at a stop string
        pieces = self.model._text_pieces(count, stops)
        return _Run(pieces, count, len(ids), opts["max_new_tokens"])

    async def _collect(self, run: _Run, request: Request) -> str:
        """The whole completion, one piece per executor call, so that concurrent requests
        (streamed or not) take turns on the generation thread instead of waiting in line.
        Raises ClientGone, the generation closed, if the client leaves meanwhile."""
        loop, pieces = asyncio.get_running_loop(), []
        try:
            while (
                piece := await loop.run_in_executor(self.generator, next, run.pieces, None)
            ) is not None:
                pieces.append(piece)
                if await request.is_disconnected():
                    raise ClientGone("during generation: generation stopped")
        finally:
            self._close(run)
        return "".join(pieces)

    def _close(self, run: _Run) -> None:
        """Free a generation (its decoder) on its own thread: it may be mid-step there."""
        try:
            self.generator.submit(run.pieces.close)
        except RuntimeError:  # the executor is already shut down: nothing left to free
            pass

    async def _sse(self, run: _Run, cid: str, created: int, request: Request, usage: bool):
        """Server-sent events: one chunk per text piece, then a finish chunk and [DONE]. With
        `usage` (stream_options.include_usage), every chunk has "usage": null and a last chunk
        before [DONE] has the usage and no choices, as OpenAI sends them."""
        loop = asyncio.get_running_loop()
        extra = {"usage": None} if usage else {}
        self.active_streams += 1
        try:
            while True:
                try:
                    piece = await loop.run_in_executor(self.generator, next, run.pieces, None)
                except Exception as err:  # headers are sent: report in-band, then end
                    log.error("generation failed mid-stream: %r", err, exc_info=err)
                    yield _event(ApiError(500, "generation failed").body())
                    return
                if piece is None:
                    break
                yield _event(self._chunk(cid, created, piece, None) | extra)
                if await request.is_disconnected():
                    log.info("client disconnected mid-stream: generation stopped")
                    return
            yield _event(self._chunk(cid, created, "", run.why) | extra)
            if usage:
                yield _event(
                    self._chunk(cid, created, "", None) | {"choices": [], "usage": _usage([run])}
                )
            yield "data: [DONE]\n\n"
        finally:
            self.active_streams -= 1
            self._close(run)

    def _chunk(self, cid: str, created: int, text: str, finish: str | None) -> dict:
        return {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": self.name,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
        }


class _Counted:
    """Wraps the token iterator: how many tokens came, and whether it ran out by itself."""

    def __init__(self, tokens: Iterator[int]):
        self.tokens, self.n, self.exhausted = tokens, 0, False

    def __iter__(self):
        return self

    def __next__(self) -> int:
        try:
            token = next(self.tokens)
        except StopIteration:
            self.exhausted = True
            raise
        self.n += 1
        return token


class _Run:
    def __init__(self, pieces: Iterator[str], count: _Counted, prompt_tokens: int, limit: int):
        self.pieces, self.count = pieces, count
        self.prompt_tokens, self.limit = prompt_tokens, limit

    @property
    def why(self) -> str:
        """OpenAI's finish_reason: "length" when max_tokens ran out, else "stop" (end of text
        or a stop string)."""
        return "length" if self.count.exhausted and self.count.n >= self.limit else "stop"


def _usage(runs: list[_Run]) -> dict:
    prompt = sum(run.prompt_tokens for run in runs)
    completion = sum(run.count.n for run in runs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _hit(hit: dict) -> dict:
    """A search hit as JSON: numpy scores become floats."""
    return {
        "id": hit["id"],
        "score": float(hit["score"]),
        "text": hit["text"],
        "metadata": hit.get("metadata"),
    }


def _encode_vector(vec: np.ndarray, fmt: str):
    if fmt == "base64":  # little-endian float32 bytes, as OpenAI's clients decode them
        return base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
    return vec.tolist()


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
