"""Slow, lying and too many clients, on real sockets against the real launcher (`python -m
service`: uvicorn with service/server.py's protocol and service/limits.py's middleware).

The limits are set small (a second or two, a few connections) so that each test takes seconds;
each test says what it measured when it fails, and the cut-off times are printed (`-s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from tests.conftest import ROOT
from tests.servers import serve
from tests.service.conftest import publish
from tests.service.test_api import DIGIT

pytestmark = pytest.mark.slow
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0
SLACK = 1.0  # how late a cut-off may come on this shared 2-core machine
UPLOAD_HEAD = (
    b"POST /predict/gap HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
    b"Content-Length: 10000\r\n\r\n"
)


@contextlib.contextmanager
def launcher(tmp_path: Path, **limits: str) -> Iterator[tuple[httpx.Client, int]]:
    """`python -m service` on a volume serving `gap`; a client, and the port for raw sockets."""
    models_dir = tmp_path / "models"
    publish(models_dir, "gap")
    env = os.environ | {
        "MODELS_DIR": str(models_dir),
        "PYTHONPATH": str(ROOT),
        "HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "BODY_TIMEOUT": str(BODY_TIMEOUT),
        **limits,
    }
    command = [sys.executable, "-m", "service", "--workers", "1", "--timeout-keep-alive", "1"]
    with serve(
        lambda port: [*command, "--port", str(port)], env, ROOT, tmp_path / "service.log"
    ) as (client, _):
        yield client, int(str(client.base_url).rsplit(":", 1)[1].rstrip("/"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, int]]:
    """One launcher with the module's limits, for the tests that need none of their own."""
    with launcher(tmp_path_factory.mktemp("shared")) as running:
        yield running


def metric(client: httpx.Client, series: str) -> float:
    """One series' value in the service's /metrics (0 while it has none)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


async def read_all(reader: asyncio.StreamReader, limit: float) -> bytes:
    """Everything the server sends until it closes (or `limit` seconds pass: then fail)."""
    return await asyncio.wait_for(reader.read(), limit)


async def trickle_body(port: int, seconds: float) -> tuple[float, bytes]:
    """Send an upload's headers, then one body byte every 0.1 s: (seconds until closed, reply)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    writer.write(UPLOAD_HEAD)

    async def drip() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(int(seconds * 10)):
                await asyncio.sleep(0.1)
                writer.write(b"\0")
                await writer.drain()

    dripping = asyncio.create_task(drip())
    try:
        reply = await read_all(reader, seconds)
    finally:
        dripping.cancel()
        writer.close()
    return time.monotonic() - start, reply


def status_of(reply: bytes) -> int:
    found = re.match(rb"HTTP/1\.1 (\d{3}) ", reply)
    assert found, reply[:200]
    return int(found.group(1))


def test_trickling_uploads_are_cut_off_while_others_are_answered(
    shared: tuple[httpx.Client, int],
) -> None:
    """100 clients trickle an upload's body a byte at a time: each gets 408 and is closed at
    BODY_TIMEOUT, and meanwhile ordinary predictions are answered at once: a body still
    arriving holds a connection, not one of the MAX_REQUESTS (32) places."""
    client, port = shared
    timed_out = 'mnist_http_responses_total{code="408",route="/predict/{step}"}'
    before = metric(client, timed_out)

    async def scenario() -> tuple[list[tuple[float, bytes]], list[float]]:
        tricklers = [asyncio.create_task(trickle_body(port, 30)) for _ in range(100)]
        await asyncio.sleep(0.5)  # all of them connected and dripping
        latencies = []
        async with httpx.AsyncClient(base_url=str(client.base_url)) as normal:
            for _ in range(10):
                start = time.monotonic()
                answer = await normal.post("/predict/gap", files={"file": ("d.png", DIGIT)})
                latencies.append(time.monotonic() - start)
                assert answer.status_code == 200, answer.text
                await asyncio.sleep(0.05)
        return await asyncio.gather(*tricklers), latencies

    results, latencies = asyncio.run(scenario())
    cutoffs = sorted(seconds for seconds, _ in results)
    print(
        f"\n100 trickling uploads, BODY_TIMEOUT={BODY_TIMEOUT}: closed after "
        f"{cutoffs[0]:.2f}-{cutoffs[-1]:.2f} s (median {cutoffs[50]:.2f}); 10 predictions "
        f"meanwhile took at most {max(latencies) * 1000:.0f} ms"
    )
    assert {status_of(reply) for _, reply in results} == {408}
    assert b"BODY_TIMEOUT" in results[0][1] and b"connection: close" in results[0][1]
    assert cutoffs[0] >= BODY_TIMEOUT - 0.1 and cutoffs[-1] <= BODY_TIMEOUT + SLACK, cutoffs
    assert max(latencies) < 1.0, latencies
    assert metric(client, timed_out) == before + 100
    assert metric(client, "mnist_http_requests_in_flight") == 1  # this very request


def test_a_short_body_under_a_long_content_length_gets_408(
    shared: tuple[httpx.Client, int],
) -> None:
    _, port = shared

    async def lie() -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()
        writer.write(UPLOAD_HEAD + DIGIT[:50])  # 50 of the 10,000 bytes promised
        reply = await read_all(reader, 30)
        writer.close()
        return time.monotonic() - start, reply

    seconds, reply = asyncio.run(lie())
    print(f"\na body 9,950 bytes short: 408 and closed after {seconds:.2f} s")
    assert status_of(reply) == 408
    assert BODY_TIMEOUT - 0.1 <= seconds <= BODY_TIMEOUT + SLACK


async def hold(port: int, first: bytes, data: bytes, limit: float = 30) -> tuple[float, bytes]:
    """Connect, send `first` at once and then `data` a byte every 0.1 s; wait for the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    writer.write(first)

    async def drip() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in data:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.1)

    dripping = asyncio.create_task(drip())
    try:
        reply = await read_all(reader, limit)
    finally:
        dripping.cancel()
        writer.close()
    return time.monotonic() - start, reply


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("silent", b""),  # connects and sends nothing
        ("trickled headers", b"GET /steps HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 100),
    ],
)
def test_headers_that_do_not_arrive_in_time_close_the_connection(
    shared: tuple[httpx.Client, int], case: str, data: bytes
) -> None:
    client, port = shared
    before = metric(client, "mnist_http_header_timeouts_total")
    seconds, reply = asyncio.run(hold(port, b"", data))
    print(f"\n{case}: closed after {seconds:.2f} s (HEADER_TIMEOUT={HEADER_TIMEOUT})")
    assert reply == b""  # closed without an answer: there was no request to answer
    assert HEADER_TIMEOUT - 0.1 <= seconds <= HEADER_TIMEOUT + SLACK
    assert metric(client, "mnist_http_header_timeouts_total") == before + 1


def test_a_body_still_trickling_after_an_early_answer_is_cut_off(
    shared: tuple[httpx.Client, int],
) -> None:
    """404 before the body is read (unknown step); the client goes on trickling the body it
    promised: the connection waits for a next request's head, and HEADER_TIMEOUT ends it."""
    _, port = shared
    head = UPLOAD_HEAD.replace(b"/predict/gap", b"/predict/nope")
    seconds, reply = asyncio.run(hold(port, head, b"\0" * 1000))
    print(f"\n404, then the promised body trickled: closed after {seconds:.2f} s")
    assert status_of(reply) == 404
    assert HEADER_TIMEOUT - 0.1 <= seconds <= HEADER_TIMEOUT + SLACK


def test_idle_keep_alive_connections_close_as_uvicorn_does(
    shared: tuple[httpx.Client, int],
) -> None:
    _, port = shared
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        start, reply = time.monotonic(), b""
        while chunk := s.recv(65536):
            reply += chunk
        seconds = time.monotonic() - start
    assert status_of(reply) == 200
    assert 1.0 - 0.1 <= seconds <= 1.0 + SLACK  # --timeout-keep-alive 1


def raw_request(port: int, data: bytes, chunk: int = 0) -> bytes:
    """Send `data` (in pieces of `chunk` bytes, if given) and read the answer until closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        with contextlib.suppress(ConnectionError):  # the server may answer before it all went
            if chunk:
                for start in range(0, len(data), chunk):
                    s.sendall(data[start : start + chunk])
                    time.sleep(0.01)
            else:
                s.sendall(data)
        reply = b""
        with contextlib.suppress(ConnectionError):
            while piece := s.recv(65536):
                reply += piece
        return reply


@pytest.mark.parametrize("chunk", [0, 4096], ids=["at once", "in pieces"])
@pytest.mark.parametrize(
    "head",
    [
        b"GET /steps HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET /steps HTTP/1.1\r\nHost: test\r\n" + b"X-Many: a\r\n" * 5000 + b"\r\n",
        b"GET /steps?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: test\r\n\r\n",
    ],
    ids=["one huge header", "many headers", "huge URL"],
)
def test_oversized_request_heads_get_431(
    shared: tuple[httpx.Client, int], head: bytes, chunk: int
) -> None:
    client, port = shared
    reply = raw_request(port, head, chunk)
    assert status_of(reply) == 431, reply[:300]
    assert b"MAX_HEADER_BYTES" in reply and b"connection: close" in reply
    assert client.get("/healthz").status_code == 200


def test_a_head_just_under_the_limit_is_served(shared: tuple[httpx.Client, int]) -> None:
    _, port = shared
    head = b"GET /steps HTTP/1.1\r\nHost: test\r\nConnection: close\r\nX-Big: "
    assert status_of(raw_request(port, head + b"a" * 30_000 + b"\r\n\r\n", 4096)) == 200


def big_photo() -> bytes:
    """A 2000x2000 JPEG of a stroke: tens of ms to decode and preprocess."""
    image = Image.new("L", (2000, 2000), 230)
    ImageDraw.Draw(image).line([(900, 400), (1000, 1600)], fill=20, width=60)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_requests_past_max_requests_get_503_with_retry_after(tmp_path: Path) -> None:
    """Twelve photos at once against MAX_REQUESTS=2: those past it get 503 with Retry-After at
    once, the others their prediction; /healthz answers all along."""
    photo, jpeg = big_photo(), {"content-type": "image/jpeg"}
    with launcher(tmp_path, MAX_REQUESTS="2") as (client, _):

        async def scenario() -> tuple[list[httpx.Response], int]:
            async with httpx.AsyncClient(base_url=str(client.base_url), timeout=60) as many:
                posts = [many.post("/predict/gap", content=photo, headers=jpeg) for _ in range(12)]
                health = asyncio.create_task(many.get("/healthz"))
                return list(await asyncio.gather(*posts)), (await health).status_code

        answers, health = asyncio.run(scenario())
        codes = sorted(answer.status_code for answer in answers)
        assert set(codes) == {200, 503}, codes
        refused = [answer for answer in answers if answer.status_code == 503]
        assert all(answer.headers["retry-after"] == "1" for answer in refused)
        assert "MAX_REQUESTS" in refused[0].json()["detail"]
        assert health == 200
        series = 'mnist_http_responses_total{code="503",route="(over capacity)"}'
        assert metric(client, series) == len(refused)


def test_connections_past_max_connections_get_503_with_retry_after(tmp_path: Path) -> None:
    with launcher(tmp_path, MAX_CONNECTIONS="10", HEADER_TIMEOUT="30") as (client, port):
        client.close()  # its keep-alive connection would count
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
        try:
            time.sleep(0.2)
            reply = raw_request(port, b"GET /steps HTTP/1.1\r\nHost: test\r\n\r\n")
            assert status_of(reply) == 503, reply
            assert b"retry-after: 1" in reply and b"MAX_CONNECTIONS" in reply
        finally:
            for s in held:
                s.close()
        time.sleep(0.2)
        again = raw_request(port, b"GET /steps HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        assert status_of(again) == 200
