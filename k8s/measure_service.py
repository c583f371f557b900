"""Measure what k8s/service-deployment.yaml's resource requests and limits are set from.

    .venv/bin/python k8s/measure_service.py --models MODELS_DIR [--requests 400] [--clients 2]

Starts one worker of the service (`python -m service --workers 1`, as each pod runs it) on
127.0.0.1 on a model volume (train every step first: `python -m trainer run --steps all`),
reads its memory once every published step is loaded, then sends `--requests` uploads per kind
from `--clients` connections at once, each kind in turn: MNIST digits as 28x28 PNGs,
photo-like uploads (tests/service/photos.py: JPEGs and PNGs of hundreds of pixels), and a tenth
as many 12 MP phone photos (4000x3000 JPEGs, the expensive case), each to every published step
in turn. It prints the process's resident memory (idle, after each kind, and its peak) and the
CPU time one request of each kind costs (user + system, from /proc). Linux only (/proc); needs
MNIST (MNIST_DIR) for the digits.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.servers import serve  # noqa: E402
from tests.service.photos import encode, load_mnist, photo_like_set  # noqa: E402


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def phone_photo(digit: np.ndarray) -> bytes:
    """A 4000x3000 JPEG of dark ink on slightly noisy paper: a phone camera's default."""
    rng = np.random.default_rng(int(digit.sum()))
    ink = np.asarray(Image.fromarray(digit).resize((1800, 1800), Image.Resampling.BILINEAR))
    paper = np.full((3000, 4000), 235, np.float32) + rng.normal(0, 4, (3000, 4000))
    paper[600:2400, 1100:2900] -= ink * 0.8
    return encode(Image.fromarray(paper.clip(0, 255).astype(np.uint8)), "JPEG", quality=90)


def load(
    client: httpx.Client, uploads: list[tuple[bytes, str]], steps: list[str], clients: int
) -> None:
    """Every upload once, to the steps in turn, from `clients` threads sharing the list."""
    failures: list[str] = []
    lock, position = threading.Lock(), iter(range(len(uploads)))

    def worker() -> None:
        while True:
            with lock:
                i = next(position, None)
            if i is None:
                return
            data, kind = uploads[i]
            answer = client.post(
                f"/predict/{steps[i % len(steps)]}", content=data, headers={"content-type": kind}
            )
            if answer.status_code != 200:
                failures.append(answer.text[:200])

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, e.g. {failures[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", type=Path, required=True, help="a model volume")
    parser.add_argument("--requests", type=int, default=400, help="uploads per kind")
    parser.add_argument("--clients", type=int, default=2, help="concurrent connections")
    parser.add_argument("--mnist", type=Path, default=Path(os.environ.get("MNIST_DIR", "")))
    args = parser.parse_args()

    digits, labels = load_mnist(args.mnist)
    kinds = {
        "28x28 PNG digit": [
            (encode(Image.fromarray(d), "PNG"), "image/png") for d in digits[: args.requests]
        ],
        "photo-like upload": [
            (p.data, p.content_type) for p in photo_like_set(digits, labels, args.requests)
        ],
        "12 MP phone photo": [
            (phone_photo(d), "image/jpeg") for d in digits[: max(1, args.requests // 10)]
        ],
    }
    env = os.environ | {"MODELS_DIR": str(args.models), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "service", "--workers", "1", "--host", "127.0.0.1"]
    log = Path("/tmp/measure_service.log")
    with serve(lambda port: [*command, "--port", str(port)], env, ROOT, log) as (client, process):
        steps = client.get("/readyz").json()["steps"]
        time.sleep(1)
        pid = process.pid
        print(f"steps loaded: {len(steps)} ({', '.join(steps)})")
        print(f"resident memory, idle: {status_kib(pid, 'VmRSS') / 1024:.0f} MiB")
        for name, uploads in kinds.items():
            before, started = cpu_seconds(pid), time.perf_counter()
            load(client, uploads, steps, args.clients)
            cpu, wall = cpu_seconds(pid) - before, time.perf_counter() - started
            print(
                f"{name}: {len(uploads)} requests in {wall:.1f} s, "
                f"{1000 * cpu / len(uploads):.2f} ms CPU each; "
                f"resident memory after: {status_kib(pid, 'VmRSS') / 1024:.0f} MiB"
            )
        print(f"resident memory, peak: {status_kib(pid, 'VmHWM') / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
