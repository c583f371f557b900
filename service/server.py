"""What each worker of `python -m service` (service/__main__.py) runs: uvicorn, with limits on
what a connection may hold.

This is how the service starts (`make serve`, the image's CMD). `uvicorn service.app:app` still
works and keeps what `service.limits` guarantees (body deadline, requests in flight), but not
what follows, which needs the connection: uvicorn (0.54, read in its source) has no deadline
for a request's headers, arms its keep-alive timer only after a response (a client that
connects and sends nothing, or trickles its headers, is never timed out), and caps neither the
size of a request head nor the number of connections (its --limit-concurrency answers a plain
503, without Retry-After). `GuardedHttpToolsProtocol` adds, per connection:

- HEADER_TIMEOUT: a request's line and headers must arrive within this many seconds of the
  connection, or of the previous response; otherwise the connection is closed. Idle keep-alive
  connections still close after uvicorn's --timeout-keep-alive (5 s).
- MAX_HEADER_BYTES: a larger request head is answered 431 and the connection closed, while it
  is still arriving (before it is buffered whole), as nginx does.
- MAX_CONNECTIONS: a request on a connection opened past it is answered 503 with Retry-After and
  the connection closed; connections the kernel has not handed over yet wait in the listen
  backlog (--backlog, 2048).

Every connection the server closes lingers (`LingeringTransport`), so that the client reads
the answer it was sent even while it is still sending.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
from asyncio import TimerHandle
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.settings import Settings
from service.telemetry import HEADER_TIMEOUTS, RESPONSES

log = logging.getLogger(__name__)
PROTOCOL = "service.server:GuardedHttpToolsProtocol"  # an import string, as uvicorn's --http takes
LINGER_SECONDS = 2.0


@functools.cache
def settings() -> Settings:
    """The limits, read once per process (every connection would otherwise read the env)."""
    return Settings()


def json_response(code: int, detail: str, *extra: tuple[bytes, bytes]) -> list[Any]:
    """(head lines, body) of a JSON error that closes the connection."""
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *extra,
    ]
    return [headers, body]


def rejecting_app(code: int, detail: str, route: str, *extra: tuple[bytes, bytes]) -> Any:
    """A minimal ASGI app answering every request with one JSON error and closing."""
    headers, body = json_response(code, detail, *extra)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        RESPONSES.labels(route, str(code)).inc()

    return app


class LingeringTransport:
    """A connection's transport whose close() sends what is queued and a FIN, then reads and
    drops whatever the client still sends for up to LINGER_SECONDS before closing (nginx's
    lingering close). Closing a socket that has unread bytes sends a reset instead, and a reset
    can destroy the answer (the 408 to a trickling upload, the 431 to a huge head) before the
    client has read it. Everything else is the transport's own."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.raw = transport
        self.lingering: TimerHandle | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    def is_closing(self) -> bool:
        return self.lingering is not None or self.raw.is_closing()

    def close(self) -> None:
        if self.is_closing():
            return
        if not self.raw.can_write_eof():
            self.raw.close()
            return
        self.raw.write_eof()  # after the queued answer
        self.raw.resume_reading()  # keep reading, so the kernel holds nothing unread
        self.lingering = asyncio.get_running_loop().call_later(LINGER_SECONDS, self.raw.close)

    def lost(self) -> None:
        if self.lingering is not None:
            self.lingering.cancel()


class HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing a request head past MAX_HEADER_BYTES."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size cap for each request head, and a
    cap on open connections (the module's docstring)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = cast(asyncio.Transport, LingeringTransport(transport))
        limits = settings()
        self.head_timer: TimerHandle | None = None
        self.awaiting_head = True  # bytes that arrive now are a request line or headers
        self.head_bytes = 0  # raw bytes received since this head began
        self.head_size = 0  # bytes of the URL and headers parsed so far
        self.arm_head_timer()
        if len(self.connections) > limits.max_connections:
            retry = limits.retry_after_seconds
            self.app = rejecting_app(
                503,
                f"the service has {len(self.connections) - 1} connections open, its limit "
                f"(MAX_CONNECTIONS); try again in {retry} s",
                "(connection limit)",
                (b"retry-after", str(retry).encode()),
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_head_timer()
        cast(LingeringTransport, self.transport).lost()
        super().connection_lost(exc)

    # --- the head's deadline -------------------------------------------------------------

    def arm_head_timer(self) -> None:
        self.cancel_head_timer()
        self.head_timer = self.loop.call_later(settings().header_timeout, self.head_timed_out)

    def cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def head_timed_out(self) -> None:
        self.head_timer = None
        if not self.transport.is_closing():
            HEADER_TIMEOUTS.inc()
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn armed its keep-alive timer: idle, waiting for the next request's head; its
        # first byte cancels that timer, so a head trickled from then on needs this deadline.
        if self.timeout_keep_alive_task is not None:
            self.arm_head_timer()

    # --- the head's size -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():  # lingering: the answer is sent, the rest is dropped
            return
        if self.awaiting_head:
            self.head_bytes += len(data)
        super().data_received(data)
        # Still no complete head after more than the limit: answer before buffering more of it.
        if (
            self.awaiting_head
            and self.head_bytes > settings().max_header_bytes
            and not self.transport.is_closing()
        ):
            self.send_431_response()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_size = 0

    # What the parser hands over, counted as it comes: a head that arrives whole in one read
    # is caught here. Raising stops the parser; uvicorn then calls send_400_response.
    def on_url(self, url: bytes) -> None:
        self.head_size += len(url)
        if self.head_size > settings().max_header_bytes:
            raise HeadTooLarge
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4  # ": " and CRLF
        if self.head_size > settings().max_header_bytes:
            raise HeadTooLarge
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        if self.head_size > settings().max_header_bytes:
            self.send_431_response()
        else:
            super().send_400_response(msg)

    def send_431_response(self) -> None:
        headers, body = json_response(
            431,
            f"the request line and headers are larger than {settings().max_header_bytes:,} "
            "bytes (MAX_HEADER_BYTES); send fewer or shorter headers",
        )
        lines = [STATUS_LINE[431], *(b"%s: %s\r\n" % pair for pair in headers), b"\r\n"]
        self.transport.write(b"".join(lines) + body)
        self.transport.close()
        RESPONSES.labels("(request head)", "431").inc()

    def on_headers_complete(self) -> None:
        self.awaiting_head = False
        self.cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.awaiting_head, self.head_bytes = True, 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The launcher's options: where it listens and uvicorn's timeouts."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--timeout-graceful-shutdown",
        type=int,
        default=None,
        help="seconds a shutdown waits for requests in flight (default: as long as they take)",
    )
    parser.add_argument(
        "--timeout-keep-alive", type=int, default=5, help="seconds an idle connection is kept"
    )
    parser.add_argument("--backlog", type=int, default=2048, help="the listen queue's length")
    parser.add_argument("--log-level", default="info", help="uvicorn's")


def config(args: argparse.Namespace) -> uvicorn.Config:
    """uvicorn's configuration of one worker: the app, this module's protocol, the timeouts."""
    settings()  # a bad setting fails here, with pydantic's message, before anything listens
    return uvicorn.Config(
        "service.app:app",
        host=args.host,
        port=args.port,
        http=PROTOCOL,
        backlog=args.backlog,
        timeout_keep_alive=args.timeout_keep_alive,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        log_level=args.log_level,
    )
