"""`fastlm serve MODEL`: the OpenAI-style HTTP server (needs the `serve` extra).

    fastlm serve transformer --port 8000 [--index DIR]
    curl -s localhost:8000/v1/embeddings -H 'content-type: application/json' \\
        -d '{"model": "transformer", "input": ["a text", "another"]}'
    curl -s localhost:8000/v1/search -H 'content-type: application/json' \\
        -d '{"query": "a question", "top_k": 5}'     # with --index DIR

SIGTERM (or Ctrl-C) stops accepting connections, lets in-flight requests finish (up to
--drain-seconds), then exits 0. Slow or silent clients are closed after --timeout-keep-alive /
--timeout-read seconds (serve/server.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket

from fastlm.cli.common import add_backend_flags, load_model, nonneg_float, positive_int
from fastlm.serve.requests import ServeConfig


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP server: OpenAI-style /v1/embeddings and /v1/completions",
        description="Serve one model over HTTP with the OpenAI embeddings/completions API. "
        'Needs: pip install "fastlm[serve]".',
    )
    p.add_argument("model", metavar="MODEL", help="shipped name (transformer, lstm) or checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0: all interfaces)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", help="model id clients send (default: MODEL)")
    p.add_argument(
        "--index",
        metavar="DIR",
        help="serve POST /v1/search over this index (built with MODEL by `fastlm index build`)",
    )
    add_backend_flags(p)
    limits = p.add_argument_group("limits and batching")
    limits.add_argument("--max-items", type=positive_int, default=256, help="texts per request")
    limits.add_argument("--max-chars", type=positive_int, default=20_000, help="per text")
    limits.add_argument("--max-tokens", type=positive_int, default=1024, help="completion cap")
    limits.add_argument("--batch-window-ms", type=nonneg_float, default=5.0)
    limits.add_argument("--max-batch-tokens", type=positive_int, default=16384)
    limits.add_argument(
        "--embed-batch-size", type=positive_int, default=8, help="rows per model call"
    )
    limits.add_argument("--drain-seconds", type=nonneg_float, default=30.0)
    _add_connection_flags(p)
    p.set_defaults(func=run)


def _add_connection_flags(p: argparse.ArgumentParser) -> None:
    conns = p.add_argument_group("slow clients and connections")
    conns.add_argument(
        "--timeout-keep-alive",
        type=positive_seconds,
        default=ServeConfig.timeout_keep_alive,
        metavar="SECONDS",
        help="close a connection with no request in progress after this long a silence, "
        "from when it opens as after each response (default: %(default)g)",
    )
    conns.add_argument(
        "--timeout-read",
        type=positive_seconds,
        default=ServeConfig.timeout_read,
        metavar="SECONDS",
        help="a request head must arrive within this long (else the connection is closed), "
        "then its body within this long again (else a 408) (default: %(default)g)",
    )
    conns.add_argument(
        "--limit-concurrency",
        type=positive_int,
        default=None,
        metavar="N",
        help="answer 503 (uvicorn's plain-text one) to a request arriving when N connections "
        "are open, its own included, or N requests run (default: no limit)",
    )


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    value = nonneg_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0 seconds, got 0")
    return value


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The ServeConfig of `fastlm serve`'s flags."""
    return ServeConfig(
        max_items=args.max_items,
        max_chars=args.max_chars,
        max_tokens=args.max_tokens,
        batch_window_ms=args.batch_window_ms,
        max_batch_tokens=args.max_batch_tokens,
        embed_batch_size=args.embed_batch_size,
        timeout_keep_alive=args.timeout_keep_alive,
        timeout_read=args.timeout_read,
        limit_concurrency=args.limit_concurrency,
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: F401  (first: a missing extra is reported before the model loads)

    _check_port(args.host, args.port)  # a taken port is one error line, before the model loads
    if args.index is not None and not os.path.isdir(args.index):  # likewise
        raise FileNotFoundError(f"index directory not found: {args.index}")

    from fastlm.serve.app import create_app  # fastapi: the serve extra
    from fastlm.serve.server import make_server  # uvicorn: the serve extra

    config = serve_config(args)
    model = load_model(args)
    index = _load_index(args.index, model) if args.index else None
    app = create_app(model, args.name or args.model, config, index)
    log_level = "info" if getattr(args, "verbose", False) else "warning"
    server = make_server(app, args.host, args.port, config, args.drain_seconds, log_level)
    print(f"fastlm serve: {args.name or args.model} on http://{args.host}:{args.port}", flush=True)
    # uvicorn drains on SIGTERM, then re-raises the signal to the previous handler: make that
    # handler a no-op so a drained shutdown exits 0 (Ctrl-C still ends as "interrupted", 130).
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 3 when startup fails; it has logged why
        return 0 if exc.code in (0, None) else 1
    return 0 if server.started else 1


def _load_index(path: str, model):
    """The index at `path`, loaded with the served model (an index built by another model is
    refused by Index.load, naming both)."""
    from fastlm.index import Index  # numpy: only with --index

    return Index.load(path, model)


def _check_port(host: str, port: int) -> None:
    """OSError now if host:port cannot be bound (taken, or an address not on this machine)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as err:
            raise OSError(f"cannot listen on {host}:{port}: {err.strerror}") from None
