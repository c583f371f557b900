"""What a request may take: a deadline for its body, a cap on requests in flight, and a count of
every answer by route and status code (the Prometheus metrics in `service/telemetry.py`).

`RequestLimits` is ASGI middleware, so it holds however the app is served, `uvicorn
service.app:app` included. What needs the connection itself (a deadline for the headers, a cap
on their size and on open connections) is in `service/server.py`, the service's launcher.

- Body deadline: the whole body must arrive within BODY_TIMEOUT seconds of the headers. A
  client that trickles a byte a second, or whose Content-Length promises more than it sends, is
  answered 408 and its connection closed. A deadline per read would not do: a trickle of one
  byte a second never waits long for any one read.
- Requests in flight: a request counts once its body has arrived; past MAX_REQUESTS it is
  answered 503 with Retry-After at once. A client still sending its body holds a connection
  (capped by MAX_CONNECTIONS, timed by BODY_TIMEOUT), not a place among the requests that
  decode and infer. /healthz, /readyz and /metrics are always answered, so that an
  orchestrator does not restart a service that is only busy.

Cost: 13-23 us a request, measured around a no-op app on this 2-core machine while it was
shared (two wrapped callables, one timer while a body is read, one counter; a timer per read,
as anyio.fail_after or asyncio.timeout would set, made it 75-100 us): a few percent of a 28x28
prediction, for a process that no client can hold open forever.
"""

from __future__ import annotations

import asyncio
import json

from fastapi import HTTPException, status
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.live import STREAM_PATH
from service.settings import Settings
from service.telemetry import IN_FLIGHT, RESPONSES

ALWAYS_ANSWERED = frozenset({"/healthz", "/readyz", "/metrics"})
# Route labels of answers that no route gave: a path that no route matches (404), and a request
# refused before routing because MAX_REQUESTS are in flight (503).
UNMATCHED, OVER_CAPACITY = "(unmatched)", "(over capacity)"


def route_of(scope: Scope) -> str:
    """The template of the route that answered (`/predict/{step}`): a label of bounded number."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path or (UNMATCHED if route is None else "/")


async def answer_json(
    send: Send, code: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if (name == b"content-length" and value != b"0") or name == b"transfer-encoding":
            return True
    return False


class RequestLimits:
    """ASGI middleware: a deadline for each request's body, a cap on requests in flight.

    A request counts as in flight once its body has arrived (at once, for one without): a
    client still sending holds a connection (MAX_CONNECTIONS, BODY_TIMEOUT), not one of the
    MAX_REQUESTS that decode and infer, so trickling clients cannot lock everyone else out.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.in_flight = 0
        self._responses: dict[tuple[str, int], Counter] = {}  # bound labels, as telemetry's

    def count(self, route: str, code: int) -> None:
        counter = self._responses.get((route, code))
        if counter is None:
            counter = self._responses[(route, code)] = RESPONSES.labels(route, str(code))
        counter.inc()

    def admit(self, settings: Settings, path: str) -> bool:
        """Count one more request in flight, unless MAX_REQUESTS already are."""
        if self.in_flight >= settings.max_requests and path not in ALWAYS_ANSWERED:
            return False
        self.in_flight += 1
        IN_FLIGHT.inc()  # a gauge workers can share (service/telemetry.py): ~1 us
        return True

    def busy(self, settings: Settings) -> tuple[str, dict[str, str]]:
        """The 503's detail and headers."""
        retry = settings.retry_after_seconds
        detail = (
            f"the service is answering {self.in_flight} requests, its limit (MAX_REQUESTS); "
            f"try again in {retry} s"
        )
        return detail, {"retry-after": str(retry)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings: Settings = scope["app"].state.settings
        body_done = not has_body(scope)
        admitted = refused = False
        # A live stream lasts as long as its page: MAX_STREAMS bounds those, not MAX_REQUESTS.
        if body_done and scope["path"] != STREAM_PATH:
            if not self.admit(settings, scope["path"]):
                detail, headers = self.busy(settings)
                encoded = [(k.encode(), v.encode()) for k, v in headers.items()]
                await answer_json(send, status.HTTP_503_SERVICE_UNAVAILABLE, detail, encoded)
                self.count(OVER_CAPACITY, status.HTTP_503_SERVICE_UNAVAILABLE)
                return
            admitted = True
        # One timer for the whole body, armed only for a request that has one. It cancels the
        # task while it waits in receive(), and receive turns that into the 408 (as
        # asyncio.timeout does, but once a request rather than once a read: 6 us, not 26).
        task, expired, waiting = asyncio.current_task(), False, False

        def expire() -> None:
            nonlocal expired
            expired = True
            if waiting and task is not None:
                task.cancel()

        timer = (
            None
            if body_done
            else asyncio.get_running_loop().call_later(settings.body_timeout, expire)
        )

        async def receive_in_time() -> Message:
            nonlocal body_done, admitted, refused, waiting
            if body_done:  # later reads only wait for a disconnect: no deadline
                return await receive()
            try:
                if expired:
                    raise asyncio.CancelledError
                waiting = True
                message = await receive()
            except asyncio.CancelledError:
                if not expired or (task is not None and task.uncancel() > 0):
                    raise  # a real cancellation (the client left, a shutdown)
                raise HTTPException(
                    status.HTTP_408_REQUEST_TIMEOUT,
                    f"the request body did not arrive within {settings.body_timeout:g} s "
                    "(BODY_TIMEOUT); send it whole and at once, with a Content-Length that "
                    "matches what is sent",
                    headers={"connection": "close"},
                ) from None
            finally:
                waiting = False
            body_done = message["type"] != "http.request" or not message.get("more_body")
            if body_done and timer is not None:
                timer.cancel()
            if body_done and not admitted:  # the body is here: now it takes a place
                if not self.admit(settings, scope["path"]):
                    refused = True
                    detail, headers = self.busy(settings)
                    raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail, headers)
                admitted = True
            return message

        code = 0

        async def send_counted(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive_in_time, send_counted)
        except BaseException:
            code = code or status.HTTP_500_INTERNAL_SERVER_ERROR  # what uvicorn will answer
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if admitted:
                self.in_flight -= 1
                IN_FLIGHT.dec()
            if code:
                self.count(OVER_CAPACITY if refused else route_of(scope), code)
