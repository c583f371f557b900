"""The training, live: `GET /progress` (what the trainer is doing, now) and `GET /progress/stream`
(the same as Server-Sent Events as it changes, for the lab page). Both read the volume only;
the feed behind them is `service/live.py`.
"""

from __future__ import annotations

import anyio
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from service.common import ErrorDetail, get_settings
from service.live import STREAM_PATH, LiveFeed, Snapshot, Stream, StreamRefused

router = APIRouter()

EXAMPLE_STREAM = (
    "retry: 2000\n\n"
    'id: 7\nevent: snapshot\ndata: {"steps": [...], "serving": {"gap": "2026..."}}\n\n'
    'id: 8\nevent: progress\ndata: {"step": "scheduler", "state": "training", "epoch": 3, ...}\n\n'
    ": keep-alive\n\n"
    'id: 9\nevent: published\ndata: {"step": "scheduler", "version": "2026...", "previous": null}\n\n'
)


class EventStream(StreamingResponse):
    """A stream's frames as text/event-stream; it leaves the feed however the response ends
    (the page gone, the service stopping), even before its first frame."""

    def __init__(self, feed: LiveFeed, stream: Stream, keep_alive: float) -> None:
        super().__init__(
            feed.frames(stream, keep_alive),
            media_type="text/event-stream",
            # no-cache: every byte as it comes; X-Accel-Buffering: nginx passes it on unbuffered.
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
        self.feed, self.stream = feed, stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.feed.leave(self.stream)


async def get_feed(request: Request) -> LiveFeed:
    feed: LiveFeed = request.app.state.live
    return feed


@router.get("/progress")
async def progress(request: Request) -> Snapshot:
    """Every step with a progress file on the volume (training, or how its last run ended),
    read now, and the version of each step this service serves. The page's first paint; a
    poller's alternative to the stream."""
    return await anyio.to_thread.run_sync((await get_feed(request)).read)


@router.get(
    STREAM_PATH,
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"example": EXAMPLE_STREAM}},
            "description": "Server-Sent Events: `snapshot` first (as `GET /progress`), then "
            "`progress` (one step, as in `steps`), `published` (step, version, previous), "
            "`cleared` (a progress file removed) and `closing` (the service stops; reconnect). "
            "A comment every KEEPALIVE_SECONDS keeps proxies from closing an idle stream.",
        },
        503: {
            "model": ErrorDetail,
            "description": "MAX_STREAMS streams are open already, or the service is stopping",
        },
    },
)
async def progress_stream(request: Request) -> StreamingResponse:
    """Training progress and publishes as they happen, for as long as the page stays open."""
    feed = await get_feed(request)
    settings = await get_settings(request)
    try:
        stream = feed.open()
    except StreamRefused as e:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            str(e),
            headers={"retry-after": str(settings.retry_after_seconds)},
        ) from None
    return EventStream(feed, stream, settings.keepalive_seconds)
