"""The service's Prometheus metrics, in one place; `GET /metrics` exposes them."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

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
    "mnist_http_requests_in_flight", "HTTP requests being answered now (their body received)"
)
# mnist_model_info{step="gap",version="2026..."} 1: which version each step serves; a swap
# shows as the series of the new version replacing the old one's.
SERVING = Info("mnist_model", "The published version each step is serving", ["step"])


def serving(step: str, version: str) -> None:
    SERVING.labels(step).info({"version": version})


HEADER_TIMEOUTS = Counter(
    "mnist_http_header_timeouts_total",
    "Connections closed because a request's headers did not arrive within HEADER_TIMEOUT",
)
