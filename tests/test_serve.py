"""`fastlm serve`: the real server process on a loopback port, spoken to over HTTP.

One server (the shipped LSTM, small limits so the limits are testable) serves the module;
the SIGTERM test starts its own. Answers are compared with the in-process API.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tools.serve_process import repo_env  # noqa: E402
from tools.serve_process import start_server as _start  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "lstm"
LIMITS = ["--max-items", "8", "--max-chars", "2000", "--max-tokens", "64"]


def start_server(*extra: str) -> tuple[subprocess.Popen, str]:
    env = repo_env(ROOT, OMP_NUM_THREADS="1")
    # eager, compared exactly with the in-process API (auto's int8 embeddings vary slightly
    # with the other texts of their batch, and the server batches requests together)
    args = ["--threads", "1", "--backend", "eager", *extra]
    return _start(MODEL, args, env, ROOT, stdout=subprocess.PIPE)


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()


@pytest.fixture(scope="module")
def server():
    # a long batch window, so the concurrency test below sees requests batched together
    proc, url = start_server(*LIMITS, "--batch-window-ms", "200")
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client
    assert stop_server(proc) == 0


@pytest.fixture(scope="module")
def model():
    import fastlm

    return fastlm.load(MODEL, backend="eager", device="cpu", threads=1)


def post(client, path: str, body) -> httpx.Response:
    # json.dumps writes NaN as JSON's common extension does (httpx's json= refuses it)
    content = json.dumps(body).encode()
    return client.post(path, content=content, headers={"content-type": "application/json"})


# ----------------------------------------------------------------------------- embeddings
def test_embeddings_float_and_base64_match_the_api(server, model):
    texts = ["a first text", "naïve café 日本語", ""]
    r = post(server, "/v1/embeddings", {"model": MODEL, "input": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == MODEL
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    expected = model.embed(texts)
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], expected, atol=1e-6)
    tokens = sum(len(ids) for ids in model.tokenizer.encode_many(texts))
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    r = post(
        server, "/v1/embeddings", {"model": MODEL, "input": texts[0], "encoding_format": "base64"}
    )
    vec = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, expected[0], atol=1e-6)


def test_embeddings_of_queries_are_the_query_kind(server, model):
    texts = ["who wrote the tempest", "surface codes"]
    r = post(server, "/v1/embeddings", {"model": MODEL, "input": texts, "kind": "query"})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]])
    np.testing.assert_allclose(got, model.embed(texts, kind="query"), atol=1e-6)
    assert np.abs(got - model.embed(texts)).max() > 0.01


def test_openai_client_speaks_to_the_server(server, model):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
    res = client.embeddings.create(model=MODEL, input=["hello", "world"])
    np.testing.assert_allclose(
        [d.embedding for d in res.data], model.embed(["hello", "world"]), atol=1e-6
    )
    out = client.completions.create(model=MODEL, prompt="The river", max_tokens=10)
    assert out.choices[0].text == model.generate("The river", max_new_tokens=10)
    streamed = client.completions.create(
        model=MODEL, prompt="The river", max_tokens=10, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == out.choices[0].text
    assert [m.id for m in client.models.list()] == [MODEL]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, model):
    texts = [[f"request {i} text {j}" for j in range(i % 3 + 1)] for i in range(16)]
    before = server.get("/health").json()

    def one(batch):
        return post(server, "/v1/embeddings", {"model": MODEL, "input": batch}).json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, texts))
    for batch, answer in zip(texts, answers):
        got = [d["embedding"] for d in answer["data"]]
        np.testing.assert_allclose(got, model.embed(batch), atol=1e-6)
    after = server.get("/health").json()
    assert after["embedded_texts"] - before["embedded_texts"] == sum(map(len, texts))
    assert after["embedding_batches"] - before["embedding_batches"] < len(texts)


# ----------------------------------------------------------------------------- completions
def test_completion_is_greedy_by_default_with_usage_and_finish_reason(server, model):
    r = post(server, "/v1/completions", {"model": MODEL, "prompt": "Once upon", "max_tokens": 12})
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    assert choice["text"] == model.generate("Once upon", max_new_tokens=12)
    assert body["object"] == "text_completion" and choice["finish_reason"] in ("length", "stop")
    prompt_tokens = len(model.tokenizer.encode("Once upon"))
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    assert body["usage"]["total_tokens"] == prompt_tokens + body["usage"]["completion_tokens"]
    if choice["finish_reason"] == "length":
        assert body["usage"]["completion_tokens"] == 12


def test_completion_stop_seed_and_prompt_list(server, model):
    full = model.generate("The", max_new_tokens=30)
    stop = full[5:8]
    r = post(
        server, "/v1/completions", {"model": MODEL, "prompt": "The", "max_tokens": 30, "stop": stop}
    )
    assert r.json()["choices"][0] == {
        "text": model.generate("The", max_new_tokens=30, stop=stop),
        "index": 0,
        "logprobs": None,
        "finish_reason": "stop",
    }
    sampled = {"model": MODEL, "prompt": ["A", "B"], "max_tokens": 8, "temperature": 1.0, "seed": 7}
    a, b = (
        post(server, "/v1/completions", sampled).json(),
        post(server, "/v1/completions", sampled).json(),
    )
    assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]
    assert [c["index"] for c in a["choices"]] == [0, 1]


def _sse(response) -> list[dict | str]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_streaming_sends_pieces_then_finish_then_done(server, model):
    body = {"model": MODEL, "prompt": "Once upon", "max_tokens": 12, "stream": True}
    with server.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == model.generate("Once upon", max_new_tokens=12)


def test_client_disconnect_mid_stream_frees_the_stream(server):
    body = {"model": MODEL, "prompt": "Once", "max_tokens": 64, "stream": True}
    with server.stream("POST", "/v1/completions", json=body) as r:
        next(r.iter_lines())  # one event, then hang up
    deadline = time.monotonic() + 30
    while server.get("/health").json()["active_streams"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.get("/health").json()["active_streams"] == 0
    r = post(server, "/v1/completions", {"model": MODEL, "prompt": "Once", "max_tokens": 3})
    assert r.status_code == 200


# ----------------------------------------------------------------------------- bad input
BAD = {
    "malformed JSON": (b'{"model": "lstm", "input": [', 400, "not valid JSON"),
    "not an object": ([1, 2], 400, "JSON object"),
    "input wrong type": ({"model": MODEL, "input": 5}, 400, "string or a list"),
    # pydantic's wording (the request models, serve/requests.py)
    "input list of ints": ({"model": MODEL, "input": [1, 2]}, 400, "valid string"),
    "empty input list": ({"model": MODEL, "input": []}, 400, "at least 1 item"),
    "10^6 characters": ({"model": MODEL, "input": "x" * 10**6}, 400, "at most 2000"),
    "too many items": ({"model": MODEL, "input": ["a"] * 9}, 400, "at most 8"),
    "unknown model": ({"model": "gpt-9", "input": "a"}, 404, "not served"),
    "missing model": ({"input": "a"}, 400, "'model' is required"),
    "bad encoding": ({"model": MODEL, "input": "a", "encoding_format": "hex"}, 400, "encoding"),
    "lone surrogate": (b'{"model": "lstm", "input": "\\ud800"}', 400, "unicode"),
    "deeply nested": (b"[" * 100_000, 400, "nested too deeply"),
    "NaN dimensions": (b'{"model": "lstm", "input": "a", "dimensions": NaN}', 400, "dimensions"),
    "unknown kind": ({"model": MODEL, "input": "a", "kind": "queries"}, 400, "kind"),
}
BAD_COMPLETIONS = {
    "negative max_tokens": ({"max_tokens": -1}, "max_tokens"),
    "max_tokens over the limit": ({"max_tokens": 65}, "max_tokens"),
    "max_tokens a string": ({"max_tokens": "10"}, "max_tokens"),
    "max_tokens a bool": ({"max_tokens": True}, "max_tokens"),
    "temperature a string": ({"temperature": "hot"}, "temperature"),
    "temperature negative": ({"temperature": -0.5}, "temperature"),
    "temperature NaN": ({"temperature": float("nan")}, "temperature"),
    "temperature 1e-300": ({"temperature": 1e-300}, "temperature"),
    "top_p zero": ({"top_p": 0}, "top_p"),
    "empty stop": ({"stop": [""]}, "stop"),
    "n > 1": ({"n": 2}, "n"),
    "stream not a bool": ({"stream": "yes"}, "stream"),
    "stream with a list": ({"prompt": ["a", "b"], "stream": True}, "prompt"),
    "missing prompt": ({"prompt": None}, "prompt"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_embedding_request_is_a_4xx_json_error(server, case):
    body, status, fragment = BAD[case]
    if isinstance(body, bytes):
        r = server.post(
            "/v1/embeddings", content=body, headers={"content-type": "application/json"}
        )
    else:
        r = post(server, "/v1/embeddings", body)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]


@pytest.mark.parametrize("case", sorted(BAD_COMPLETIONS))
def test_bad_completion_request_is_a_400_naming_the_field(server, case):
    change, param = BAD_COMPLETIONS[case]
    r = post(server, "/v1/completions", {"model": MODEL, "prompt": "a", **change})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_unknown_route_and_method_are_json_errors_and_the_server_keeps_serving(server):
    assert server.get("/v1/nothing").json()["error"]["message"] == "Not Found"
    assert server.get("/v1/embeddings").status_code == 405
    assert server.get("/health").json()["status"] == "ok"


# ----------------------------------------------------------------------------- shutdown
def test_sigterm_drains_the_stream_in_flight():
    proc, url = start_server()
    body = {"model": MODEL, "prompt": "Once", "max_tokens": 1000, "stream": True}
    with httpx.Client(base_url=url, timeout=120) as client:
        with client.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            first = next(lines)
            proc.send_signal(signal.SIGTERM)  # mid-stream
            rest = [line for line in lines if line]
    assert first.startswith("data: ") and rest[-1] == "data: [DONE]"
    assert len(rest) > 1  # more events arrived after the signal: it was drained, not cut
    assert proc.wait(timeout=60) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=2)
    proc.stdout.close()
    proc.stderr.close()


def test_taken_port_is_a_one_line_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-m", "fastlm", "serve", MODEL, "--port", str(port)]
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"fastlm serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
