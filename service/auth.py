"""API keys: when API_KEYS or API_KEYS_FILE names any (service/settings.py), every route needs
one except the probes and scrapers' (/healthz, /readyz, /metrics), the page and its static
files, and the API's own docs (/docs, /redoc, /openapi.json). With none, nothing is asked for:
a local `make serve` or `make demo` stays open.

A key is sent in either of the two headers model servers take: `Authorization: Bearer KEY`
(RFC 6750; TorchServe's token authorization, and what the gateways in front of KServe and
Triton check) or `X-API-Key: KEY` (LitServe's LIT_SERVER_API_KEY, and the usual name where a
client cannot set Authorization). A missing or wrong key is answered 401 with a JSON detail that
says how to send one (`{"error": ...}` under /v2, the protocol's form), before the body is read.

Every key sent is compared with every configured key by `hmac.compare_digest`, without
stopping at a match, so the time taken does not tell how much of a key was right, nor which.
Keys are never logged (Settings hides them in its errors); refusals are counted in /metrics as
`mnist_http_responses_total{route="(no API key)"|"(wrong API key)",code="401"}`.

This is ASGI middleware outside `RequestLimits`: a request without a valid key takes no place
among the MAX_REQUESTS in flight. The middleware is there whatever the settings; with no key
configured it costs one attribute lookup a request.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from service.telemetry import RESPONSES

OPEN_PATHS = frozenset(
    {"/", "/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc",
     "/openapi.json", "/favicon.ico"}
)  # fmt: skip
OPEN_PREFIXES = ("/static/",)
HEADER = "X-API-Key"
HOW_TO_SEND = f"send it as `Authorization: Bearer KEY` or `{HEADER}: KEY`"
MISSING = f"this service needs an API key: {HOW_TO_SEND} (its operator has the keys)"
WRONG = f"the API key sent is not one of this service's keys; {HOW_TO_SEND} with a valid one"
# The labels of `RESPONSES`, in brackets as for every answer that no route gave.
NO_KEY, WRONG_KEY = "(no API key)", "(wrong API key)"


def is_open(path: str) -> bool:
    """Whether `path` is answered without a key."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def keys_sent(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The keys a request carries: a Bearer token and an X-API-Key value, as bytes."""
    sent = []
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            sent.append(value[7:].strip())
        elif name == b"x-api-key":
            sent.append(value.strip())
    return sent


def any_matches(sent: list[bytes], keys: tuple[bytes, ...]) -> bool:
    """Whether any key sent is a configured key, comparing every pair in constant time."""
    found = False
    for candidate in sent:
        for key in keys:
            found |= hmac.compare_digest(candidate, key)
    return found


class ApiKeys:
    """ASGI middleware: 401 for a request to a guarded route without a configured key."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._refused = {
            NO_KEY: RESPONSES.labels(NO_KEY, "401"),
            WRONG_KEY: RESPONSES.labels(WRONG_KEY, "401"),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        keys: tuple[bytes, ...] = scope["app"].state.api_keys
        if not keys or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        sent = keys_sent(scope["headers"])
        if any_matches(sent, keys):
            await self.app(scope, receive, send)
            return
        reason, detail = (WRONG_KEY, WRONG) if sent else (NO_KEY, MISSING)
        self._refused[reason].inc()
        field = "error" if scope["path"].startswith("/v2/") or scope["path"] == "/v2" else "detail"
        body = json.dumps({field: detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="mnist-steps"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
