"""The service's Prometheus metrics, in one place; `GET /metrics` exposes them."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from volume import STEPS

PREDICTIONS = Counter("mnist_predictions_total", "Images predicted, per step", ["step"])
LATENCY = Histogram(
    "mnist_predict_seconds",
    "Time to answer a successful /predict or /v2 infer request (read, decode, infer), per step",
    ["step"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
# Every step's series exists from the start, so rate() sees its first one; bound once here, as
# `labels()` per request would look each one up again under a lock.
STEP_PREDICTIONS = {s.slug: PREDICTIONS.labels(s.slug) for s in STEPS}
STEP_LATENCY = {s.slug: LATENCY.labels(s.slug) for s in STEPS}
