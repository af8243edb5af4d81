"""Request limits and bodies of the OpenAI-style endpoints: bad input -> `ApiError` (4xx).

The bodies are pydantic models (`request_models(config)`: the item, character and max_tokens
limits are the server's flags) declared with the library's bounds (fastlm/sampling.py), so
nothing reaches the model unchecked. Every failure is a 400 in OpenAI's error shape naming the
field (`invalid_request`). A body is parsed here (`parse_body`) before pydantic sees it: a JSON
integer of thousands of digits or a deeply nested body is refused by name, not with a 500.

pydantic (the serve extra) is imported only when the models are built: `ServeConfig` is read
by the CLI to build its parsers, extras installed or not.
"""

# no `from __future__ import annotations`: the models are built in a function, and pydantic
# reads their annotations

import asyncio
import functools
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastlm.validation import ArgumentError


@dataclass(frozen=True)
class ServeConfig:
    """Limits and batching knobs of `fastlm serve` (the CLI flags of the same names)."""

    max_items: int = 256  # texts per embeddings request / prompts per completions request
    # characters per text: the Transformer reads 5,000 tokens (~15k characters of English) and
    # the LSTM's memory grows with length, so longer texts only cost memory
    max_chars: int = 20_000
    max_tokens: int = 1024  # completions max_tokens upper bound
    max_body_bytes: int = 16 << 20  # request body
    batch_window_ms: float = 5.0  # how long a lone embedding request waits for company
    max_batch_tokens: int = 16384  # tokens per embedding batch (memory bound of one batch)
    # Rows per model call inside a batch (embed's batch_size). Small on purpose: a served batch
    # holds only the texts of the requests in flight (~65 with 16 clients), so 64-row model
    # batches would pad short texts to the longest of 64 random ones. Measured on the 2-core
    # CPU (Transformer, groups of 65 paragraphs): rows of 8 ~1.15-1.4x faster than rows of 32,
    # and at least as fast as rows of 4 or 16.
    embed_batch_size: int = 8
    # Slow clients. uvicorn alone closes a connection only when it idles after a response; a
    # client that connects and says nothing, or sends its request a byte at a time, would hold
    # a connection (a socket, a task) for ever.
    timeout_keep_alive: float = 5.0  # s of silence on a connection with no request in progress
    timeout_read: float = 30.0  # s for a request's head to arrive, then again for its body
    limit_concurrency: int | None = None  # connections + requests beyond which uvicorn says 503

    def __post_init__(self) -> None:
        for name in (
            "max_items",
            "max_chars",
            "max_tokens",
            "max_body_bytes",
            "max_batch_tokens",
            "embed_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.batch_window_ms < 0:
            raise ValueError("batch_window_ms must be >= 0")
        for name in ("timeout_keep_alive", "timeout_read"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number of seconds > 0")
        if self.limit_concurrency is not None and self.limit_concurrency < 1:
            raise ValueError("limit_concurrency must be >= 1 (or None: no limit)")


class ApiError(Exception):
    """An OpenAI-shaped error: {"error": {"message", "type", "param", "code"}} with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }


# Longer than any bound a field here has (a seed < 2**63 has 19 digits), far below the 4,300
# digits over which Python refuses int(str) with a ValueError.
MAX_INT_DIGITS = 40


class LongInt:
    """A JSON integer of more than MAX_INT_DIGITS digits, left unconverted: the check of the
    field holding it refuses it by name (converting could fail, and would be wasted)."""

    def __init__(self, text: str):
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def _parse_int(text: str) -> int | LongInt:
    return int(text) if len(text) <= MAX_INT_DIGITS else LongInt(text)


def parse_body(raw: bytes, limits: ServeConfig) -> dict:
    if len(raw) > limits.max_body_bytes:
        raise ApiError(413, f"request body is over {limits.max_body_bytes} bytes")
    try:
        body = json.loads(raw, parse_int=_parse_int)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ApiError(400, f"request body is not valid JSON: {err}") from None
    except RecursionError:  # "[[[[...": json's parser recurses per nesting level
        raise ApiError(400, "request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body


async def read_body(request, config: ServeConfig) -> bytes:
    """The body of `request` (Starlette's), within the size limit and `timeout_read` seconds.
    A refused body is left unread, so its connection cannot carry another request: the answer
    closes it."""
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


@contextmanager
def library_errors(param: str | None = None) -> Iterator[None]:
    """The library's argument errors as a 400 naming the request field: an `ArgumentError`'s
    own `param` (in the API's words), else `param`. Other ValueError/TypeError raised for the
    request's values answer 400 with `param` too."""
    try:
        yield
    except ArgumentError as err:
        raise ApiError(400, str(err), API_PARAMS.get(err.param, err.param) or param) from None
    except (ValueError, TypeError) as err:
        raise ApiError(400, str(err), param) from None


# the request fields of the library's arguments, where the names differ
API_PARAMS = {"max_new_tokens": "max_tokens", "text": "prompt"}

SEARCH_MODES = ("dense", "lexical", "hybrid")  # fastlm.index.MODES: a server may have no index
MAX_TOP_K = 1000  # hits per query: a bound on the answer's size, far above a ranked page
DEFAULT_TOP_K = 10
# OpenAI's completions API: its default max_tokens, its temperature range, its stop strings
DEFAULT_MAX_TOKENS = 16
MAX_TEMPERATURE = 2.0
MAX_STOP = 4
# API policy, not a numerical limit (the sampler takes any temperature > 0): this cold, sampling
# is greedy in all but name, so the client is told to ask for 0 (README).
MIN_TEMPERATURE = 1e-6


@dataclass(frozen=True)
class RequestModels:
    """The bodies of one server's endpoints (pydantic models)."""

    embeddings: type
    completions: type
    search: type


@functools.cache
def request_models(config: ServeConfig) -> RequestModels:
    """The request bodies as pydantic models with `config`'s limits. Unknown fields are ignored
    (OpenAI's "user", ...); null in an optional field is its default, as in OpenAI's API."""
    # pydantic (the serve extra) and numpy (sampling): only when an app is built, so
    # `fastlm serve --help` and ServeConfig need neither
    from pydantic import (
        AfterValidator,
        BaseModel,
        BeforeValidator,
        Field,
        PrivateAttr,
        StrictBool,
        ValidationInfo,
        field_validator,
        model_validator,
    )

    from fastlm.sampling import MAX_SEED, TOP_P_RANGE

    def one_or_many(item: Any) -> Any:  # 1 to max_items of them
        limits = Field(min_length=1, max_length=config.max_items)
        return Annotated[list[item], limits, BeforeValidator(_one_or_many)]

    text = Annotated[str, Field(strict=True, max_length=config.max_chars)]
    texts = one_or_many(text)
    queries = one_or_many(Annotated[text, AfterValidator(_has_text)])
    model_id = Annotated[str, Field(strict=True)]
    top_p_range = dict(gt=TOP_P_RANGE[0], le=TOP_P_RANGE[1])

    class Body(BaseModel):
        @model_validator(mode="before")
        @classmethod
        def _null_is_default(cls, data: Any) -> Any:
            if not isinstance(data, dict):
                return data
            fields = cls.model_fields
            return {
                k: v
                for k, v in data.items()
                if v is not None or k not in fields or fields[k].is_required()
            }

    class EmbeddingRequest(Body):
        model: model_id
        input: texts
        encoding_format: Literal["float", "base64"] = "float"
        dimensions: Annotated[int, Field(strict=True)] | None = None  # the model's, if given
        # fastlm's extension: the vectors of search queries (LanguageModel.embed's `kind`)
        kind: Literal["document", "query"] = "document"

    class StreamOptions(BaseModel, extra="forbid"):
        include_usage: StrictBool = False

    class CompletionRequest(Body):
        model: model_id
        prompt: texts
        max_tokens: Annotated[int, Field(strict=True, ge=1, le=config.max_tokens)] = (
            DEFAULT_MAX_TOKENS
        )
        temperature: Annotated[
            float,
            Field(strict=True, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False),
            AfterValidator(_greedy_or_warm),
        ] = 0.0
        top_p: Annotated[float, Field(strict=True, allow_inf_nan=False, **top_p_range)] | None = (
            None
        )
        seed: Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)] | None = None
        stop: (
            Annotated[
                list[Annotated[str, Field(strict=True, min_length=1)]],
                Field(max_length=MAX_STOP),
                BeforeValidator(_one_or_many),
            ]
            | None
        ) = None
        stream: StrictBool = False
        stream_options: StreamOptions | None = None  # only with stream: true, as OpenAI has it
        # what this server does not implement is refused, not silently ignored
        n: Literal[1] = 1
        best_of: Literal[1] = 1
        logprobs: Literal[0] | None = None
        echo: Literal[False] = False
        suffix: None = None

        @field_validator("stream_options")
        @classmethod
        def _only_when_streaming(cls, options: Any, info: ValidationInfo) -> Any:
            if options is not None and info.data.get("stream") is not True:
                raise _custom_error("stream_options", "Input is only allowed with stream: true")
            return options

    class SearchRequest(Body):
        query: queries
        top_k: Annotated[int, Field(strict=True, ge=1, le=MAX_TOP_K)] = DEFAULT_TOP_K
        mode: Literal[SEARCH_MODES] | None = None  # None: the index's default
        model: model_id | None = None
        _one_query: bool = PrivateAttr(False)

        @model_validator(mode="wrap")
        @classmethod
        def _remember_shape(cls, data: Any, handler):
            request = handler(data)
            request._one_query = isinstance(data, dict) and isinstance(data.get("query"), str)
            return request

        @property
        def one_query(self) -> bool:
            """Whether `query` was one str (the answer is one list of hits, not a list)."""
            return self._one_query

    return RequestModels(EmbeddingRequest, CompletionRequest, SearchRequest)


def _custom_error(kind: str, message: str, context: dict | None = None) -> Exception:
    from pydantic_core import PydanticCustomError  # the serve extra, as above

    return PydanticCustomError(kind, message, context)


def _one_or_many(value: Any) -> Any:
    """OpenAI's texts are a string or a list of them: a string stands for a list of one."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise _custom_error("texts_type", "Input should be a string or a list of strings")
    return value


def _has_text(text: str) -> str:
    if not text.strip():
        raise _custom_error("blank_text", "Input should hold a text to search for")
    return text


def _greedy_or_warm(temperature: float) -> float:
    if 0 < temperature < MIN_TEMPERATURE:
        message = "Input should be 0 (greedy) or at least {min}"
        raise _custom_error("temperature_too_low", message, {"min": MIN_TEMPERATURE})
    return temperature


def invalid_request(errors: Sequence[dict]) -> ApiError:
    """The first of pydantic's errors (FastAPI's RequestValidationError) as a 400 naming the
    field: `param` is the top-level field, the message names the place in it."""
    error = errors[0]
    loc = list(error["loc"])
    if loc and loc[0] == "body":  # FastAPI's prefix for a body field
        loc = loc[1:]
    if not loc:  # the body itself: not JSON (a content-type other than application/json)
        return ApiError(400, "request body must be a JSON object (content-type: application/json)")
    path = str(loc[0]) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
    if error["type"] == "missing":
        return ApiError(400, f"'{path}' is required", str(loc[0]))
    return ApiError(400, f"'{path}': {error['msg']}", str(loc[0]))
