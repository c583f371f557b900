"""Serving benchmark against what users would pick instead: LitServe, BentoML, TorchServe and a
tutorial FastAPI app, beside the real service, on the same model, machine and run.

    python bench/peers.py [--models-dir DIR] [--duration 6] [--slice 1] [--repeats 3]
                          [--concurrency 1,8,32] [--peers tutorial,litserve,bentoml,torchserve]
                          [--workers N]

- ours: `python -m service`, the service image's command: a uvicorn worker per core, each on
  its own SO_REUSEPORT socket of the one port (service/__main__.py).
- litserve, bentoml, torchserve: each framework serving the final step's `model.onnx` the way
  its docs do (bench/peer_apps/), one worker each, with our preprocessing and onnxruntime
  settings imported from the work tree (bench/peer_apps/common.py), so that only the
  framework differs. TorchServe runs its Java frontend (Debian's openjdk-17-jre-headless) and
  a Python worker that imports torch.
- tutorial: a FastAPI app written the way blog posts do (bench/peer_apps/tutorial.py):
  `UploadFile`, Pillow's resize to 28x28, a default onnxruntime session.

Each peer runs from its own venv, made by bench/peer_venvs.py under $PEER_VENVS (default
~/.cache/mnist-steps/peers) the first time (several minutes; TorchServe's brings torch) and
reused after. Without --models-dir a volume is trained first, as bench/serve.py does (about a
minute). Before any timing, every app answers the same uploads (the two timed ones, and
photo-like and phone photos of MNIST test digits, tests/service/photos.py): each framework
peer must give our digit and probabilities (within 1e-5), or the benchmark stops; for the
tutorial app it counts how often its digit is wrong where ours is right.

Then bench/serve.py's load generator loads all apps in turns of --slice seconds (the order
reversing every round), at each concurrency level, with a 28x28 MNIST PNG and a 400x400
photo-like JPEG: requests per second, p50 and p99 latency, errors, wrong answers (another
digit than the upload's), and the CPU time of the server's processes (all of them, idle
ones included) per answered request. Every number is the median of --repeats runs. It prints
markdown tables, whether each target holds, and as its last line `ratio: X.XX`: our requests
per second over the fastest framework peer's on the 28x28 PNG at the highest concurrency.
Targets: no errors; 28x28 PNG at the highest concurrency >= 2.0x the fastest framework peer's
requests per second; its p50 at 1 client <= 0.6x the lowest framework p50; the 400x400 JPEG at
the highest concurrency >= 1.5x.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere

from bench import peer_venvs  # noqa: E402
from bench.serve import (  # noqa: E402
    UVICORN_FLAGS,
    Upload,
    cpu_name,
    free_port,
    make_uploads,
    measure,
    parse_levels,
    step_to_serve,
    tail,
    train_volume,
    write_specs,
)
from tests.service.photos import load_mnist, photo_like_set  # noqa: E402
from volume import STEP_SLUGS, read_index, version_folder  # noqa: E402

FRAMEWORKS = ("litserve", "bentoml", "torchserve")
APPS = ("ours", "tutorial", *FRAMEWORKS)
TOLERANCE = 1e-5  # probabilities: float32 from the same graph, ours normalised in float64


@dataclass
class Server:
    name: str
    url: str  # where to post an image as multipart field `file`
    process: subprocess.Popen[bytes]
    log: Path


# --- CPU time of a server's processes ---------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds so far) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            # The command name (field 2) may hold spaces: fields count from its closing ')'.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])))
    return {pid: (parent, ticks / CLOCK_TICKS) for pid, (parent, ticks) in table.items()}


def family(root: int, table: dict[int, tuple[int, float]]) -> set[int]:
    """`root` and every process descended from it (BentoML's and TorchServe's workers start
    sessions of their own, so a process group would miss them)."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def cpu_seconds(servers: list[Server]) -> dict[str, float]:
    """CPU seconds each server's processes have used so far (exited children are lost)."""
    table = process_table()
    return {s.name: sum(table[p][1] for p in family(s.process.pid, table)) for s in servers}


# --- The servers ---------------------------------------------------------------------------


def stop(server: Server) -> None:
    """SIGTERM the server (each framework shuts its workers down), then SIGKILL whatever of
    its family is left."""
    members = family(server.process.pid, process_table())
    if server.process.poll() is None:
        server.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=20)
    for pid in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.process.wait(timeout=10)


def wait_ready(server: Server, probe: Upload, seconds: float = 300) -> None:
    """Until the server answers a real prediction (each has its own readiness route)."""
    deadline = time.monotonic() + seconds
    files = {"file": (probe.filename, probe.data, probe.content_type)}
    with httpx.Client(timeout=10) as client:
        while True:
            if server.process.poll() is not None:
                sys.exit(
                    f"{server.name} exited with {server.process.returncode}:\n{tail(server.log)}"
                )
            with contextlib.suppress(httpx.TransportError):
                if client.post(server.url, files=files).status_code == 200:
                    return
            if time.monotonic() > deadline:
                sys.exit(f"{server.name} was not ready within {seconds:.0f} s:\n{tail(server.log)}")
            time.sleep(0.5)


def launch(
    name: str, command: list[str], env: dict[str, str], url: str, work: Path, cwd: Path = ROOT
) -> Server:
    log = work / f"{name}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=os.environ | {"PYTHONPATH": str(ROOT)} | env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(name, url, process, log)


def start(
    name: str, models_dir: Path, step: str, model: Path, work: Path, workers: int | None
) -> Server:
    """Start one app on a free port of 127.0.0.1 (not waiting for it)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if name == "ours":  # the service image's command (a uvicorn worker per core)
        command = [sys.executable, "-m", "service", *host, *UVICORN_FLAGS]
        command += ["--workers", str(workers)] if workers else []
        env = {"MODELS_DIR": str(models_dir)}
        return launch(name, command, env, f"{base}/predict/{step}", work)
    python = str(peer_venvs.venv(name) / "bin/python")
    env = {"MODEL_PATH": str(model)}
    if name == "tutorial":
        command = [python, "-m", "uvicorn", "--app-dir", "bench/peer_apps", "tutorial:app", *host]
        return launch(name, command + UVICORN_FLAGS, env, f"{base}/predict", work)
    if name == "litserve":
        command = [python, "-m", "bench.peer_apps.litserve_app", str(port)]
        return launch(name, command, env, f"{base}/predict", work)
    if name == "bentoml":
        bentoml = str(Path(python).parent / "bentoml")
        command = [bentoml, "serve", "bench.peer_apps.bentoml_service:Digit", *host]
        # Its home (model store, logs) in the run's folder; no usage reports sent out.
        env |= {"BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
        return launch(name, command, env, f"{base}/predict", work)
    if name == "torchserve":
        return start_torchserve(Path(python).parent, port, model, work)
    raise ValueError(name)


def start_torchserve(bin_dir: Path, port: int, model: Path, work: Path) -> Server:
    """TorchServe as its docs run a model: archive it with a custom handler into a model
    store, then serve the store, one worker for the model, with ports of our choosing."""
    home = work / "torchserve"
    (home / "store").mkdir(parents=True)
    subprocess.run(
        [
            str(bin_dir / "torch-model-archiver"),
            "--model-name",
            "digit",
            "--version",
            "1.0",
            "--serialized-file",
            str(model),
            "--handler",
            str(ROOT / "bench/peer_apps/torchserve_handler.py"),
            "--export-path",
            str(home / "store"),
        ],
        check=True,
        cwd=home,
    )
    config = home / "config.properties"
    config.write_text(
        f"inference_address=http://127.0.0.1:{port}\n"
        f"management_address=http://127.0.0.1:{free_port()}\n"
        f"metrics_address=http://127.0.0.1:{free_port()}\n"
        "default_workers_per_model=1\n"
        # No per-model pip install at start-up, and no API tokens: this machine is offline and
        # the load generator sends none (both are TorchServe's documented switches).
        "install_py_dep_per_model=false\n"
        "disable_token_authorization=true\n"
    )
    command = [str(bin_dir / "torchserve"), "--start", "--foreground", "--ncs"]
    command += ["--model-store", str(home / "store"), "--models", "digit=digit.mar"]
    command += ["--ts-config", str(config), "--disable-token-auth"]
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG_LOCATION": str(home / "logs")}
    return launch(
        "torchserve", command, env, f"http://127.0.0.1:{port}/predictions/digit", work, cwd=home
    )


@contextlib.contextmanager
def servers(
    names: list[str],
    models_dir: Path,
    step: str,
    model: Path,
    work: Path,
    probe: Upload,
    workers: int | None = None,
) -> Iterator[list[Server]]:
    started: list[Server] = []
    try:
        for name in names:
            started.append(start(name, models_dir, step, model, work, workers))
        for server in started:
            wait_ready(server, probe)
            print(f"{server.name} ready at {server.url}", file=sys.stderr, flush=True)
        yield started
    finally:
        for server in started:
            stop(server)


# --- Same answers first ---------------------------------------------------------------------


def answers(server: Server, uploads: list[tuple[bytes, str]]) -> list[tuple[int, np.ndarray]]:
    """(digit, probabilities) of each upload, one request at a time."""
    result = []
    with httpx.Client(timeout=60) as client:
        for number, (data, content_type) in enumerate(uploads):
            files = {"file": (f"upload-{number}", data, content_type)}
            response = client.post(server.url, files=files)
            if response.status_code != 200:
                sys.exit(
                    f"{server.name} answered {response.status_code} to upload {number}: "
                    f"{response.text[:300]}"
                )
            body = response.json()
            result.append((int(body["digit"]), np.array(body["probabilities"], np.float64)))
    return result


def check_answers(
    started: list[Server],
    timed: list[Upload],
    digits: np.ndarray,
    labels: np.ndarray,
    count: int,
    phones: int,
) -> tuple[list[str], int]:
    """Every app on the same uploads: framework peers must match ours; the tutorial app's
    wrong answers are counted. Returns report lines and the number of uploads checked."""
    photos = photo_like_set(digits, labels, count, seed=0, phones=phones)
    uploads = [(u.data, u.content_type) for u in timed] + [(p.data, p.content_type) for p in photos]
    truth = np.array([labels[0]] * len(timed) + [p.label for p in photos])
    kinds = [u.label for u in timed] + [p.kind for p in photos]
    by_name = {s.name: answers(s, uploads) for s in started}
    ours = by_name["ours"]
    our_digits = np.array([d for d, _ in ours])
    lines = [
        f"same uploads for every app: the {len(timed)} timed ones, {count} photo-like and "
        f"{phones} 12 MP phone photos of MNIST test digits (tests/service/photos.py)",
        "",
        "| app | same digit as ours | probabilities within 1e-5 of ours | right | right on photos where ours is right |",
        "|---|--:|--:|--:|--:|",
    ]
    problems, notes = [], []
    for name, theirs in by_name.items():
        their_digits = np.array([d for d, _ in theirs])
        close = np.array(
            [np.abs(p - q).max() <= TOLERANCE for (_, p), (_, q) in zip(theirs, ours, strict=True)]
        )
        same = their_digits == our_digits
        right = their_digits == truth
        photo = np.arange(len(uploads)) >= len(timed)
        where_ours_right = photo & (our_digits == truth)
        lines.append(
            f"| {name} | {same.sum()}/{len(same)} | {close.sum()}/{len(close)} "
            f"| {right.sum()}/{len(right)} | {right[where_ours_right].sum()}/{where_ours_right.sum()} |"
        )
        if name in FRAMEWORKS and not (same.all() and close.all()):
            bad = [kinds[i] for i in np.flatnonzero(~(same & close))][:5]
            problems.append(
                f"{name} differs from ours on {(~(same & close)).sum()} uploads ({bad})"
            )
        if name == "tutorial":
            wrong_kinds: dict[str, int] = {}
            for i in np.flatnonzero(where_ours_right & ~right):
                wrong_kinds[kinds[i]] = wrong_kinds.get(kinds[i], 0) + 1
            notes.append(
                f"the tutorial app is wrong on {(where_ours_right & ~right).sum()} of the "
                f"{where_ours_right.sum()} photos ours reads right: "
                + ", ".join(f"{k} {n}" for k, n in sorted(wrong_kinds.items()))
            )
    if problems:
        sys.exit("framework peers must answer as ours does:\n" + "\n".join(problems))
    return [*lines, "", *notes], len(uploads)


# --- The report -----------------------------------------------------------------------------


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def fastest(
    results: dict[tuple[str, int, str], list[dict[str, Any]]],
    label: str,
    level: int,
    names: list[str],
) -> str:
    frameworks = [n for n in names if n in FRAMEWORKS]
    return max(frameworks, key=lambda n: median(results[label, level, n], "rps"))


def report(
    results: dict[tuple[str, int, str], list[dict[str, Any]]],
    uploads: list[Upload],
    levels: list[int],
    names: list[str],
) -> None:
    print(
        "| upload | clients | app | req/s | p50 ms | p99 ms | errors | wrong | CPU ms/request "
        "| ours / app req/s |"
    )
    print("|---|--:|---|--:|--:|--:|--:|--:|--:|--:|")
    for upload in uploads:
        for level in levels:
            our_rps = median(results[upload.label, level, "ours"], "rps")
            for name in names:
                runs = results[upload.label, level, name]
                print(
                    f"| {upload.label} | {level} | {name} | {median(runs, 'rps'):.0f} "
                    f"| {median(runs, 'p50'):.2f} | {median(runs, 'p99'):.2f} "
                    f"| {sum(r['errors'] for r in runs)} | {sum(r['wrong'] for r in runs)} "
                    f"| {median(runs, 'cpu_ms'):.2f} | {our_rps / median(runs, 'rps'):.2f} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_mnist = os.environ.get("MNIST_DIR", str(ROOT.parent / "shared/datasets/mnist"))
    parser.add_argument("--models-dir", type=Path, help="a volume (default: train one now)")
    parser.add_argument("--mnist-dir", type=Path, default=Path(default_mnist))
    parser.add_argument("--limit", type=int, default=3000, help="training images, no volume given")
    parser.add_argument("--peers", default=",".join(APPS[1:]), help="comma-separated")
    parser.add_argument("--concurrency", type=parse_levels, default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per level and app")
    parser.add_argument("--slice", type=float, default=1.0, help="seconds per turn of one app")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each level")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each level; medians")
    parser.add_argument("--check-photos", type=int, default=180, help="photo-like uploads checked")
    parser.add_argument("--check-phones", type=int, default=9, help="12 MP photos checked")
    parser.add_argument(
        "--workers", type=int, help="of ours (default: the service's own, one per core)"
    )
    args = parser.parse_args()
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = set(peers) - set(APPS[1:])
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; choose from {', '.join(APPS[1:])}")
    names = ["ours", *peers]

    digits, labels = load_mnist(args.mnist_dir, "t10k")
    uploads = make_uploads(digits)
    for name in peers:  # before anything is timed: the first time, minutes each
        peer_venvs.venv(name, peer_venvs.venvs_dir() / f"{name}.pip.log")
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as temporary:
        work = Path(temporary)
        models_dir = args.models_dir
        if models_dir is None:
            models_dir = work / "models"
            train_volume(models_dir, args.mnist_dir, args.limit)
        index = read_index(models_dir)
        trained = [s for s in STEP_SLUGS if s in index.steps]
        if not trained:
            sys.exit(f"no step is published in {models_dir}: run `python -m trainer run` first")
        step = step_to_serve(trained)
        version = index.steps[step].version
        model = version_folder(models_dir, step, version) / "model.onnx"

        specs = write_specs(uploads, work)

        results: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
        with servers(names, models_dir, step, model, work, uploads[0], args.workers) as started:
            check_lines, checked = check_answers(
                started, uploads, digits, labels, args.check_photos, args.check_phones
            )
            urls = {s.name: s.url for s in started}
            for repeat in range(args.repeats):
                for upload in uploads:
                    for level in args.concurrency:
                        before = cpu_seconds(started)
                        measured = measure(
                            urls,
                            specs[upload.label],
                            level,
                            args.warmup,
                            args.duration,
                            args.slice,
                            expect=int(labels[0]),
                        )
                        after = cpu_seconds(started)
                        for name, result in measured.items():
                            spent = after[name] - before[name]
                            result["cpu_ms"] = 1e3 * spent / max(result["answered"], 1)
                            results.setdefault((upload.label, level, name), []).append(result)
                            if result["errors"]:
                                print(f"{name}, {upload.label}, {level}: {result['error_kinds']}")
                print(f"run {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)

    ours = f"python -m service --workers {args.workers}" if args.workers else "python -m service"
    print(f"\nstep `{step}` version {version}; {', '.join(names)}; ours: {ours}")
    print(
        f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores; {args.duration:g} s per level and "
        f"app in turns of {args.slice:g} s after {args.warmup:g} s warm-up, median of "
        f"{args.repeats}; load average {os.getloadavg()[0]:.2f} at the end"
    )
    print()
    for line in check_lines:
        print(line)
    print()
    report(results, uploads, args.concurrency, names)
    print()

    small, photo = uploads[0].label, uploads[1].label
    top, first = args.concurrency[-1], args.concurrency[0]
    errors = sum(r["errors"] for runs in results.values() for r in runs)
    requests = sum(r["answered"] for runs in results.values() for r in runs)
    checks = [(f"no errors ({errors} in {requests + errors:,} requests)", errors == 0)]
    ratio = float("nan")
    if any(n in FRAMEWORKS for n in names):
        peer = fastest(results, small, top, names)
        ratio = median(results[small, top, "ours"], "rps") / median(
            results[small, top, peer], "rps"
        )
        quickest = min(
            (n for n in names if n in FRAMEWORKS),
            key=lambda n: median(results[small, first, n], "p50"),
        )
        latency = median(results[small, first, "ours"], "p50") / median(
            results[small, first, quickest], "p50"
        )
        jpeg_peer = fastest(results, photo, top, names)
        jpeg = median(results[photo, top, "ours"], "rps") / median(
            results[photo, top, jpeg_peer], "rps"
        )
        checks += [
            (f"{small} at {top} clients: ours / {peer} req/s {ratio:.2f} >= 2.00", ratio >= 2),
            (
                f"{small} at {first} client{'s' * (first > 1)}: ours / {quickest} p50 "
                f"{latency:.2f} <= 0.60",
                latency <= 0.6,
            ),
            (f"{photo} at {top} clients: ours / {jpeg_peer} req/s {jpeg:.2f} >= 1.50", jpeg >= 1.5),
        ]
    print(f"checked {checked} uploads on every app before timing")
    for text, holds in checks:
        print(f"target {'holds' if holds else 'FAILS'}: {text}")
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
