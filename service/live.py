"""The training, live: what the trainer is doing and what it publishes, pushed to the lab's open
pages as Server-Sent Events (the routes are in `service/routes/live.py`).

One `LiveFeed` per worker. The app's poll loop (`service/app.py`), which refreshes the model
registry from the volume's index every POLL_SECONDS, calls `LiveFeed.update` after each refresh:
it reads the progress files (`volume/progress.py`, read-only like everything the service does on
the volume) and the versions the registry now serves, and hands what changed to every open
stream. So a page hears of a publish once this worker serves the new version, and the drawing it
answers again is answered by that version.

Events, each one `event:` line and one JSON `data:` line:

- `snapshot` (`Snapshot`): first on every stream, the whole state; a reconnecting page starts
  from it again, so no event needs to be replayed.
- `progress` (`LiveStep`): a step's progress file changed (a new epoch, a heartbeat with a new
  ETA, a finished run), or its writer went silent and it now shows as stopped.
- `cleared` (`Cleared`): a step's progress file is gone.
- `published` (`Published`): this worker serves a new version of a step.
- `closing`: the service is shutting down; the page (`static/live.js`) connects again.

Open pages cost little but are bounded: MAX_STREAMS streams per worker (past it 503), each with
a queue of QUEUE_EVENTS; a page that stops reading (a frozen tab) loses its stream once its queue
is full, rather than holding memory, and gets a fresh snapshot when its browser reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Literal, get_args

import anyio
from pydantic import BaseModel, Field

from service.models import ModelRegistry
from service.telemetry import LIVE_EVENTS, LIVE_STREAMS
from volume import STEPS, STEPS_BY_SLUG, EpochMetrics
from volume.progress import (
    HEARTBEAT_SECONDS,
    STALE_AFTER_HEARTBEATS,
    StepProgress,
    is_stale,
    read_progress,
)

STREAM_PATH = "/progress/stream"  # a request that lasts as long as its page: not "in flight"
QUEUE_EVENTS = 64  # events waiting for one stream; a page this far behind starts again
RETRY_MS = 2000  # how long a browser waits before reconnecting a stream that ended

EventKind = Literal["snapshot", "progress", "cleared", "published", "closing"]
EVENTS_SENT = {kind: LIVE_EVENTS.labels(kind) for kind in get_args(EventKind)}  # bound once


class LiveStep(BaseModel):
    """One step's training, as the page shows it: the progress file, with a stale one (its
    writer killed) shown as stopped."""

    step: str = Field(examples=["gap"])
    number: int = Field(examples=[6])
    title: str = Field(examples=["GAP"])
    state: Literal["training", "published", "failed", "stopped"] = Field(
        description="`training` while it runs; `published` once its version is in the index; "
        "`failed` or `stopped` when the run ended without one, or when its trainer went silent "
        "(then `stale` is true)"
    )
    stale: bool = Field(
        description="the file still says training, but its trainer has not written it for "
        f"{STALE_AFTER_HEARTBEATS:g} heartbeats ({STALE_AFTER_HEARTBEATS * HEARTBEAT_SECONDS:g} s"
        " by default) or its process is gone: killed"
    )
    epochs: int = Field(description="the epochs the run trains", examples=[15])
    epoch: int = Field(description="the epoch in hand, 1-based", examples=[3])
    fraction: float = Field(description="of the epoch in hand, 0..1", examples=[0.4])
    done: float = Field(description="of the whole run, 0..1", examples=[0.16])
    elapsed_seconds: float = Field(examples=[81.5])
    eta_seconds: float | None = Field(
        description="the trainer's estimate of the time left; null: not known yet", examples=[410]
    )
    started_at: str = Field(examples=["2026-12-03T15:02:11.120+00:00"])
    updated_at: str = Field(examples=["2026-12-03T15:03:32.600+00:00"])
    version: str | None = Field(description="the version it published, once published")
    message: str | None = Field(description="why it failed or stopped")
    history: list[EpochMetrics] = Field(description="the epochs done, as metrics.json has them")


class Snapshot(BaseModel):
    steps: list[LiveStep] = Field(
        description="every step with a progress file on the volume, in the design's order"
    )
    serving: dict[str, str] = Field(
        description="slug -> the version this service serves now",
        examples=[{"gap": "20261203T150700.123456Z-3f2a9c1b"}],
    )


class Published(BaseModel):
    step: str = Field(examples=["gap"])
    version: str = Field(examples=["20261203T150700.123456Z-3f2a9c1b"])
    previous: str | None = Field(description="the version it replaced; null: a first version")


class Cleared(BaseModel):
    step: str = Field(examples=["gap"])


def live_step(progress: StepProgress, now: datetime) -> LiveStep:
    stale = is_stale(progress, now)
    state = "stopped" if stale else progress.state
    # Said without the time since (updated_at has it): an event goes out only when it changes.
    message = "its trainer went silent before finishing (killed?)" if stale else progress.message
    done = (progress.epoch - 1 + progress.fraction) / max(1, progress.epochs)
    done = 1.0 if state == "published" else min(1.0, max(0.0, done))
    info = STEPS_BY_SLUG[progress.step]
    return LiveStep(
        step=progress.step,
        number=info.number,
        title=info.title,
        state=state,
        stale=stale,
        epochs=progress.epochs,
        epoch=progress.epoch,
        fraction=progress.fraction,
        done=done,
        elapsed_seconds=progress.elapsed_seconds,
        eta_seconds=None if state != "training" else progress.eta_seconds,
        started_at=progress.started_at,
        updated_at=progress.updated_at,
        version=progress.version,
        message=message,
        history=progress.history,
    )


def read_snapshot(root: Path, models: ModelRegistry, now: datetime | None = None) -> Snapshot:
    """The progress files on the volume and the versions served now (reads files: a thread)."""
    found = read_progress(root)
    now = now or datetime.now(UTC)
    steps = [live_step(found[s.slug], now) for s in STEPS if s.slug in found]
    return Snapshot(steps=steps, serving={s: m.version for s, m in models.models.items()})


def changes(before: Snapshot, after: Snapshot) -> Iterator[tuple[EventKind, BaseModel]]:
    """The events that turn `before` into `after`: publishes first, then progress."""
    for step, version in after.serving.items():
        previous = before.serving.get(step)
        if previous != version:
            yield "published", Published(step=step, version=version, previous=previous)
    old = {s.step: s for s in before.steps}
    for now in after.steps:
        if old.pop(now.step, None) != now:
            yield "progress", now
    for gone in old:
        yield "cleared", Cleared(step=gone)


def frame(kind: EventKind, number: int, data: BaseModel | dict[str, Any]) -> bytes:
    """One Server-Sent Event; its `id` is the feed's event count (for a reader's log)."""
    body = data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data)
    return f"id: {number}\nevent: {kind}\ndata: {body}\n\n".encode()


KEEP_ALIVE = b": keep-alive\n\n"  # a comment: browsers ignore it, proxies see bytes flow
RETRY = f"retry: {RETRY_MS}\n\n".encode()


class StreamRefused(Exception):
    """A stream cannot open now; the message says why and what to do."""


@dataclass(eq=False)
class Stream:
    """One open page: the frames waiting for it, and whether it fell too far behind."""

    queue: asyncio.Queue[tuple[EventKind, bytes]] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_EVENTS)
    )
    behind: bool = False  # its queue overflowed: end it, its browser reconnects


class LiveFeed:
    """The state the pages are shown and the streams that show it (all on the event loop)."""

    def __init__(self, root: Path, models: ModelRegistry, max_streams: int) -> None:
        self.root = Path(root)
        self.models = models
        self.max_streams = max_streams
        self.state = Snapshot(steps=[], serving={})
        self.closing = False
        self._streams: set[Stream] = set()
        self._count = 0  # events made, for their ids

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def read(self) -> Snapshot:
        return read_snapshot(self.root, self.models)

    async def update(self) -> None:
        """Read the volume's progress and the served versions; send what changed."""
        after = await anyio.to_thread.run_sync(self.read)
        for kind, data in changes(self.state, after):
            self._send(kind, data)
        self.state = after

    def _send(self, kind: EventKind, data: BaseModel | dict[str, Any]) -> None:
        self._count += 1
        encoded = frame(kind, self._count, data)  # once, whatever the number of pages
        for stream in self._streams:
            try:
                stream.queue.put_nowait((kind, encoded))
            except asyncio.QueueFull:
                stream.behind = True

    def open(self) -> Stream:
        """A new stream, its first frame the current snapshot; StreamRefused past the bound."""
        if self.closing:
            raise StreamRefused("the service is shutting down; the page reconnects by itself")
        if len(self._streams) >= self.max_streams:
            raise StreamRefused(
                f"{len(self._streams)} live streams are open, this service's limit "
                "(MAX_STREAMS); close another lab page, or read GET /progress instead"
            )
        stream = Stream()
        self._count += 1
        stream.queue.put_nowait(("snapshot", frame("snapshot", self._count, self.state)))
        self._streams.add(stream)
        LIVE_STREAMS.inc()
        return stream

    def leave(self, stream: Stream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)
            LIVE_STREAMS.dec()

    def close(self) -> None:
        """End every stream (the server is stopping) and refuse new ones."""
        if self.closing:
            return
        self.closing = True
        self._count += 1
        goodbye = frame("closing", self._count, {"detail": "the service is shutting down"})
        for stream in self._streams:
            while not stream.queue.empty():  # what it had not read yet no longer matters
                stream.queue.get_nowait()
            stream.queue.put_nowait(("closing", goodbye))

    async def frames(self, stream: Stream, keep_alive: float) -> AsyncIterator[bytes]:
        """What one stream sends, until the page leaves, falls behind, or the server stops.
        Whoever opened the stream leaves it when this ends (or never starts)."""
        yield RETRY
        while True:
            try:
                async with asyncio.timeout(keep_alive):
                    kind, encoded = await stream.queue.get()
            except TimeoutError:
                yield KEEP_ALIVE
                continue
            if stream.behind:  # what is queued is old news: it reconnects to a snapshot
                return
            yield encoded
            EVENTS_SENT[kind].inc()
            if kind == "closing":
                return


@contextlib.contextmanager
def closed_on_exit_signals(feed: LiveFeed) -> Iterator[None]:
    """Close the feed's streams as soon as the server is told to stop (SIGTERM, SIGINT).

    uvicorn's shutdown waits for every open request before it runs the app's lifespan
    shutdown, and tells a streaming response nothing: open streams would hold it forever (or
    until --timeout-graceful-shutdown cancels them, as errors). So the signal itself closes
    them. This handler runs first, then the one it replaced (uvicorn's, which starts the
    shutdown); both are restored as they were when the app stops. Signals can only be handled
    in the main thread: elsewhere (a test client's thread) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    replaced: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(feed.close)  # safe from a signal handler
        before = replaced[signum]
        if callable(before):
            before(signum, frame)
        elif before == signal.SIG_DFL:  # nothing else would stop the process: as before
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        replaced[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for number, before in replaced.items():
            if signal.getsignal(number) is handler and before is not None:
                signal.signal(number, before)
