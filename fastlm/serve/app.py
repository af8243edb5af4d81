"""The HTTP app: OpenAI-style embeddings and completions over one loaded `LanguageModel`.

    POST /v1/embeddings    {"model", "input": str | [str], "encoding_format": "float"|"base64"}
    POST /v1/completions   {"model", "prompt": str | [str], "max_tokens", "temperature", "top_p",
                            "stop", "seed", "stream", "stream_options": {"include_usage"}}
    POST /v1/search        {"query": str | [str], "top_k": 10, "mode": "dense"|"lexical"|"hybrid"}
                           (with `fastlm serve MODEL --index DIR`; a 404 without an index)
    GET  /v1/models, GET /v1/models/{id}, GET /health

The bodies are pydantic models (serve/requests.py); a body they refuse is a 400 in OpenAI's
error shape naming the field. Only the model's public API is used: `embed` (through the dynamic
batcher, serve/batcher.py), `stream` (it tokenises the prompt and checks the context), and an
Index's `search`, each off the event loop. Searches run one at a time on their own thread;
completions one step at a time on a single worker thread: decoding is batch 1, so concurrent
streams interleave token by token instead of competing for the cores. Greedy unless a
temperature > 0 is given (fastlm's default everywhere; OpenAI's own default is 1).

A client that leaves stops its work: a streamed or a whole completion stops generating at the
next step, and a body that stops arriving ends the request. Either is one INFO log line: a
client hanging up is not a server error.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations (the
# request models, made in create_app: their limits are the server's flags)

import asyncio
import base64
import json
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from fastlm.generation import Step
from fastlm.sampling import SamplingParams
from fastlm.serve.batcher import EmbedBatcher
from fastlm.serve.requests import (
    ApiError,
    ServeConfig,
    invalid_request,
    library_errors,
    parse_body,
    read_body,
    request_models,
)

log = logging.getLogger("fastlm.serve")
CLIENT_CLOSED = 499  # nginx's "client closed request": the status nobody receives


class ClientGone(ClientDisconnect):
    """The client disconnected; the message says when (for the log line)."""


def create_app(model, name: str, config: ServeConfig | None = None, index=None) -> FastAPI:
    """A FastAPI app serving `model` (a fastlm `LanguageModel`) under the model id `name`, and
    `index` (a `fastlm.Index` loaded with `model`, or None) at /v1/search."""
    config = config or ServeConfig()
    state = _State(model, name, config, index)
    bodies = request_models(config)
    Embeddings, Completions, Search = bodies.embeddings, bodies.completions, bodies.search
    app = FastAPI(title="fastlm", lifespan=state.lifespan)
    app.state.fastlm = state

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, err: ApiError):
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)  # a body its model refuses: 400, not 422
    async def invalid_body(_request: Request, err: RequestValidationError):
        error = invalid_request(err.errors())
        return JSONResponse(error.body(), status_code=error.status)

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

    router = APIRouter(route_class=_BodyRoute)

    @router.get("/health")
    async def health():
        return state.health()

    @router.get("/v1/models")
    async def models():
        return {"object": "list", "data": [state.model_entry()]}

    @router.get("/v1/models/{model_id:path}")  # ids may hold a "/" (a checkpoint path)
    async def one_model(model_id: str):
        state.check_model(model_id)
        return state.model_entry()

    @router.post("/v1/embeddings")
    async def embeddings(body: Embeddings):
        return await state.embeddings(body)

    @router.post("/v1/completions")
    async def completions(body: Completions, request: Request):
        return await state.completions(body, request)

    def need_index() -> None:  # before the body is validated: no body makes this one succeed
        if state.index is None:
            raise ApiError(
                404, "this server has no index; start it with: fastlm serve MODEL --index DIR"
            )

    @router.post("/v1/search", dependencies=[Depends(need_index)])
    async def search(body: Search):
        return await state.search(body)

    app.include_router(router)
    return app


class _JsonRequest(Request):
    """A request whose body was read and parsed by `_BodyRoute`: FastAPI validates the endpoint's
    model against that, not against its own parse."""

    parsed: object = None

    async def json(self):
        return self.parsed


class _BodyRoute(APIRoute):
    """Reads a POST body within the server's limits (`_read_body`) and parses it (`parse_body`:
    integers of any length, any nesting depth) before FastAPI validates it."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def read_then_handle(request: Request) -> Response:
            if request.method != "POST":
                return await handler(request)
            state = request.app.state.fastlm
            state.requests += 1
            body = _JsonRequest(request.scope, request.receive)
            body.parsed = parse_body(await read_body(body, state.config), state.config)
            return await handler(body)

        return read_then_handle


class _Run:
    """One completion: the steps of `model.stream`, taken on the generation thread, and what
    the answer reports of them."""

    def __init__(self, steps: Iterator[Step], prompt_tokens: int, eot_id: int):
        self.steps, self.prompt_tokens, self.eot_id = steps, prompt_tokens, eot_id
        self.completion_tokens = 0
        self.why = "stop"  # OpenAI's finish_reason, as the last step gives it

    def next_text(self) -> str | None:
        """The next step's text ("" while text is held back); None once the generation ended."""
        step = next(self.steps, None)
        if step is None:
            return None
        if step.token_id != self.eot_id:  # the end of text ends the answer, not part of it
            self.completion_tokens += 1
        if step.finish_reason is not None:
            self.why = step.finish_reason
        return step.text


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
            lambda texts, kind: self.model.embed(
                texts, batch_size=self.config.embed_batch_size, kind=kind
            ),
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

    def check_model(self, model: str) -> None:
        if model != self.name:
            raise ApiError(
                404,
                f"model {model!r} is not served here; this server has {self.name!r}",
                "model",
                "model_not_found",
            )

    # ------------------------------------------------------------------ embeddings
    async def embeddings(self, body) -> dict:
        self.check_model(body.model)
        dims = body.dimensions
        if dims is not None and dims != self.model.embedding_dim:
            raise ApiError(
                400, f"'dimensions' must be {self.model.embedding_dim} for this model", "dimensions"
            )
        # off the event loop: 256 texts of 20k characters take a while to tokenise
        encoded = await asyncio.to_thread(self.tokenizer.encode_many, body.input)
        tokens = sum(len(ids) for ids in encoded)
        vecs = await self.batcher.embed(body.input, max(tokens, 1), body.kind)
        fmt = body.encoding_format
        data = [
            {"object": "embedding", "index": i, "embedding": _encode_vector(v, fmt)}
            for i, v in enumerate(vecs)
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": self.name, "usage": usage}

    # ------------------------------------------------------------------ search
    async def search(self, body) -> dict:
        """One query -> "data": [hit, ...]; a list of queries -> "data": [[hit, ...], ...],
        in the order given. A hit is {"id", "score", "text", "metadata"}, best first."""
        if body.model is not None:
            self.check_model(body.model)
        loop = asyncio.get_running_loop()
        # e.g. a lexical search of an index built --no-lexical
        with library_errors("mode" if body.mode is not None else None):
            results = await loop.run_in_executor(
                self.searcher,
                lambda: self.index.search(body.query, top_k=body.top_k, mode=body.mode),
            )
        data = [[_hit(h) for h in hits] for hits in results]
        return {"object": "list", "data": data[0] if body.one_query else data, "model": self.name}

    # ------------------------------------------------------------------ completions
    async def completions(self, body, request: Request):
        self.check_model(body.model)
        if body.stream and len(body.prompt) != 1:
            raise ApiError(400, "streaming takes one prompt", "prompt")
        with library_errors():
            params = SamplingParams(
                body.max_tokens, body.temperature, top_p=body.top_p, seed=body.seed, stop=body.stop
            )
        # off the event loop, and every prompt checked before any is generated
        runs = await asyncio.to_thread(self._runs, body.prompt, params)
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            events = self._sse(runs[0], cid, created, request, usage)
            return StreamingResponse(events, media_type="text/event-stream")
        choices = []
        for i, run in enumerate(runs):  # one decoder (KV cache) alive at a time
            text = await self._collect(run, request)
            choices.append({"text": text, "index": i, "logprobs": None, "finish_reason": run.why})
        return {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": self.name,
            "choices": choices,
            "usage": _usage(runs),
        }

    def _runs(self, prompts: list[str], params: SamplingParams) -> list[_Run]:
        """A generation per prompt, each checked (its prompt against the context too) now and
        run only as its steps are taken."""
        eot = self.tokenizer.eot_id
        with library_errors("max_tokens"):  # the context is what a prompt can exceed
            return [
                _Run(self.model.stream(p, params), len(self.tokenizer.encode(p)), eot)
                for p in prompts
            ]

    async def _collect(self, run: _Run, request: Request) -> str:
        """The whole completion, one step per executor call, so that concurrent requests
        (streamed or not) take turns on the generation thread instead of waiting in line.
        Raises ClientGone, the generation closed, if the client leaves meanwhile."""
        loop, pieces = asyncio.get_running_loop(), []
        try:
            while (text := await loop.run_in_executor(self.generator, run.next_text)) is not None:
                pieces.append(text)
                if await request.is_disconnected():
                    raise ClientGone("during generation: generation stopped")
        finally:
            self._close(run)
        return "".join(pieces)

    def _close(self, run: _Run) -> None:
        """Free a generation (its decoder) on its own thread: it may be mid-step there."""
        try:
            self.generator.submit(run.steps.close)
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
                    text = await loop.run_in_executor(self.generator, run.next_text)
                except Exception as err:  # headers are sent: report in-band, then end
                    log.error("generation failed mid-stream: %r", err, exc_info=err)
                    yield _event(ApiError(500, "generation failed").body())
                    return
                if text is None:
                    break
                if text:
                    yield _event(self._chunk(cid, created, text, None) | extra)
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


def _usage(runs: list[_Run]) -> dict:
    prompt, completion = sum(r.prompt_tokens for r in runs), sum(r.completion_tokens for r in runs)
    total = prompt + completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


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
