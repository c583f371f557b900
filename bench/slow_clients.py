"""Slow and lying clients against the service's launcher, and against uvicorn alone.

    python bench/slow_clients.py [--seconds 40] [--clients 100]

Two servers in turn, each with its production settings: the service as its image runs it
(`python -m service`: BODY_TIMEOUT 30 s, HEADER_TIMEOUT 10 s), on a fixture volume; and, as
the baseline, `uvicorn bench.bare_app:app`, a FastAPI app that reads uploads with nothing of
ours in front. Against each: --clients connections send an upload's headers and then trickle
its body a byte a second; a fifth as many each send nothing after connecting, and as many
trickle their headers a byte a second. Meanwhile one ordinary client posts a 28x28 digit every
half second. Each connection's time until the server closed it is recorded, up to --seconds.

It prints, per server and kind of client, how many were closed and when, and the ordinary
client's slowest answer; its last line the cut-off times against what uvicorn alone did.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere

from tests.servers import free_port  # noqa: E402
from tests.service.conftest import publish  # noqa: E402

UPLOAD_HEAD = (
    b"POST /predict/gap HTTP/1.1\r\nHost: bench\r\nContent-Type: image/png\r\n"
    b"Content-Length: 100000\r\n\r\n"
)
HEAD = b"POST /predict/gap HTTP/1.1\r\nHost: bench\r\nX-Slow: " + b"a" * 1000


async def hold(port: int, first: bytes, drip: bytes, seconds: float) -> float | None:
    """Connect, send `first`, then `drip` a byte a second: seconds until closed, or None."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    writer.write(first)

    async def dripping() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in drip:
                await asyncio.sleep(1)
                writer.write(bytes([byte]))
                await writer.drain()

    task = asyncio.create_task(dripping())
    try:
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(reader.read(), seconds)  # returns when the server closes
        return time.monotonic() - start
    except TimeoutError:
        return None
    finally:
        task.cancel()
        writer.close()


async def attack(
    url: str, port: int, clients: int, seconds: float, png: bytes
) -> tuple[dict[str, list[float | None]], float]:
    """Every kind of slow client at once, and an ordinary one; (closing times, slowest answer)."""
    kinds = {
        "trickled body": (UPLOAD_HEAD, b"\0" * 100_000, clients),
        "silent": (b"", b"", clients // 5),
        "trickled headers": (b"", HEAD, clients // 5),
    }
    tasks = {
        name: [asyncio.create_task(hold(port, first, drip, seconds)) for _ in range(count)]
        for name, (first, drip, count) in kinds.items()
    }
    slowest = 0.0
    async with httpx.AsyncClient(base_url=url, timeout=seconds) as ordinary:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline - 1:
            started = time.monotonic()
            answer = await ordinary.post("/predict/gap", files={"file": ("d.png", png)})
            answer.raise_for_status()
            slowest = max(slowest, time.monotonic() - started)
            await asyncio.sleep(0.5)
    return {name: list(await asyncio.gather(*group)) for name, group in tasks.items()}, slowest


@contextlib.contextmanager
def server(argv: list[str], env: dict[str, str], log: Path) -> Iterator[str]:
    with open(log, "wb") as output:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=output, stderr=output)
    url = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"{argv} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=25)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--clients", type=int, default=100)
    args = parser.parse_args()
    png, digit = io.BytesIO(), Image.new("L", (28, 28), 255)
    ImageDraw.Draw(digit).line([(14, 5), (14, 23)], fill=0, width=3)  # a one
    digit.save(png, "PNG")
    cutoffs: dict[str, dict[str, list[float | None]]] = {}
    with tempfile.TemporaryDirectory(prefix="slow-clients-") as tmp:
        publish(Path(tmp) / "models", "gap")
        env = os.environ | {"MODELS_DIR": str(Path(tmp) / "models"), "PYTHONPATH": str(ROOT)}
        servers = {
            "python -m service": [sys.executable, "-m", "service"],
            "uvicorn alone": [sys.executable, "-m", "uvicorn", "bench.bare_app:app"],
        }
        print("| server | client | connections | closed | closed after s (min-median-max) |")
        print("|---|---|--:|--:|---|")
        for name, argv in servers.items():
            port = free_port()
            command = [*argv, "--host", "127.0.0.1", "--port", str(port)]
            with server(command, env, Path(tmp) / "server.log") as url:
                times, slowest = asyncio.run(
                    attack(url, port, args.clients, args.seconds, png.getvalue())
                )
            cutoffs[name] = times
            for kind, seconds in times.items():
                closed = sorted(s for s in seconds if s is not None)
                spread = (
                    f"{closed[0]:.2f} - {statistics.median(closed):.2f} - {closed[-1]:.2f}"
                    if closed
                    else f"still open after {args.seconds:g}"
                )
                print(f"| {name} | {kind} | {len(seconds)} | {len(closed)} | {spread} |")
            print(f"| {name} | ordinary client meanwhile | 1 | | slowest answer {slowest:.3f} |")

    def summary(name: str) -> str:
        parts = []
        for kind, seconds in cutoffs[name].items():
            closed = [s for s in seconds if s is not None]
            parts.append(
                f"{kind} {max(closed):.1f} s" if len(closed) == len(seconds)
                else f"{kind} {len(seconds) - len(closed)} of {len(seconds)} still open"
            )  # fmt: skip
        return ", ".join(parts)

    print(f"\ncut-off: {summary('python -m service')}; uvicorn alone: {summary('uvicorn alone')}")


if __name__ == "__main__":
    main()
