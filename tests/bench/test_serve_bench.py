"""`bench/serve.py` end to end, briefly: both servers, the load generator, the report."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from bench import serve
from tests.bench.runner import run_bench
from tests.service.conftest import publish


@pytest.mark.slow
def test_serve_bench_runs_and_reports_a_ratio(tmp_path: Path, mnist_dir: Path) -> None:
    models = tmp_path / "models"
    publish(models, "scheduler")  # a tiny fixture model: the benchmark times the service
    lines = run_bench(
        "serve.py", "--models-dir", str(models), "--mnist-dir", str(mnist_dir),
        "--concurrency", "1,8", "--duration", "0.5", "--warmup", "0.2", "--repeats", "1",
        timeout=120,
    )  # fmt: skip
    stdout = "\n".join(lines)
    assert re.fullmatch(r"ratio: \d+\.\d\d", lines[-1]), stdout
    assert any(re.match(r"target holds: no errors \(0 in [\d,]+ requests\)", x) for x in lines)
    for upload in ("28x28 PNG", "400x400 JPEG"):
        for clients in (1, 8):
            assert any(x.startswith(f"| {upload} | {clients} |") for x in lines), stdout


def test_load_generator_reconnects_when_an_idle_connection_was_closed() -> None:
    """A server closes keep-alive connections idle past its timeout, as uvicorn does after 5 s
    while the other app takes its turn: the client sends again on a new connection."""
    answer = b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"digit":7}'
    connections = 0

    async def answer_once_then_hang_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()  # as if idle past the keep-alive timeout, without saying so

    async def two_posts() -> list[tuple[int, bytes]]:
        server = await asyncio.start_server(answer_once_then_hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        connection = serve.Connection(
            f"http://127.0.0.1:{port}/predict/x", b"GET / HTTP/1.1\r\n\r\n"
        )
        async with server:
            first = await connection.post()
            await asyncio.sleep(0.05)  # the server has hung up by now
            second = await connection.post()
            connection.close()
        return [first, second]

    assert asyncio.run(two_posts()) == [(200, b'{"digit":7}')] * 2
    assert connections == 2
