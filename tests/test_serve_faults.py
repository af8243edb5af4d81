"""The HTTP server under faults: huge numbers, clients that leave or dawdle, the less-used
corners of the OpenAI API (one model by id, stream_options).

Requests that need no real connection go to the app in-process (Starlette's TestClient).
Disconnects and timeouts need real sockets: `serving` starts uvicorn in a thread on a free
loopback port, built as `fastlm serve` builds it, and stops it on the way out.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from starlette.testclient import TestClient  # noqa: E402

from fastlm.generation import Step  # noqa: E402
from fastlm.sampling import SamplingParams  # noqa: E402
from fastlm.serve import ServeConfig, create_app  # noqa: E402
from fastlm.serve.server import make_server  # noqa: E402
from tools.serve_process import free_port  # noqa: E402

MODEL = "lstm"
HUGE = "9" * 5000  # over the 4,300 digits Python converts from text


@pytest.fixture(scope="module")
def lm():
    import fastlm

    return fastlm.load(MODEL, backend="eager", device="cpu", threads=1)


@pytest.fixture(scope="module")
def client(lm):
    with TestClient(create_app(lm, MODEL, ServeConfig(max_tokens=64))) as c:
        yield c


class CountingModel:
    """The real model, except that stream() yields one fixed token every `delay` seconds up to
    max_new_tokens (never the end of text): a long generation whose decode steps are counted,
    and which records whether it was closed."""

    def __init__(self, model, delay: float):
        self.model, self.delay = model, delay
        self.steps, self.closed = 0, False
        self.token = model.tokenizer.encode(" a")[0]

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[Step]:
        def run() -> Iterator[Step]:
            try:
                for i in range(params.max_new_tokens):
                    time.sleep(self.delay)
                    self.steps += 1
                    last = i + 1 == params.max_new_tokens
                    yield Step(self.token, " a", "length" if last else None)
            finally:
                self.closed = True

        return run()


@contextmanager
def serving(app, config: ServeConfig) -> Iterator[int]:
    """The port of a uvicorn server running `app` in a thread; its logs propagate to the root
    logger (pytest's caplog) instead of uvicorn's own handlers."""
    port = free_port()
    server = make_server(app, "127.0.0.1", port, config, 2.0, "info", log_config=None)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), 30)
        assert server.started, "uvicorn did not start"
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert not thread.is_alive(), "uvicorn did not stop"


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> tuple[bool, bytes]:
    """(whether the server closed the connection within `seconds`, what it sent first), sending
    `trickle` every 0.2 s meanwhile (a slow client that never finishes its request)."""
    deadline, received = time.monotonic() + seconds, b""
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if trickle:
                sock.sendall(trickle)
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True, received
        if not data:
            return True, received
        received += data
    return False, received


# ----------------------------------------------------------------------------- huge integers
HUGE_FIELDS = {
    "max_tokens": ("/v1/completions", HUGE),
    "negative max_tokens": ("/v1/completions", "-" + HUGE),
    "seed": ("/v1/completions", HUGE),
    "temperature": ("/v1/completions", HUGE),
    "top_p": ("/v1/completions", HUGE + ".5"),
    "dimensions": ("/v1/embeddings", HUGE),
}


@pytest.mark.parametrize("case", sorted(HUGE_FIELDS))
def test_a_5000_digit_number_is_a_400_naming_its_field(client, case):
    path, digits = HUGE_FIELDS[case]
    field = case.split()[-1]
    text = "prompt" if path == "/v1/completions" else "input"
    raw = f'{{"model": "{MODEL}", "{text}": "a", "{field}": {digits}}}'.encode()
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error"
    assert len(error["message"]) < 200  # names the field, does not echo 5,000 digits


def test_a_5000_digit_number_in_a_field_the_server_ignores_is_no_500(client):
    raw = f'{{"model": "{MODEL}", "input": "a", "user": {HUGE}}}'.encode()
    r = client.post("/v1/embeddings", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_a_5000_digit_number_in_a_list_is_a_400(client):
    raw = f'{{"model": "{MODEL}", "input": [{HUGE}]}}'.encode()
    r = client.post("/v1/embeddings", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"


# ----------------------------------------------------------------------------- client leaves
def test_client_leaving_mid_body_is_one_info_line_without_traceback(lm, caplog):
    caplog.set_level(logging.INFO)
    clients = 3
    with serving(create_app(lm, MODEL), ServeConfig()) as port:
        for _ in range(clients):  # promise 1,000 bytes, send a few, hang up
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(head("/v1/completions", 1000) + b'{"model": "lstm", "pro')
        ours = lambda: [r for r in caplog.records if r.name.startswith("fastlm")]  # noqa: E731
        wait_for(lambda: len(ours()) >= clients, 10)
    loud = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in caplog.records if r.levelno > 20]
    assert loud == []
    assert not any(r.exc_info or r.exc_text for r in caplog.records)
    assert [r.levelno for r in ours()] == [logging.INFO] * clients
    assert all("disconnected" in r.getMessage() for r in ours())


def test_non_streamed_completion_stops_generating_when_its_client_leaves(lm):
    model = CountingModel(lm, delay=0.005)  # 1,024 steps: over 5 s
    body = json.dumps({"model": MODEL, "prompt": "Once", "max_tokens": 1024}).encode()
    with serving(create_app(model, MODEL), ServeConfig()) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(head("/v1/completions", len(body)) + body)
            assert wait_for(lambda: model.steps >= 5, 10), "generation did not start"
        before = -1
        while model.steps != before and model.steps < 1024:  # until it settles
            before = model.steps
            time.sleep(0.5)
        assert model.steps < 200, f"{model.steps} of 1,024 decode steps after the client left"
        assert wait_for(lambda: model.closed, 5), "the abandoned generation was not closed"


# ----------------------------------------------------------------------------- slow clients
def fast_timeouts() -> ServeConfig:
    return ServeConfig(timeout_keep_alive=1.0, timeout_read=1.0)


def test_a_connection_that_sends_nothing_is_closed_after_timeout_keep_alive(lm):
    config = fast_timeouts()
    with serving(create_app(lm, MODEL, config), config) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            closed, _ = closed_within(sock, 5)
    assert closed


def test_a_request_head_sent_a_line_at_a_time_is_closed_after_timeout_read(lm):
    config = fast_timeouts()
    with serving(create_app(lm, MODEL, config), config) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\n")
            started = time.monotonic()
            closed, _ = closed_within(sock, 6, trickle=b"X-Slow: 1\r\n")
    assert closed and time.monotonic() - started < 4


def test_a_body_not_sent_in_time_is_a_408_after_timeout_read(lm):
    config = fast_timeouts()
    with serving(create_app(lm, MODEL, config), config) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(head("/v1/completions", 100) + b'{"model": ')
            closed, answer = closed_within(sock, 5, trickle=b" ")
    assert closed and answer.startswith(b"HTTP/1.1 408"), answer[:200]
    error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert "1 s" in error["message"] and error["type"] == "invalid_request_error"


def test_idle_connections_over_limit_concurrency_get_a_503(lm):
    config = ServeConfig(limit_concurrency=2)
    with serving(create_app(lm, MODEL, config), config) as port:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
                assert sock.recv(4096).startswith(b"HTTP/1.1 503")
        finally:
            for s in idle:
                s.close()


def test_serve_flags_set_the_timeouts_and_are_documented(capsys):
    from fastlm.cli import build_parser
    from fastlm.cli.serve import serve_config

    args = build_parser().parse_args(
        ["serve", MODEL, "--timeout-keep-alive", "2", "--timeout-read", "7.5"]
        + ["--limit-concurrency", "100"]
    )
    config = serve_config(args)
    assert (config.timeout_keep_alive, config.timeout_read, config.limit_concurrency) == (
        2.0,
        7.5,
        100,
    )
    defaults = serve_config(build_parser().parse_args(["serve", MODEL]))
    assert defaults == ServeConfig()
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", MODEL, "--timeout-read", "0"])
    assert exc.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--timeout-keep-alive", "--timeout-read", "--limit-concurrency"):
        assert flag in text
    assert "408" in text and "503" in text


# ----------------------------------------------------------------------------- /v1/models/{id}
def test_one_model_by_id_in_openai_shape(client):
    r = client.get(f"/v1/models/{MODEL}")
    assert r.status_code == 200, r.text
    entry = r.json()
    assert entry == client.get("/v1/models").json()["data"][0]
    assert set(entry) == {"id", "object", "created", "owned_by"}
    assert entry["id"] == MODEL and entry["object"] == "model"


@pytest.mark.parametrize("model_id", ["gpt-9", "org/lstm", "lstm/"])
def test_an_unknown_model_id_is_a_404_in_openai_shape(client, model_id):
    r = client.get(f"/v1/models/{model_id}")
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert model_id in error["message"]


def test_a_model_id_with_a_slash_is_found(lm):
    with TestClient(create_app(lm, "org/lstm")) as c:
        assert c.get("/v1/models/org/lstm").json()["id"] == "org/lstm"


# ----------------------------------------------------------------------------- stream_options
def _events(response) -> list:
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _stream(client, **extra) -> list:
    body = {"model": MODEL, "prompt": "Once upon", "max_tokens": 12, "stream": True, **extra}
    with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        return _events(r)


def test_stream_options_include_usage_ends_with_a_usage_chunk(client, lm):
    events = _stream(client, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    *chunks, last = events[:-1]
    assert last["choices"] == [] and last["object"] == "text_completion"
    assert all(c["usage"] is None for c in chunks)  # OpenAI: null on every other chunk
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == lm.generate("Once upon", max_new_tokens=12)
    prompt = len(lm.tokenizer.encode("Once upon"))
    usage = last["usage"]
    assert usage["prompt_tokens"] == prompt and 1 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == prompt + usage["completion_tokens"]
    plain = client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "Once upon", "max_tokens": 12}
    )
    assert usage == plain.json()["usage"]


@pytest.mark.parametrize("options", [None, {}, {"include_usage": False}])
def test_stream_options_without_include_usage_send_no_usage(client, options):
    events = _stream(client, stream_options=options)
    assert events[-1] == "[DONE]"
    assert all(len(c["choices"]) == 1 and "usage" not in c for c in events[:-1])


BAD_STREAM_OPTIONS = {
    "without stream": {"stream_options": {"include_usage": True}},
    "with stream false": {"stream": False, "stream_options": {"include_usage": True}},
    "not an object": {"stream": True, "stream_options": True},
    "include_usage a string": {"stream": True, "stream_options": {"include_usage": "yes"}},
    "unknown option": {"stream": True, "stream_options": {"continuous_usage_stats": True}},
}


@pytest.mark.parametrize("case", sorted(BAD_STREAM_OPTIONS))
def test_bad_stream_options_are_a_400(client, case):
    body = {"model": MODEL, "prompt": "a", "max_tokens": 2, **BAD_STREAM_OPTIONS[case]}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "stream_options"
