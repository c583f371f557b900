"""The service's Prometheus metrics, in one place; `GET /metrics` exposes them."""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client import generate_latest as _generate_latest

from volume import STEPS

PREDICTIONS = Counter("mnist_predictions_total", "Images predicted, per step", ["step"])
LATENCY = Histogram(
    "mnist_predict_seconds",
    "Time to answer a successful /predict request (read, decode, infer), per step",
    ["step"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
# Every step's series exists from the start, so rate() sees its first one; bound once here, as
# `labels()` per request would look each one up again under a lock.
STEP_PREDICTIONS = {s.slug: PREDICTIONS.labels(s.slug) for s in STEPS}
STEP_LATENCY = {s.slug: LATENCY.labels(s.slug) for s in STEPS}


def exposition() -> bytes:
    """Every metric in Prometheus' text format. Under `python -m service` with several workers
    (PROMETHEUS_MULTIPROC_DIR set), the counts of all of them, read from their files."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return _generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return _generate_latest(registry)
