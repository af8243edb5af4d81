"""The uvicorn server around the app: how connections are accepted, timed out and limited.

`fastlm serve` runs it; tests start it in a thread on a free loopback port.

uvicorn times out only a connection that idles after a response (`timeout_keep_alive`). A client
that connects and sends nothing, or sends its request head a line at a time, would hold its
connection for ever; 600 of them hold 600 sockets. `_TimedH11Protocol` closes such connections:
silence before the first request as after a response (`timeout_keep_alive`), and a request head
not complete within `timeout_read`. The app itself bounds the wait for the body (a 408 after
`timeout_read`). h11 is used even where httptools is installed: the timers read h11's state.
"""

from __future__ import annotations

import asyncio
import functools
import logging

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from fastlm.serve.requests import ServeConfig

log = logging.getLogger("fastlm.serve")


def make_server(
    app,
    host: str,
    port: int,
    config: ServeConfig,
    drain_seconds: float,
    log_level: str = "warning",
    **options,
) -> uvicorn.Server:
    """A uvicorn.Server for `app` on host:port with `config`'s timeouts and connection limit;
    `options` go to uvicorn.Config as they are."""
    protocol = functools.partial(_TimedH11Protocol, timeout_read=config.timeout_read)
    server_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        log_level=log_level,
        timeout_keep_alive=config.timeout_keep_alive,
        limit_concurrency=config.limit_concurrency,
        timeout_graceful_shutdown=int(drain_seconds),
        **options,
    )
    return uvicorn.Server(server_config)


class _TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for each request head and a keep-alive timer
    from the moment the connection opens."""

    def __init__(self, *args, timeout_read: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.timeout_read = timeout_read
        self.head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        # a new connection is idle as one after a response is: uvicorn's own timer, which any
        # byte received cancels (from then on the head deadline applies)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()  # for the next request on this connection

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
        self.head_deadline = self.loop.call_later(self.timeout_read, self._head_deadline_passed)

    def _head_deadline_passed(self) -> None:
        # h11 leaves IDLE for the client once a whole request head has arrived
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("closed a connection whose request head took over %g s", self.timeout_read)
            self.transport.close()
