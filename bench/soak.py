"""Soak: many clients send mixed uploads and bad inputs while new versions are published.

    python bench/soak.py [--seconds 180] [--clients 32] [--publish-every 3]
                         [--models-dir DIR] [--mnist-dir DIR]

The service runs as it does in its image (`python -m service`, production settings; only
MODELS_DIR is set) on a temporary volume. Without --models-dir that volume holds a fixture model
(softmax of a linear layer, built with onnx.helper) for every step but the last; with it, the
current versions of a real volume (e.g. one `python -m trainer run` filled). A publisher process
republishes one step after another every --publish-every seconds through `volume.publish`, the
trainer's own publishing (a new immutable version, the index swapped), so the service swaps
models under the load all the time.

Each client (one keep-alive connection, its next request as soon as the last is answered) picks
a request at random, by weight: a 28x28 MNIST PNG, photo-like JPEG/PNG/WebP/... uploads of
MNIST digits (tests/service/photos.py), a 2400x1800 phone-sized JPEG, a batch of 8 PNGs, the
steps' list and metrics; and bad input: bytes that are no image, a text upload, an empty
multipart body, an unknown step, a step not trained yet, a decompression bomb, a body over
MAX_UPLOAD_BYTES. Each has the one status it must get; any other status, or a transport error,
is a failed request.

It prints a table per request kind (sent, as expected, p50/p99 ms), how many versions the
predictions came from, the service's RSS before the load, after it (--idle seconds later, 3 by
default) and at its peak (the kernel's high-water mark, VmHWM), and as its last line the failed
requests and the RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere

import volume  # noqa: E402
from tests.servers import free_port  # noqa: E402
from tests.service.photos import encode, load_mnist, photo_like_set  # noqa: E402


@dataclass(frozen=True)
class Request:
    """One kind of request: how to send it, the status it must get, how often (weight)."""

    name: str
    method: str
    path: str
    expected: int
    weight: int
    content: bytes | None = None
    content_type: str | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None


def requests(mnist_dir: Path, untrained: str) -> list[Request]:
    images, _ = load_mnist(mnist_dir)
    png = encode(Image.fromarray(images[0]), "PNG")
    photos = photo_like_set(images, np.zeros(len(images), int), 9, seed=1)
    rng = np.random.default_rng(2)
    phone = Image.open(io.BytesIO(photos[0].data)).convert("RGB").resize((2400, 1800))
    phone_jpeg = encode(
        Image.fromarray(
            (np.asarray(phone, np.float32) + rng.normal(0, 3, (1800, 2400, 3)))
            .clip(0, 255)
            .astype(np.uint8)
        ),
        "JPEG",
        quality=90,
    )
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, "PNG")  # 144 Mpx in a few KB: over the cap
    batch = [("file", (f"{i}.png", encode(Image.fromarray(images[i]), "PNG"), "image/png")) for i in range(8)]  # fmt: skip
    kinds = [
        Request("28x28 PNG", "POST", "/predict/gap", 200, 30, content=png, content_type="image/png"),
        Request("28x28 PNG, multipart", "POST", "/predict/6", 200, 15, files=[("file", ("d.png", png, "image/png"))]),
        Request("batch of 8 PNGs", "POST", "/predict/best", 200, 8, files=batch),
        Request("2400x1800 JPEG", "POST", "/predict/3", 200, 2, content=phone_jpeg, content_type="image/jpeg"),
        Request("GET /steps", "GET", "/steps", 200, 5),
        Request("GET metrics", "GET", "/steps/gap/metrics", 200, 3),
        Request("not an image", "POST", "/predict/gap", 422, 4, content=os.urandom(2000), content_type="image/png"),
        Request("text upload", "POST", "/predict/gap", 415, 3, files=[("file", ("a.txt", b"seven", "text/plain"))]),
        Request("empty multipart", "POST", "/predict/gap", 422, 2, content=b"--x--\r\n", content_type="multipart/form-data; boundary=x"),
        Request("unknown step", "POST", "/predict/nine", 404, 3, content=png, content_type="image/png"),
        Request("step not trained", "POST", f"/predict/{untrained}", 503, 3, content=png, content_type="image/png"),
        Request("decompression bomb", "POST", "/predict/gap", 413, 2, content=bomb.getvalue(), content_type="image/png"),
        Request("over MAX_UPLOAD_BYTES", "POST", "/predict/gap", 413, 1, content=b"\0" * (10 * 1024 * 1024 + 1), content_type="image/png"),
    ]  # fmt: skip
    for number, photo in enumerate(photos, start=1):
        name = f"photo {number}: {photo.kind}"
        kinds.append(Request(name, "POST", "/predict/best", 200, 2, photo.data, photo.content_type))
    return kinds


# --- the volume, the service, the publisher ---------------------------------------------


def fill_volume(root: Path, source: Path | None) -> list[str]:
    """Publish into `root` (a copy of `source`'s current versions, or fixtures); the steps."""
    if source is not None:
        published = []
        for step in volume.read_index(source).steps:
            current = volume.read_current(source, step)
            if current is not None:
                volume.publish(root, step, current.model_bytes, current.summary, current.metrics)
                published.append(step)
        return published
    from tests.service.conftest import publish, random_model

    steps = list(volume.STEP_SLUGS[:-1])  # the last stays untrained: its requests get 503
    for number, step in enumerate(steps):
        publish(root, step, random_model(number), accuracy=90.0 + number / 10)
    return steps


PUBLISHER = textwrap.dedent(
    """
    import itertools, sys, time
    from pathlib import Path
    import volume
    root, every = Path(sys.argv[1]), float(sys.argv[2])
    print("publishing", flush=True)
    for step in itertools.cycle(sys.argv[3:]):
        time.sleep(every)
        current = volume.read_current(root, step)
        volume.publish(root, step, current.model_bytes, current.summary, current.metrics)
        print(step, flush=True)
    """
)


def process_tree(pid: int) -> list[int]:
    """`pid` and every process descended from it: the launcher and its uvicorn workers."""
    found, i = [pid], 0
    while i < len(found):
        for task in Path(f"/proc/{found[i]}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
        i += 1
    return found


def rss(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB of a process and its descendants, summed: with several workers the
    summed high-water marks bound their peak together from above (each may peak at another
    moment)."""
    total = {"VmRSS": 0.0, "VmHWM": 0.0}
    for each in process_tree(pid):
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in total:
                total[key] += int(value.split()[0]) / 1024
    return total["VmRSS"], total["VmHWM"]


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as output:
        child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=25)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=10)


def wait_ready(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        if server.poll() is not None:
            sys.exit(f"the service exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            sys.exit(f"the service was not ready in 60 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


# --- the load ---------------------------------------------------------------------------


@dataclass
class Results:
    latencies: dict[str, list[float]]
    statuses: dict[str, Counter[str]]
    versions: set[str]


async def load(url: str, kinds: list[Request], clients: int, seconds: float, seed: int) -> Results:
    results = Results(defaultdict(list), defaultdict(Counter), set())
    weights = [k.weight for k in kinds]
    deadline = time.monotonic() + seconds

    async def client(number: int) -> None:
        rng = random.Random(seed + number)
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
            while time.monotonic() < deadline:
                kind = rng.choices(kinds, weights)[0]
                headers = {"content-type": kind.content_type} if kind.content_type else None
                started = time.perf_counter()
                try:
                    answer = await http.request(
                        kind.method, kind.path, files=kind.files, content=kind.content,
                        headers=headers,
                    )  # fmt: skip
                except httpx.TransportError as e:
                    results.statuses[kind.name][type(e).__name__] += 1
                    continue
                results.latencies[kind.name].append(time.perf_counter() - started)
                results.statuses[kind.name][str(answer.status_code)] += 1
                if answer.status_code == 200 and kind.path.startswith("/predict"):
                    body = answer.json()
                    for prediction in body if isinstance(body, list) else [body]:
                        results.versions.add(prediction["version"])

    await asyncio.gather(*(client(n) for n in range(clients)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--clients", type=int, default=32, help="at most MAX_REQUESTS (32)")
    parser.add_argument("--publish-every", type=float, default=3.0)
    parser.add_argument("--models-dir", type=Path, help="a real volume to serve (else fixtures)")
    default_mnist = os.environ.get("MNIST_DIR", str(ROOT.parent / "shared/datasets/mnist"))
    parser.add_argument("--mnist-dir", type=Path, default=Path(default_mnist))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--idle", type=float, default=3, help="seconds after the load: RSS after")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        root = Path(tmp) / "models"
        steps = fill_volume(root, args.models_dir)
        untrained = next((s for s in volume.STEP_SLUGS if s not in steps), "")
        kinds = [k for k in requests(args.mnist_dir, untrained) if untrained or k.expected != 503]
        if not {"lighter", "gap"} <= set(steps):
            sys.exit(f"the volume must serve lighter (3) and gap (6); it serves {steps}")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = os.environ | {"MODELS_DIR": str(root), "PYTHONPATH": str(ROOT)}
        server_log, publisher_log = Path(tmp) / "service.log", Path(tmp) / "publisher.log"
        # The image's command (docker/service.Dockerfile), on loopback.
        command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
        with process([*command, "--timeout-graceful-shutdown", "20"], env, server_log) as server:
            wait_ready(url, server, server_log)
            before, _ = rss(server.pid)
            samples: list[float] = []
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.wait(0.2):
                    samples.append(rss(server.pid)[0])

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            publisher_argv = [sys.executable, "-c", PUBLISHER, str(root), str(args.publish_every)]
            with process([*publisher_argv, *steps], env, publisher_log):
                # On a busy machine the publisher's imports alone can outlast a short soak.
                deadline = time.monotonic() + 60
                while not publisher_log.read_text() and time.monotonic() < deadline:
                    time.sleep(0.05)
                started = time.monotonic()
                results = asyncio.run(load(url, kinds, args.clients, args.seconds, args.seed))
                took = time.monotonic() - started
            published = publisher_log.read_text().split()[1:]
            time.sleep(args.idle)  # what the load leaves behind
            sampling.set()
            sampler.join()
            after, peak = rss(server.pid)
            errors_logged = server_log.read_text().count("Traceback")

    total = failed = 0
    print(
        f"soak: {took:.0f} s, {args.clients} clients, a new version every "
        f"{args.publish_every:g} s ({len(published)} published), `python -m service`"
    )
    print("\n| request | must get | sent | as expected | p50 ms | p99 ms |")
    print("|---|--:|--:|--:|--:|--:|")
    for kind in kinds:
        statuses = results.statuses[kind.name]
        sent = sum(statuses.values())
        good = statuses[str(kind.expected)]
        total, failed = total + sent, failed + sent - good
        times = sorted(results.latencies[kind.name]) or [0.0]
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        others = ", ".join(f"{s}: {n}" for s, n in statuses.items() if s != str(kind.expected))
        print(
            f"| {kind.name} | {kind.expected} | {sent:,} | {good:,}{f' ({others})' if others else ''} "
            f"| {statistics.median(times) * 1e3:.1f} | {p99 * 1e3:.1f} |"
        )
    print(
        f"\npredictions came from {len(results.versions)} versions; tracebacks logged: {errors_logged}"
    )
    quarters = [samples[min(len(samples) - 1, len(samples) * q // 4)] for q in (1, 2, 3, 4)]
    print(
        "RSS during the load, at each quarter: "
        + ", ".join(f"{mb:.1f}" for mb in quarters)
        + f" MB (sampled every 0.2 s; max {max(samples):.1f})"
    )
    print(
        f"failed: {failed} of {total:,} requests; RSS before {before:.1f} MB, "
        f"after {after:.1f} MB, peak {peak:.1f} MB"
    )


if __name__ == "__main__":
    main()
