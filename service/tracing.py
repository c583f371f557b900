"""OpenTelemetry traces, on when the standard variables ask for them, and free when they do not.

On when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (OTLP over
HTTP/protobuf, e.g. `http://otel-collector:4318`), or OTEL_TRACES_EXPORTER names exporters
(`otlp`, `console`; `none` is off). The rest of the SDK's standard variables apply as usual:
OTEL_SERVICE_NAME (default `mnist-steps`), OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER and its
argument, OTEL_BSP_* for the batching, OTEL_EXPORTER_OTLP_HEADERS.

Each request gets a server span from opentelemetry-instrumentation-fastapi (probes and /metrics
excluded), and the routes that infer add children: `read body`, `decode and preprocess`, and
`inference`, each with the step and version (`mnist.step`, `mnist.version`), which the server
span carries too.

Off, neither the SDK nor the instrumentation is imported (tests/service/test_tracing.py checks
it; FastAPI itself imports the OpenTelemetry API where it is installed), and `span` hands back
one shared no-op context manager: bench/serve.py measures what that costs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

    from service.models import LoadedModel

# Not traced: what probes and scrapers call every few seconds (regexes, as the instrumentation
# takes them).
EXCLUDED_URLS = "/healthz$,/readyz$,/metrics$,/static/.*"
# OTEL_TRACES_EXPORTER's `otlp` as this service installs it: over HTTP/protobuf (port 4318).
EXPORTER_ALIASES = {"otlp": "otlp_proto_http"}
NOTHING = contextlib.nullcontext()

_tracer: Tracer | None = None  # set while tracing is on
_provider: TracerProvider | None = None  # its provider, flushed when the service stops


def configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces."""
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return False
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return bool(exporters) or any(environ.get(name, "").strip() for name in endpoints)


def sdk_provider(environ: Mapping[str, str] = os.environ) -> TracerProvider:
    """A TracerProvider that batches spans to the exporters OTEL_TRACES_EXPORTER names
    (default `otlp`), found by the entry points the exporters' packages declare."""
    from importlib.metadata import entry_points

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service = environ.get("OTEL_SERVICE_NAME") or "mnist-steps"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    found = {e.name: e for e in entry_points(group="opentelemetry_traces_exporter")}
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    for name in (n.strip() for n in names.split(",") if n.strip()):
        entry = found.get(EXPORTER_ALIASES.get(name, name))
        if entry is None:
            known = ", ".join(sorted({*found, *EXPORTER_ALIASES})) or "none"
            raise ValueError(f"OTEL_TRACES_EXPORTER: no exporter {name!r} here; use one of {known}")
        provider.add_span_processor(BatchSpanProcessor(entry.load()()))
    return provider


def instrument(app: FastAPI, provider: TracerProvider | None = None) -> None:
    """Trace every request of `app` into `provider` (default: `sdk_provider()`)."""
    global _tracer, _provider
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    provider = provider or sdk_provider()
    # Our own `read body` span times the body; one span per ASGI message would be noise.
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        excluded_urls=EXCLUDED_URLS,
        exclude_spans=["receive", "send"],
    )
    app.middleware_stack = None  # built again, tracing included, at the next request
    _tracer = provider.get_tracer("service")
    _provider = provider


def uninstrument(app: FastAPI) -> None:
    """Stop tracing `app` (the tests' in-memory tracing ends with its test)."""
    global _tracer, _provider
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.uninstrument_app(app)
    _tracer = _provider = None


def flush() -> None:
    """Send the spans still batched. The service calls it as it stops: under uvicorn the SDK's
    exit hook left them unsent, and a stopped service lost its last seconds of spans."""
    if _provider is not None:
        _provider.force_flush()


def attributes(model: LoadedModel | None) -> dict[str, Any]:
    return {} if model is None else {"mnist.step": model.step, "mnist.version": model.version}


def span(name: str, model: LoadedModel | None = None) -> contextlib.AbstractContextManager[Any]:
    """A child span of the request's, naming `model`'s step and version; a no-op when off."""
    if _tracer is None:
        return NOTHING
    return _tracer.start_as_current_span(name, attributes=attributes(model))


def annotate(model: LoadedModel) -> None:
    """Put `model`'s step and version on the request's span too (what a trace is searched by)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(attributes(model))
