"""The service's Prometheus metrics, in one place; `GET /metrics` exposes them.

Under `python -m service` with several workers, each worker keeps its counts in files of
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode) and `/metrics` adds them up;
so the gauges here say how to combine workers, and none reads a value at scrape time.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client import generate_latest as _generate_latest

from volume import STEPS

MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ

PREDICTIONS = Counter("mnist_predictions_total", "Images predicted, per step", ["step"])
LATENCY = Histogram(
    "mnist_predict_seconds",
    "Time to answer a successful prediction request (read, decode, infer), per step",
    ["step"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
# Every step's series exists from the start, so rate() sees its first one; bound once here, as
# `labels()` per request would look each one up again under a lock.
STEP_PREDICTIONS = {s.slug: PREDICTIONS.labels(s.slug) for s in STEPS}
STEP_LATENCY = {s.slug: LATENCY.labels(s.slug) for s in STEPS}

# What an operator alerts on: every answer by route template (never the raw path, whose values
# are unbounded) and status code, e.g. rate(mnist_http_responses_total{code=~"5.."}[5m]).
# Counted by `service.limits.RequestLimits`. Answers no route gave have a name in brackets:
# "(unmatched)" a path no route matches, "(over capacity)" past MAX_REQUESTS, and from the
# launcher (`service.server`) "(connection limit)" past MAX_CONNECTIONS and "(request head)"
# a head past MAX_HEADER_BYTES.
RESPONSES = Counter(
    "mnist_http_responses_total", "HTTP responses, by route template and status code",
    ["route", "code"],
)  # fmt: skip
IN_FLIGHT = Gauge(
    "mnist_http_requests_in_flight",
    "HTTP requests being answered now (their body received), all workers together",
    multiprocess_mode="livesum",
)
# mnist_model_info{step="gap",version="2026..."} 1: which version each step serves; a swap
# shows as the series of the new version replacing the old one's. (A gauge, not an Info:
# prometheus_client's Info cannot be shared by workers. With several, a version a worker left
# reads 0 until every worker has left it: a file's series cannot be removed.)
SERVING = Gauge(
    "mnist_model_info",
    "1 for the published version each step is serving",
    ["step", "version"],
    multiprocess_mode="livemax",
)


def serving(step: str, version: str, previous: str | None) -> None:
    """Record that `step` now serves `version` instead of `previous`."""
    SERVING.labels(step, version).set(1)
    if previous is not None and previous != version:
        if MULTIPROCESS:
            SERVING.labels(step, previous).set(0)
        else:
            SERVING.remove(step, previous)


# The lab's live view (service/live.py): pages holding a stream open, and events sent to them.
LIVE_STREAMS = Gauge(
    "mnist_live_streams",
    "Live progress streams open now (GET /progress/stream), all workers together",
    multiprocess_mode="livesum",
)
LIVE_EVENTS = Counter(
    "mnist_live_events_total", "Events sent on live progress streams, by kind", ["kind"]
)

HEADER_TIMEOUTS = Counter(
    "mnist_http_header_timeouts_total",
    "Connections closed because a request's headers did not arrive within HEADER_TIMEOUT",
)


def exposition() -> bytes:
    """Every metric in Prometheus' text format: this process's, or with several workers
    (PROMETHEUS_MULTIPROC_DIR set) the counts of all of them, read from their files."""
    if not MULTIPROCESS:
        return _generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return _generate_latest(registry)
