"""The training, live: `GET /progress` and the Server-Sent Events of `GET /progress/stream`.

The snapshot is tested on the app in-process; the stream on a real uvicorn (and on
`python -m service`'s workers), since what matters there is the connection: events arriving as
progress files change, keep-alive comments, the bound on open streams, the cut at shutdown.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service import live
from service.models import ModelRegistry
from tests.conftest import ROOT
from tests.servers import serve
from tests.service.conftest import publish
from volume import EpochMetrics
from volume.progress import HEARTBEAT_SECONDS, StepProgress, now_iso, progress_path, write_progress

EPOCH = EpochMetrics(
    epoch=1, train_loss=0.4, train_accuracy=88.0, test_loss=0.3, test_accuracy=91.0, lr=0.01,
    seconds=2.0,
)  # fmt: skip


def progress(step: str = "dropout", **fields: object) -> StepProgress:
    """A progress file as a live trainer on another host writes it; `fields` change it."""
    values: dict[str, object] = {
        "step": step, "host": "trainer-host", "pid": 1, "started_at": now_iso(),
        "updated_at": now_iso(), "epochs": 4, "epoch": 2, "fraction": 0.5, "history": [EPOCH],
        "elapsed_seconds": 3.0, "eta_seconds": 9.0,
    }  # fmt: skip
    return StepProgress.model_validate(values | fields)


def dead_pid() -> int:
    """The id of a process of this host that has ended."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


LONG_AGO = (datetime.now(UTC) - timedelta(seconds=7 * HEARTBEAT_SECONDS)).isoformat()

# (the file, made when the test runs: a file made at collection may be stale by then on a busy
# machine; the state shown, stale, done)
SHOWN = {
    "training": (lambda: progress(), "training", False, 0.375),
    "published": (lambda: progress(state="published", version="v1", eta_seconds=None), "published", False, 1.0),
    "failed": (lambda: progress(state="failed", message="out of memory"), "failed", False, 0.375),
    "silent for 7 heartbeats": (lambda: progress(updated_at=LONG_AGO), "stopped", True, 0.375),
    "its process gone": (lambda: progress(host=socket.gethostname(), pid=dead_pid()), "stopped", True, 0.375),
}  # fmt: skip


@pytest.mark.parametrize("case", SHOWN)
def test_the_snapshot_shows_each_state(client: TestClient, models_dir: Path, case: str) -> None:
    written, state, stale, done = SHOWN[case]
    write_progress(models_dir, written())
    answer = client.get("/progress")
    assert answer.status_code == 200
    (step,) = answer.json()["steps"]
    assert (step["step"], step["state"], step["stale"]) == ("dropout", state, stale)
    assert step["done"] == pytest.approx(done)
    assert step["history"] == [EPOCH.model_dump()]
    assert (step["eta_seconds"] is not None) == (state == "training")
    if stale:
        assert "went silent" in step["message"]


def test_the_snapshot_orders_steps_and_skips_what_it_cannot_read(
    client: TestClient, models_dir: Path
) -> None:
    for step in ("tiny", "setup", "gap"):
        write_progress(models_dir, progress(step))
    progress_path(models_dir, "lighter").write_text("{half a file")
    progress_path(models_dir, "unknown").write_text(progress("gap").model_dump_json())
    snapshot = client.get("/progress").json()
    assert [s["step"] for s in snapshot["steps"]] == ["setup", "gap", "tiny"]
    served = client.get("/steps").json()
    assert snapshot["serving"] == {s["slug"]: s["version"] for s in served if s["trained"]}


def test_an_empty_volume_has_nothing_in_progress(empty_client: TestClient) -> None:
    assert empty_client.get("/progress").json() == {"steps": [], "serving": {}}


def test_changes_between_snapshots() -> None:
    now = datetime.now(UTC)
    training = live.live_step(progress("gap"), now)
    later = live.live_step(progress("gap", epoch=3, fraction=0.1), now)
    before = live.Snapshot(steps=[training, live.live_step(progress("tiny"), now)], serving={})
    after = live.Snapshot(steps=[later], serving={"gap": "v2"})
    kinds = [(kind, data.model_dump()["step"]) for kind, data in live.changes(before, after)]
    assert kinds == [("published", "gap"), ("progress", "gap"), ("cleared", "tiny")]
    assert list(live.changes(after, after)) == []


def test_a_page_that_stops_reading_loses_its_stream(models_dir: Path) -> None:
    """Its queue overflows, it is marked behind, and its stream ends without sending what was
    queued (its browser reconnects, to a snapshot): a frozen tab holds no memory."""

    async def scenario() -> tuple[bool, list[bytes], int]:
        feed = live.LiveFeed(models_dir, ModelRegistry(models_dir), max_streams=5)
        stream = feed.open()
        for epoch in range(live.QUEUE_EVENTS + 1):
            feed._send("progress", live.live_step(progress(epoch=epoch + 1), datetime.now(UTC)))
        frames = [f async for f in feed.frames(stream, keep_alive=60)]
        feed.leave(stream)
        return stream.behind, frames, feed.open_streams

    behind, frames, still_open = asyncio.run(scenario())
    assert behind and frames == [live.RETRY] and still_open == 0


# --- On a real server ------------------------------------------------------------------------


def events(response: httpx.Response) -> Iterator[tuple[str, dict | None]]:
    """(kind, data) of each Server-Sent Event as it arrives; ("comment", None) for a comment."""
    kind, data = "", ""
    for line in response.iter_lines():
        if line.startswith(":"):
            yield "comment", None
        elif line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif not line and kind:
            yield kind, json.loads(data)
            kind, data = "", ""


def next_event(stream: Iterator[tuple[str, dict | None]], kind: str) -> dict | None:
    """Read until an event of `kind` (the client's read timeout bounds the wait)."""
    for got, data in stream:
        if got == kind:
            return data
    raise AssertionError(f"the stream ended before a {kind!r} event")


def launch(how: str, port: int) -> list[str]:
    if how == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "service.app:app", "--port", str(port)]
    return [sys.executable, "-m", "service", "--workers", "2", "--port", str(port)]


def served(models_dir: Path, log: Path, how: str = "uvicorn", **env: str):
    environment = os.environ | {
        "MODELS_DIR": str(models_dir),
        "POLL_SECONDS": "0.2",
        "PYTHONPATH": str(ROOT),
        **{k.upper(): v for k, v in env.items()},
    }
    return serve(lambda port: launch(how, port), environment, ROOT, log)


def metric(client: httpx.Client, name: str) -> float:
    lines = client.get("/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(name))


@pytest.mark.slow
def test_the_stream_pushes_progress_and_publishes(models_dir: Path, tmp_path: Path) -> None:
    with (
        served(models_dir, tmp_path / "log", keepalive_seconds="0.5") as (client, _),
        client.stream("GET", live.STREAM_PATH, timeout=10) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = events(response)
        snapshot = next_event(stream, "snapshot")
        assert snapshot is not None and set(snapshot["serving"]) == {"gap", "scheduler"}
        assert snapshot["steps"] == []
        assert metric(client, "mnist_live_streams") == 1

        write_progress(models_dir, progress("dropout", epoch=1, fraction=0.2, history=[]))
        first = next_event(stream, "progress")
        write_progress(models_dir, progress("dropout", epoch=2, fraction=0.0))
        second = next_event(stream, "progress")
        assert first is not None and second is not None
        assert (first["epoch"], len(first["history"])) == (1, 0)
        assert (second["epoch"], len(second["history"])) == (2, 1)

        version = publish(models_dir, "dropout")
        assert next_event(stream, "published") == {
            "step": "dropout", "version": version, "previous": None
        }  # fmt: skip
        assert next_event(stream, "comment") is None  # a keep-alive, the stream idle
        progress_path(models_dir, "dropout").unlink()
        assert next_event(stream, "cleared") == {"step": "dropout"}
        assert metric(client, 'mnist_live_events_total{kind="progress"}') == 2
        assert metric(client, 'mnist_live_events_total{kind="published"}') == 1


@pytest.mark.slow
def test_streams_are_bounded_and_take_no_place_from_predictions(
    models_dir: Path, tmp_path: Path
) -> None:
    """MAX_STREAMS=2: a third stream is refused with 503; while two are open, a service that
    answers one request at a time (MAX_REQUESTS=1) still answers; a closed stream frees its place."""
    with served(models_dir, tmp_path / "log", max_streams="2", max_requests="1") as (client, _):
        with (
            client.stream("GET", live.STREAM_PATH, timeout=10) as one,
            client.stream("GET", live.STREAM_PATH, timeout=10) as two,
        ):
            # Both readers kept: a generator dropped mid-stream closes its connection.
            readers = events(one), events(two)
            assert all(next_event(reader, "snapshot") is not None for reader in readers)
            refused = client.get(live.STREAM_PATH)
            assert refused.status_code == 503
            assert "MAX_STREAMS" in refused.json()["detail"]
            assert refused.headers["retry-after"] == "1"
            assert client.get("/steps").status_code == 200
            assert client.get("/progress").status_code == 200
        deadline = time.monotonic() + 10
        while metric(client, "mnist_live_streams") > 0:  # the server notices they left
            assert time.monotonic() < deadline, "closed streams still counted"
            time.sleep(0.1)
        with client.stream("GET", live.STREAM_PATH, timeout=10) as again:
            assert again.status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("how", ["uvicorn", "python -m service"])
def test_shutdown_ends_open_streams_at_once(models_dir: Path, tmp_path: Path, how: str) -> None:
    """SIGTERM with pages open: each stream gets `closing` and ends, and the server exits in
    seconds (uvicorn would otherwise wait for them forever)."""
    log = tmp_path / "log"
    with served(models_dir, log, how) as (client, process):
        opened = [client.stream("GET", live.STREAM_PATH, timeout=10) for _ in range(3)]
        streams = [events(context.__enter__()) for context in opened]
        for stream in streams:
            assert next_event(stream, "snapshot") is not None
        time.sleep(0.5)  # every worker's streams open, and its handlers installed
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        for stream in streams:
            assert next_event(stream, "closing") == {"detail": "the service is shutting down"}
            assert list(stream) == []  # and then the stream ends
        assert process.wait(timeout=15) == -signal.SIGTERM
        assert time.monotonic() - started < 10
        for context in opened:
            context.__exit__(None, None, None)
    assert "graceful shutdown exceeded" not in log.read_text()
