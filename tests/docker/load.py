"""Steady load on the service replicas behind nginx, and what it saw. tests/docker/e2e.sh runs it.

    python tests/docker/load.py run --url http://127.0.0.1:PORT --png digit.png \
        --out load.jsonl --stop-file STOP [--rate 100] [--workers 2] [--seconds 900]
    python tests/docker/load.py report load.jsonl --poll-seconds 2 \
        --publish 2026-12-01T10:00:00+00:00,VERSION,REPLICAS ...

`run` sends `--rate` requests a second in all, paced (not as fast as it can), from 127.0.0.1 to
127.0.0.1 only, alternating `POST /predict/gap` (the PNG) and `POST /v2/models/gap/infer` (the
same digit, preprocessed as the service does), until the stop file appears or `--seconds` pass.
It writes a JSON line per request: when it was sent and answered, the status or the transport
error, the version that answered, its probabilities, and which replica (nginx's X-Replica).

`report` prints the requests, failures, rate and latency, the requests each replica answered,
and for each publish (when the index named the new version, the version, how many replicas
were up) the time each replica took to answer with it. It exits 1 if a request failed, if a
replica answered the old version to a request sent more than `--poll-seconds` (plus
`--slack`) after the publish, if fewer replicas than were up answered the new one, or if the
two routes disagree on a version's probabilities.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from service import images  # noqa: E402  (the service's own preprocessing, for /v2)

STEP = "gap"


def v2_body(png: bytes) -> bytes:
    tensor = images.preprocess(png, 25_000_000)[None]
    request = {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": list(tensor.shape),
                "data": tensor.ravel().tolist(),
            }
        ]
    }
    return json.dumps(request).encode()


def send(client: httpx.Client, kind: str, png: bytes, v2: bytes) -> dict[str, Any]:
    """One request, as a record; a transport error is a record too, not an exception."""
    record: dict[str, Any] = {"kind": kind, "sent": time.time()}
    try:
        if kind == "predict":
            reply = client.post(
                f"/predict/{STEP}", content=png, headers={"content-type": "image/png"}
            )
        else:
            reply = client.post(f"/v2/models/{STEP}/infer", content=v2)
    except httpx.HTTPError as e:
        record |= {"done": time.time(), "status": None, "error": f"{type(e).__name__}: {e}"}
        return record
    record |= {"done": time.time(), "status": reply.status_code}
    # nginx lists every replica it tried, the one that answered last.
    tried = [a.strip() for a in reply.headers.get("x-replica", "").split(",")]
    record |= {"replica": tried[-1], "tries": len(tried)}
    if reply.status_code != 200:
        record["error"] = reply.text[:300]
    elif kind == "predict":
        body = reply.json()
        record |= {"version": body["version"], "probabilities": body["probabilities"]}
    else:
        body = reply.json()
        record |= {"version": body["model_version"], "probabilities": body["outputs"][0]["data"]}
    return record


def run(args: argparse.Namespace) -> int:
    png = args.png.read_bytes()
    v2 = v2_body(png)
    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    started = time.monotonic()
    interval = args.workers / args.rate  # each worker's share of the pace

    def worker(number: int) -> None:
        kinds = ("predict", "v2") if number % 2 == 0 else ("v2", "predict")
        with httpx.Client(base_url=args.url, timeout=30) as client:
            count = 0
            while not args.stop_file.exists() and time.monotonic() - started < args.seconds:
                record = send(client, kinds[count % 2], png, v2)
                with lock:
                    records.append(record)
                count += 1
                next_at = started + number * interval / args.workers + count * interval
                time.sleep(max(0.0, next_at - time.monotonic()))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records.sort(key=lambda r: r["sent"])
    args.out.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"load: {len(records)} requests in {time.monotonic() - started:.1f} s -> {args.out}")
    return 0


@dataclass(frozen=True)
class Publish:
    at: float  # epoch seconds: when the index named the new version
    version: str
    replicas: int  # replicas up then, each of which must answer with it


def parse_publish(text: str) -> Publish:
    at, version, replicas = text.split(",")
    return Publish(datetime.fromisoformat(at).timestamp(), version, int(replicas))


def analyse(
    records: list[dict[str, Any]], publishes: list[Publish], poll_seconds: float, slack: float
) -> tuple[list[str], list[str]]:
    """Lines to print, and the problems found (none means the run passed)."""
    lines, problems = [], []
    failed = [r for r in records if r.get("status") != 200]
    span = records[-1]["done"] - records[0]["sent"] if records else 0.0
    latency = np.array([r["done"] - r["sent"] for r in records]) * 1000
    lines.append(
        f"requests: {len(records)} in {span:.1f} s ({len(records) / max(span, 1e-9):.0f}/s), "
        f"failed: {len(failed)}"
    )
    if len(latency):
        p50, p99 = np.percentile(latency, [50, 99])
        lines.append(f"latency ms: p50 {p50:.1f}, p99 {p99:.1f}, max {latency.max():.1f}")
    per_replica: dict[str, int] = {}
    for r in records:
        if r.get("status") == 200:
            per_replica[r["replica"]] = per_replica.get(r["replica"], 0) + 1
    lines.append("answered per replica: " + ", ".join(f"{k} {v}" for k, v in per_replica.items()))
    retried = [r for r in records if r.get("status") == 200 and r.get("tries", 1) > 1]
    lines.append(f"answered after nginx retried another replica: {len(retried)}")
    for r in failed[:5]:
        problems.append(f"failed: {r['kind']} sent at {r['sent']:.3f}: {r.get('error')}")
    if not records:
        problems.append("no requests were sent")

    # The same digit: both routes, and every answer of one version, give the same probabilities.
    by_version: dict[str, np.ndarray] = {}
    for r in records:
        if r.get("status") != 200:
            continue
        seen = by_version.setdefault(r["version"], np.asarray(r["probabilities"]))
        if not np.allclose(seen, r["probabilities"], atol=1e-6):
            problems.append(f"version {r['version']}: {r['kind']} answered other probabilities")
            break

    for number, publish in enumerate(publishes, start=1):
        end = publishes[number].at if number < len(publishes) else float("inf")
        window = [r for r in records if r.get("status") == 200 and publish.at <= r["sent"] < end]
        replicas = sorted({r["replica"] for r in window})
        new = {
            a
            for a in replicas
            if any(r["version"] == publish.version for r in window if r["replica"] == a)
        }
        lines.append(f"publish {number}: {publish.version}, {publish.replicas} replicas up")
        if len(new) < publish.replicas:
            problems.append(
                f"publish {number}: {len(new)} replicas answered {publish.version}, "
                f"{publish.replicas} were up"
            )
        for address in replicas:
            mine = [r for r in window if r["replica"] == address]
            old = [r["sent"] - publish.at for r in mine if r["version"] != publish.version]
            fresh = [r["sent"] - publish.at for r in mine if r["version"] == publish.version]
            last_old = max(old) if old else None
            first_new = min(fresh) if fresh else None
            lines.append(
                f"  replica {address}: last old answer to a request sent at "
                f"{'-' if last_old is None else f'+{last_old:.2f} s'}, first new at "
                f"{'-' if first_new is None else f'+{first_new:.2f} s'} ({len(mine)} answers)"
            )
            if last_old is not None and last_old > poll_seconds + slack:
                problems.append(
                    f"publish {number}: replica {address} answered the old version to a "
                    f"request sent {last_old:.2f} s after the publish (POLL_SECONDS {poll_seconds})"
                )
    return lines, problems


def report(args: argparse.Namespace) -> int:
    records = [json.loads(line) for line in args.records.read_text().splitlines() if line]
    publishes = [parse_publish(p) for p in args.publish]
    lines, problems = analyse(records, publishes, args.poll_seconds, args.slack)
    print("\n".join(lines))
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("run", help="send the load, write one JSON line per request")
    load.add_argument("--url", required=True, help="http://127.0.0.1:PORT (loopback only)")
    load.add_argument("--png", type=Path, required=True, help="the digit to send")
    load.add_argument("--out", type=Path, required=True)
    load.add_argument("--stop-file", type=Path, required=True, help="stop once this exists")
    load.add_argument("--rate", type=float, default=100, help="requests a second, in all")
    load.add_argument("--workers", type=int, default=2, help="concurrent connections")
    load.add_argument("--seconds", type=float, default=900, help="stop after this long anyway")
    load.set_defaults(func=run)
    rep = sub.add_parser("report", help="summarise a run; exit 1 on a failure or a late swap")
    rep.add_argument("records", type=Path)
    rep.add_argument("--publish", action="append", default=[], metavar="ISO_TIME,VERSION,REPLICAS")
    rep.add_argument("--poll-seconds", type=float, default=2.0)
    rep.add_argument(
        "--slack",
        type=float,
        default=0.5,
        help="allowed beyond POLL_SECONDS: loading the new ONNX file, a request in flight",
    )
    rep.set_defaults(func=report)
    args = parser.parse_args(argv)
    if args.command == "run" and not args.url.startswith(("http://127.0.0.1", "http://localhost")):
        parser.error("--url must be on 127.0.0.1: load tests stay on this machine")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
