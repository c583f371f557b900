"""Real server processes for tests: started on a free 127.0.0.1 port, always stopped."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(
    argv: Callable[[int], list[str]], env: Mapping[str, str], cwd: Path, log: Path
) -> Iterator[tuple[httpx.Client, subprocess.Popen[bytes]]]:
    """Run ``argv(port)``; yield a client once ``/healthz`` answers, and the process."""
    port = free_port()
    with open(log, "wb") as output:
        process = subprocess.Popen(argv(port), cwd=cwd, env=dict(env), stdout=output, stderr=output)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log.read_text()
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/healthz", timeout=2).status_code == 200:
                        break
                assert time.monotonic() < deadline, f"no answer in 60 s:\n{log.read_text()}"
                time.sleep(0.2)
            yield client, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
