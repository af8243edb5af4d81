"""Request limits and validation for the OpenAI-style endpoints: bad input -> `ApiError` (4xx).

Validation is written out by hand rather than left to pydantic so that every failure is a 400
in OpenAI's error shape with a message naming the field, and nothing reaches the model
unchecked (a 500 for bad input would be a bug).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass


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


def check_model(body: dict, served: str) -> str:
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(400, "'model' is required (a string)", "model")
    if model != served:
        raise ApiError(
            404,
            f"model {model!r} is not served here; this server has {served!r}",
            "model",
            "model_not_found",
        )
    return model


def check_texts(value, param: str, limits: ServeConfig) -> list[str]:
    """A str or a non-empty list of str, within the item and character limits."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise ApiError(400, f"'{param}' must be a string or a list of strings", param)
    if not items:
        raise ApiError(400, f"'{param}' is empty: give at least one string", param)
    if len(items) > limits.max_items:
        raise ApiError(400, f"'{param}' has {len(items)} items; at most {limits.max_items}", param)
    for i, text in enumerate(items):
        if len(text) > limits.max_chars:
            raise ApiError(
                400, f"{param}[{i}] has {len(text)} characters; at most {limits.max_chars}", param
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            msg = f"{param}[{i}] is not valid Unicode (a lone surrogate)"
            raise ApiError(400, msg, param) from None
    return items


SEARCH_MODES = ("dense", "lexical", "hybrid")  # fastlm.index.MODES: a server may have no index
MAX_TOP_K = 1000  # hits per query: a bound on the answer's size, far above a ranked page


def check_search(body: dict, limits: ServeConfig) -> tuple[list[str], int, str | None]:
    """(queries, top_k, mode) of a /v1/search body; at most `max_items` queries, none blank."""
    queries = check_texts(body.get("query"), "query", limits)
    for i, query in enumerate(queries):
        if not query.strip():
            where = "query" if isinstance(body["query"], str) else f"query[{i}]"
            raise ApiError(400, f"{where} is empty: give a text to search for", "query")
    top_k = check_int(body, "top_k", 10, 1, MAX_TOP_K)
    mode = body.get("mode")
    if mode is not None and mode not in SEARCH_MODES:
        raise ApiError(400, f"'mode' must be one of {list(SEARCH_MODES)} or null", "mode")
    return queries, top_k, mode


def check_int(body: dict, name: str, default: int | None, low: int, high: int | None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | LongInt):
        raise ApiError(400, f"'{name}' must be an integer", name)
    if isinstance(value, LongInt) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ApiError(400, f"'{name}' must be {bound}, got {value}", name)
    return value


def check_float(body: dict, name: str, default: float | None, low: float, high: float):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, LongInt):
        raise ApiError(400, f"'{name}' must be between {low} and {high}, got {value}", name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, f"'{name}' must be a number", name)
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be between {low} and {high}, got {value}", name)
    return float(value)


def check_stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "'stop' must be a non-empty string or a list of them", "stop")
    if len(stops) > 4:
        raise ApiError(400, "'stop' takes at most 4 strings", "stop")
    return stops


def check_unsupported(body: dict) -> None:
    """Refuse options this server does not implement instead of silently ignoring them."""
    if body.get("n", 1) != 1 or body.get("best_of", 1) != 1:
        raise ApiError(400, "only n = 1 (and best_of = 1) is supported", "n")
    if body.get("logprobs") not in (None, 0):
        raise ApiError(400, "'logprobs' is not supported", "logprobs")
    if body.get("echo", False):
        raise ApiError(400, "'echo' is not supported", "echo")
    if body.get("suffix") is not None:
        raise ApiError(400, "'suffix' is not supported", "suffix")


def check_stream_options(body: dict, stream: bool) -> bool:
    """Whether a streamed completion ends with a usage chunk (`stream_options.include_usage`).
    Like OpenAI, stream_options without `stream: true` is refused rather than ignored."""
    param, options = "stream_options", body.get("stream_options")
    if options is None:
        return False
    if stream is not True:
        raise ApiError(400, "'stream_options' is only allowed with 'stream': true", param)
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", param)
    unknown = sorted(set(options) - {"include_usage"})
    if unknown:
        raise ApiError(
            400, f"'stream_options' has {unknown}; only 'include_usage' is supported", param
        )
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise ApiError(400, "'stream_options.include_usage' must be true or false", param)
    return include
