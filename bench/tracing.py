"""What OpenTelemetry tracing costs the service: off, on, and the code from before tracing.

    python bench/tracing.py [--models-dir DIR] [--duration 4] [--repeats 3] [--concurrency 1,8]

Three copies of the service under real uvicorn on 127.0.0.1, loaded in turns by bench/serve.py's
load generator (one keep-alive connection per client, the 28x28 PNG posted to /predict/STEP):

- before: the service as it was just before tracing was wired in (commit BEFORE, taken out of
  git into a temporary folder with `git archive`): what "costs nothing when off" is held to;
- off: this tree with no OTEL_* variable (service/tracing.py imports no SDK);
- on: this tree with OTEL_EXPORTER_OTLP_ENDPOINT pointing at a sink in this process, on
  127.0.0.1, that answers every OTLP/HTTP export and counts the spans in it: every request
  traced (the SDK's default sampler), spans batched and sent as in production;
- on 1/10: the same with OTEL_TRACES_SAMPLER keeping one trace in ten.

Without --models-dir it trains a volume first (bench/serve.py's train_volume, about a minute).
It prints a markdown table (requests per second, p50 and p99 latency per app and level, medians
of --repeats), the spans the sink received, `off/before` (within the run's noise when tracing off
costs nothing) and as its last line `ratio: X.XX`, on's requests per second over off's at the
highest concurrency: what tracing every request costs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere

from bench.serve import (  # noqa: E402
    APPS,
    cpu_name,
    make_uploads,
    measure,
    median,
    parse_levels,
    train_volume,
    uvicorn,
    write_specs,
)
from tests.service.photos import load_mnist  # noqa: E402
from volume import STEP_SLUGS, read_index  # noqa: E402

# The commit whose child wired service/tracing.py into the app: the service without tracing.
BEFORE = "49cc922"
NAMES = ("before", "off", "on", "on 1/10")
# The SDK's standard sampler variables: a tenth of the traces kept, decided at the root span.
SAMPLED = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}


class Sink(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver that counts what it is sent and keeps nothing."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SinkHandler)
        self.exports = 0
        self.spans = 0
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class SinkHandler(BaseHTTPRequestHandler):
    server: Sink

    def do_POST(self) -> None:  # the stdlib calls it by this name
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        request = ExportTraceServiceRequest.FromString(body)
        spans = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with self.server.lock:
            self.server.exports += 1
            self.server.spans += spans
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@contextlib.contextmanager
def sink() -> Iterator[Sink]:
    server = Sink()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def check_out(commit: str, into: Path) -> Path:
    """The service and volume packages as `commit` had them, in `into` (the venv is shared)."""
    into.mkdir()
    archive = subprocess.run(
        ["git", "archive", commit, "service", "volume"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True, timeout=60)
    return into


def trained_step(models_dir: Path) -> str:
    """The last step of the catalogue published in `models_dir`."""
    published = [s for s in STEP_SLUGS if s in read_index(models_dir).steps]
    if not published:
        sys.exit(f"no step is published in {models_dir}: run `python -m trainer run` first")
    return published[-1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_mnist = os.environ.get("MNIST_DIR", str(ROOT.parent / "shared/datasets/mnist"))
    parser.add_argument("--models-dir", type=Path, help="a volume (default: train one now)")
    parser.add_argument("--mnist-dir", type=Path, default=Path(default_mnist))
    parser.add_argument("--limit", type=int, default=3000, help="training images, no volume given")
    parser.add_argument("--concurrency", type=parse_levels, default=[1, 8])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per level and app")
    parser.add_argument("--slice", type=float, default=1.0, help="seconds per turn of one app")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each level")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each level; medians")
    parser.add_argument("--before", default=BEFORE, help="the commit without tracing")
    args = parser.parse_args()

    uploads = make_uploads(load_mnist(args.mnist_dir, "t10k")[0])[:1]  # the 28x28 PNG
    results: dict[tuple[int, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tracing-") as temporary:
        work = Path(temporary)
        models_dir = args.models_dir
        if models_dir is None:
            models_dir = work / "models"
            train_volume(models_dir, args.mnist_dir, args.limit)
        step = trained_step(models_dir)
        (spec,) = write_specs(uploads, work).values()
        before = check_out(args.before, work / "before")
        # No OTEL_* from the caller's shell: each app gets exactly what its name says.
        plain = {k: "" for k in os.environ if k.startswith("OTEL_")} | {
            "MODELS_DIR": str(models_dir)
        }
        with sink() as receiver, contextlib.ExitStack() as servers:
            traced = plain | {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
            envs = {"before": plain, "off": plain, "on": traced, "on 1/10": traced | SAMPLED}
            urls = {}
            for name in NAMES:
                root = before if name == "before" else ROOT
                log = work / f"{name.replace(' ', '-').replace('/', '-')}.log"
                url = servers.enter_context(uvicorn(APPS["ours"], envs[name], 1, log, root=root))
                urls[name] = f"{url}/predict/{step}"
            for repeat in range(args.repeats):
                for level in args.concurrency:
                    measured = measure(urls, spec, level, args.warmup, args.duration, args.slice)
                    for name, result in measured.items():
                        results.setdefault((level, name), []).append(result)
                        if result["errors"]:
                            print(f"{name}, {level}: {result['error_kinds']}")
                print(f"run {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
            servers.close()  # SIGTERM: the batch processors send what they hold
            exports, spans = receiver.exports, receiver.spans
    answered = {
        name: sum(r["answered"] for level in args.concurrency for r in results[level, name])
        for name in ("on", "on 1/10")
    }

    print(f"\nstep `{step}` from {models_dir}; before = service at {args.before}")
    print(
        f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores; {args.duration:g} s per level and "
        f"app in turns of {args.slice:g} s after {args.warmup:g} s warm-up, "
        f"median of {args.repeats}\n"
    )
    print("| clients | app | req/s | p50 ms | p99 ms | errors |")
    print("|--:|---|--:|--:|--:|--:|")
    for level in args.concurrency:
        for name in NAMES:
            runs = results[level, name]
            print(
                f"| {level} | {name} | {median(runs, 'rps'):.0f} | {median(runs, 'p50'):.2f} "
                f"| {median(runs, 'p99'):.2f} | {sum(r['errors'] for r in runs)} |"
            )
    print(
        f"\nthe sink received {spans:,} spans in {exports} exports for {answered['on']:,} "
        f"requests to on and {answered['on 1/10']:,} to on 1/10"
    )
    top = args.concurrency[-1]
    for level in args.concurrency:
        off = median(results[level, "off"], "rps")
        print(
            f"{level} clients: off/before req/s {off / median(results[level, 'before'], 'rps'):.2f}"
            f", on/off req/s {median(results[level, 'on'], 'rps') / off:.2f}"
            f", on 1/10/off req/s {median(results[level, 'on 1/10'], 'rps') / off:.2f}"
        )
    ratio = median(results[top, "on"], "rps") / median(results[top, "off"], "rps")
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
