"""Serving benchmark: the real service against a bare FastAPI app, both under real uvicorn.

    python bench/serve.py [--models-dir DIR] [--duration 6] [--slice 1] [--repeats 3]
                          [--concurrency 1,8,32] [--workers N] [--threads N]

- ours: `uvicorn service.app:app` with its production settings (the service's defaults; only
  MODELS_DIR is set) on a volume holding a trained final step. Without --models-dir the
  benchmark trains one itself: one short epoch of the final step on 3,000 MNIST images from
  $MNIST_DIR (default ../shared/datasets/mnist), into a temporary folder (about a minute).
- baseline: `uvicorn bench.bare_app:app` with the same flags, an app that only reads the upload
  and answers a constant JSON: the ceiling the framework allows on this machine.

A load generator in a separate process (asyncio, one keep-alive connection per simulated client,
each sending its next request as soon as the last is answered) posts real uploads as multipart
field `file`: a 28x28 MNIST test digit as PNG, and a 400x400 photo-like JPEG of one (ink on uneven
paper, noise). Each concurrency level loads each app for --duration seconds after a warm-up, in
turns of --slice seconds (this VM's speed drifts within seconds; taking turns this often, both
apps see the same machine), and every number is the median of --repeats runs. Before that it
times onnxruntime in this process (one image; a batch of 256) and the service's preprocessing,
so that the cost of HTTP is visible.

It prints a markdown table (requests per second, p50 and p99 latency, errors), whether each
target holds, and as its last line `ratio: X.XX`: our requests per second over the bare app's on
the 28x28 PNG at the highest concurrency. Targets: no errors; on the 28x28 PNG our throughput at
concurrency 32 is at least half the bare app's, and our p50 at concurrency 1 at most twice its.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere

from tests.service.photos import load_mnist  # noqa: E402
from volume import FINAL_STEP, STEP_SLUGS  # noqa: E402

APPS = {"bare": "bench.bare_app:app", "ours": "service.app:app"}
# The service's production command line (docker/service.Dockerfile), less host and port.
UVICORN_FLAGS = ["--timeout-graceful-shutdown", "20"]


@dataclass(frozen=True)
class Upload:
    label: str
    filename: str
    content_type: str
    data: bytes


# --- The inputs --------------------------------------------------------------------------


def encode(image: Image.Image, image_format: str, **options: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def photo_like(digit: np.ndarray, size: int = 400) -> bytes:
    """A digit written in blue ink on unevenly lit paper, photographed: a JPEG, size x size."""
    rng = np.random.default_rng(0)
    height = size * 3 // 5
    ink_alpha = Image.fromarray(digit).resize((height, height), Image.Resampling.BICUBIC)
    alpha = np.zeros((size, size), np.float32)
    top, left = size // 6, size // 4
    alpha[top : top + height, left : left + height] = np.asarray(ink_alpha, np.float32) / 255
    paper = np.array([238, 232, 220], np.float32)
    ink = np.array([25, 40, 140], np.float32)
    shade = np.linspace(1.0, 0.85, size, dtype=np.float32)[None, :, None]
    pixels = paper * shade * (1 - alpha[..., None]) + ink * alpha[..., None]
    pixels += rng.normal(0, 4, pixels.shape)
    return encode(Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB"), "JPEG", quality=85)


def make_uploads(digits: np.ndarray) -> list[Upload]:
    return [
        Upload("28x28 PNG", "digit.png", "image/png", encode(Image.fromarray(digits[0]), "PNG")),
        Upload("400x400 JPEG", "photo.jpg", "image/jpeg", photo_like(digits[0])),
    ]


def step_to_serve(trained: list[str]) -> str:
    """The assignment's final step where it is trained, else the last trained step."""
    return FINAL_STEP if FINAL_STEP in trained else trained[-1]


def train_volume(out: Path, mnist_dir: Path, limit: int) -> None:
    """One short epoch of the final step, published into `out` by the real trainer."""
    command = [sys.executable, "-m", "trainer", "run", "--steps", FINAL_STEP, "--epochs", "1"]
    command += ["--limit", str(limit), "--data-dir", str(mnist_dir), "--out", str(out), "--quiet"]
    print(f"training a volume: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, cwd=ROOT, check=True, timeout=900)


# --- In process: what HTTP adds to ------------------------------------------------------


def median_seconds(function: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def in_process(
    models_dir: Path, step: str | None, threads: int, uploads: list[Upload], digits: np.ndarray
) -> tuple[str, str, list[str]]:
    """The step served, its version, and lines timing onnxruntime and preprocessing here."""
    from service import images
    from service.models import ModelRegistry
    from service.settings import Settings

    registry = ModelRegistry(models_dir, threads)
    registry.refresh()
    trained = [s for s in STEP_SLUGS if s in registry.models]
    if not trained:
        sys.exit(f"no step is published in {models_dir}: run `python -m trainer run` first")
    model = registry.models[step or step_to_serve(trained)]
    one = images.normalise(digits[0].astype(np.float32))[None]
    batch = np.stack([images.normalise(d.astype(np.float32)) for d in digits[:256]])
    model.predict(batch)  # warm up
    single = median_seconds(lambda: model.predict(one), 2000)
    many = median_seconds(lambda: model.predict(batch), 30)
    lines = [
        f"onnxruntime in process ({threads} intra-op thread{'s' * (threads > 1)}): "
        f"1 image {single * 1e3:.3f} ms; batch of 256 {many * 1e3:.2f} ms "
        f"({many / 256 * 1e3:.3f} ms per image)"
    ]
    max_pixels = Settings().max_image_pixels
    for upload in uploads:
        seconds = median_seconds(partial(images.preprocess, upload.data, max_pixels), 200)
        lines.append(
            f"preprocessing in process, {upload.label} ({len(upload.data):,} bytes): "
            f"{seconds * 1e3:.3f} ms"
        )
    return model.step, model.version, lines


# --- The servers --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (uvicorn shuts down gracefully), then SIGKILL the process group it leads."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=25)
            return
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # its workers too: it leads their group
    process.wait(timeout=10)


@contextlib.contextmanager
def uvicorn(
    app: str, env: dict[str, str], workers: int, log: Path, root: Path = ROOT
) -> Iterator[str]:
    """`uvicorn APP` on a free port of 127.0.0.1, importing from `root`; its base URL once
    /readyz answers 200."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(workers), *UVICORN_FLAGS]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=os.environ | {"PYTHONPATH": str(root)} | env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so `stop` can reach its workers
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=url, timeout=2) as client:
            while True:
                if process.poll() is not None:
                    sys.exit(f"{app} exited with {process.returncode}:\n{tail(log)}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/readyz").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    sys.exit(f"{app} was not ready within 60 s:\n{tail(log)}")
                time.sleep(0.2)
        yield url
    finally:
        stop(process)


# --- The load generator (a separate process) ---------------------------------------------
#
# Each simulated client holds one keep-alive HTTP/1.1 connection per app and sends the same
# pre-encoded request bytes on it, reading each answer (status, headers, body) before sending the
# next. The body is encoded once by httpx. httpx itself does not send the load: on this 2-core
# machine its AsyncClient spent 3-7 ms of CPU per request (more than either server), so it
# measured mostly itself; these plain asyncio streams spend about 0.1 ms.
#
# This VM's speed changes by up to 2x from one few-second stretch to the next (the host's other
# tenants), so apps measured one after the other for seconds each would see different machines.
# Both apps are loaded from the same process in alternating slices of --slice seconds, the order
# flipping every round, so both see the same mix of fast and slow seconds. In each slice every
# client starts at once; the first quarter is ramp-up, and only answers completed in the rest
# of the slice are counted.

RAMP_UP = 0.25  # of each slice


def multipart(url: str, upload: Upload) -> bytes:
    """The whole HTTP/1.1 request posting `upload` as multipart field `file`, encoded once."""
    request = httpx.Request(
        "POST", url, files={"file": (upload.filename, upload.data, upload.content_type)}
    )
    body = request.read()
    head = (
        f"POST {request.url.raw_path.decode()} HTTP/1.1\r\n"
        f"Host: {request.url.netloc.decode()}\r\n"
        f"Content-Type: {request.headers['content-type']}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body, and whether the server keeps the connection open."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip().lower()
    if headers.get("transfer-encoding") == "chunked":
        chunks = []
        while size := int((await reader.readline()).split(b";")[0], 16):
            chunks.append((await reader.readexactly(size + 2))[:-2])
        await reader.readuntil(b"\r\n")  # no trailers are sent
        body = b"".join(chunks)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, body, headers.get("connection") != "close"


DIGIT = re.compile(rb'"digit"\s*:\s*(\d+)')  # in any server's JSON spacing


@dataclass
class Tally:
    """What one app's counted slices saw."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)  # in every slice, warm-up included
    answered: int = 0  # answers with a digit, in every slice
    wrong: int = 0  # of those, answers with another digit than expected, if one is

    def result(self) -> dict[str, Any]:
        milliseconds = np.array(self.latencies or [float("nan")]) * 1e3
        return {
            "requests": len(self.latencies),
            "rps": len(self.latencies) / self.seconds,
            "p50": float(np.percentile(milliseconds, 50)),
            "p99": float(np.percentile(milliseconds, 99)),
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors.most_common(3)),
            "answered": self.answered,
            "wrong": self.wrong,
        }


class Connection:
    """One simulated client's keep-alive connection to one app."""

    def __init__(self, url: str, request: bytes, expect: int | None = None) -> None:
        address = httpx.URL(url)
        self.host, self.port = address.host, address.port or 80
        self.request = request
        self.expect = expect  # the digit a right answer names
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self) -> tuple[int, bytes]:
        reused = self.streams is not None
        try:
            return await self.send()
        except (asyncio.IncompleteReadError, ConnectionResetError) as e:
            self.close()
            # A server closes a keep-alive connection left idle past its timeout (uvicorn's is
            # 5 s), as this one may be while other apps take turns of --slice seconds. Like any
            # HTTP client, send once more on a new connection when a reused one closed before
            # a byte of the answer.
            if not reused or (isinstance(e, asyncio.IncompleteReadError) and e.partial):
                raise
            return await self.send()

    async def send(self) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        writer.write(self.request)
        status, body, keep_alive = await read_response(reader)
        if not keep_alive:
            self.close()
        return status, body

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def load_slice(
    connections: list[Connection], seconds: float, tally: Tally, count: bool
) -> None:
    """Every client posting back to back for `seconds`; answers after the ramp-up are counted."""
    started = time.perf_counter()
    counted_from, until = started + seconds * RAMP_UP, started + seconds

    async def client(connection: Connection) -> None:
        while (sent := time.perf_counter()) < until:
            try:
                async with asyncio.timeout(60):
                    status, body = await connection.post()
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                tally.errors[f"{type(e).__name__}: {e}"[:200]] += 1
                connection.close()
                continue
            answered = time.perf_counter()
            digit = DIGIT.search(body) if status == 200 else None
            if digit is None:
                tally.errors[f"HTTP {status}: {body[:200].decode(errors='replace')}"] += 1
                continue
            tally.answered += 1
            if connection.expect is not None and int(digit[1]) != connection.expect:
                tally.wrong += 1
            if count and counted_from <= answered <= until:
                tally.latencies.append(answered - sent)

    await asyncio.gather(*(client(c) for c in connections))
    if count:
        tally.seconds += until - counted_from


async def generate_load(
    requests: dict[str, tuple[str, bytes]],
    concurrency: int,
    warmup: float,
    duration: float,
    slice_seconds: float,
    expect: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Each app (name -> url, request) warmed up, then loaded in alternating slices. With
    `expect`, answers naming another digit are counted as wrong."""
    connections = {
        name: [Connection(url, request, expect) for _ in range(concurrency)]
        for name, (url, request) in requests.items()
    }
    tallies = {name: Tally() for name in requests}
    names = list(requests)
    for name in names:
        await load_slice(connections[name], warmup, tallies[name], count=False)
    rounds = max(1, round(duration / slice_seconds))
    for number in range(rounds):
        for name in names if number % 2 == 0 else names[::-1]:
            await load_slice(connections[name], duration / rounds, tallies[name], count=True)
    for connection in (c for group in connections.values() for c in group):
        connection.close()
    return {name: tally.result() for name, tally in tallies.items()}


def load_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench/serve.py --load")
    parser.add_argument("--load", action="store_true", required=True)
    parser.add_argument("--url", action="append", required=True, help="NAME=URL, once per app")
    parser.add_argument("--upload", type=Path, required=True, help="a JSON file naming the upload")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--slice", type=float, required=True)
    parser.add_argument("--expect", type=int, help="the right digit: others count as wrong")
    args = parser.parse_args(argv)
    spec = json.loads(args.upload.read_text())
    upload = Upload(
        spec["label"], spec["filename"], spec["content_type"], Path(spec["path"]).read_bytes()
    )
    urls = dict(pair.split("=", 1) for pair in args.url)
    requests = {name: (url, multipart(url, upload)) for name, url in urls.items()}
    run = generate_load(
        requests, args.concurrency, args.warmup, args.duration, args.slice, args.expect
    )
    try:
        import uvloop  # uvicorn[standard]'s event loop: a cheaper client leaves more CPU to the server

        result = uvloop.run(run)
    except ImportError:
        result = asyncio.run(run)
    print(json.dumps(result))


def measure(
    urls: dict[str, str],
    upload_spec: Path,
    concurrency: int,
    warmup: float,
    duration: float,
    slice_seconds: float,
    expect: int | None = None,
) -> dict[str, dict[str, Any]]:
    """One level against every app, from a load generator in its own process."""
    command = [sys.executable, __file__, "--load", "--upload", str(upload_spec)]
    command += [f"--url={name}={url}" for name, url in urls.items()]
    command += ["--concurrency", str(concurrency), "--warmup", str(warmup)]
    command += ["--duration", str(duration), "--slice", str(slice_seconds)]
    if expect is not None:
        command += ["--expect", str(expect)]
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=2 * len(urls) * (warmup + duration) + 120,
    )
    if done.returncode != 0:
        sys.exit(f"the load generator failed:\n{done.stderr}")
    result: dict[str, dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- The report ---------------------------------------------------------------------------


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(
    results: dict[tuple[str, int, str], list[dict[str, Any]]],
    uploads: list[Upload],
    levels: list[int],
) -> None:
    print(
        "| upload | clients | bare req/s | bare p50 ms | bare p99 ms | ours req/s "
        "| ours p50 ms | ours p99 ms | req/s ours/bare | p50 ours/bare | errors |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for upload in uploads:
        for level in levels:
            bare, ours = results[upload.label, level, "bare"], results[upload.label, level, "ours"]
            errors = sum(r["errors"] for r in bare + ours)
            print(
                f"| {upload.label} | {level} | {median(bare, 'rps'):.0f} "
                f"| {median(bare, 'p50'):.2f} | {median(bare, 'p99'):.2f} "
                f"| {median(ours, 'rps'):.0f} | {median(ours, 'p50'):.2f} "
                f"| {median(ours, 'p99'):.2f} "
                f"| {median(ours, 'rps') / median(bare, 'rps'):.2f} "
                f"| {median(ours, 'p50') / median(bare, 'p50'):.2f} | {errors} |"
            )


def parse_levels(text: str) -> list[int]:
    levels = sorted({int(x) for x in text.split(",") if x.strip()})
    if not levels or levels[0] < 1:
        raise argparse.ArgumentTypeError("concurrency levels are positive integers, e.g. 1,8,32")
    return levels


def write_specs(uploads: list[Upload], work: Path) -> dict[str, Path]:
    """Each upload's file and the JSON spec a load-generator process reads, in `work`."""
    specs = {}
    for upload in uploads:
        (work / upload.filename).write_bytes(upload.data)
        spec = {
            "label": upload.label,
            "filename": upload.filename,
            "content_type": upload.content_type,
            "path": str(work / upload.filename),
        }
        specs[upload.label] = work / f"{upload.filename}.json"
        specs[upload.label].write_text(json.dumps(spec))
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_mnist = os.environ.get("MNIST_DIR", str(ROOT.parent / "shared/datasets/mnist"))
    parser.add_argument("--models-dir", type=Path, help="a volume (default: train one now)")
    parser.add_argument("--mnist-dir", type=Path, default=Path(default_mnist))
    parser.add_argument("--step", help="the step to serve (default: the last trained one)")
    parser.add_argument("--limit", type=int, default=3000, help="training images, no volume given")
    parser.add_argument("--concurrency", type=parse_levels, default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per level and app")
    parser.add_argument("--slice", type=float, default=1.0, help="seconds per turn of one app")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each level")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each level; medians")
    default_workers = int(os.environ.get("WEB_CONCURRENCY", "1"))  # what uvicorn would use
    parser.add_argument("--workers", type=int, default=default_workers, help="uvicorn workers")
    parser.add_argument(
        "--threads", type=int, help="INFERENCE_THREADS of the service (default: its own)"
    )
    args = parser.parse_args()

    from service.settings import Settings

    threads = args.threads or Settings(_env_file=None).inference_threads
    digits = load_mnist(args.mnist_dir, "t10k")[0]
    uploads = make_uploads(digits)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as temporary:
        work = Path(temporary)
        models_dir = args.models_dir
        if models_dir is None:
            models_dir = work / "models"
            train_volume(models_dir, args.mnist_dir, args.limit)
        step, version, timings = in_process(models_dir, args.step, threads, uploads, digits)
        specs = write_specs(uploads, work)

        service_env = {"MODELS_DIR": str(models_dir)}
        if args.threads:
            service_env["INFERENCE_THREADS"] = str(args.threads)
        results: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
        with (
            uvicorn(APPS["bare"], {}, args.workers, work / "bare.log") as bare_url,
            uvicorn(APPS["ours"], service_env, args.workers, work / "ours.log") as our_url,
        ):
            urls = {"bare": f"{bare_url}/predict/{step}", "ours": f"{our_url}/predict/{step}"}
            for repeat in range(args.repeats):
                for upload in uploads:
                    for level in args.concurrency:
                        measured = measure(
                            urls, specs[upload.label], level, args.warmup, args.duration, args.slice
                        )
                        for name, result in measured.items():
                            results.setdefault((upload.label, level, name), []).append(result)
                            if result["errors"]:
                                print(f"{name}, {upload.label}, {level}: {result['error_kinds']}")
                print(f"run {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)

    cores = len(os.sched_getaffinity(0))
    print(
        f"\nstep `{step}` version {version}; uvicorn --workers {args.workers} "
        f"{' '.join(UVICORN_FLAGS)}; INFERENCE_THREADS={threads}"
    )
    print(
        f"{cpu_name()}, {cores} cores; {args.duration:g} s per level and app in turns of "
        f"{args.slice:g} s after {args.warmup:g} s warm-up, median of {args.repeats}"
    )
    for line in timings:
        print(line)
    print()
    report(results, uploads, args.concurrency)
    print()

    small, top, first = uploads[0].label, args.concurrency[-1], args.concurrency[0]
    errors = sum(r["errors"] for runs in results.values() for r in runs)
    requests = sum(r["requests"] for runs in results.values() for r in runs)
    ratio = median(results[small, top, "ours"], "rps") / median(results[small, top, "bare"], "rps")
    latency = median(results[small, first, "ours"], "p50") / median(
        results[small, first, "bare"], "p50"
    )
    checks = [
        (f"no errors ({errors} in {requests + errors:,} requests)", errors == 0),
        (f"{small} at {top} clients: ours/bare req/s {ratio:.2f} >= 0.50", ratio >= 0.5),
        (
            f"{small} at {first} client{'s' * (first > 1)}: ours/bare p50 {latency:.2f} <= 2.00",
            latency <= 2,
        ),
    ]
    for text, holds in checks:
        print(f"target {'holds' if holds else 'FAILS'}: {text}")
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    if "--load" in sys.argv[1:]:
        load_main(sys.argv[1:])
    else:
        main()
