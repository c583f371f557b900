"""Traces (service/tracing.py): with the SDK's in-memory exporter, a prediction's span has
children for the body, the decoding and the inference, with the step and version; and off,
neither the SDK nor the instrumentation is even imported (FastAPI imports the API itself)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service import tracing
from service.app import app
from tests.conftest import ROOT
from tests.service.conftest import publish, random_model, start_client
from tests.service.test_api import DIGIT
from tests.service.test_v2 import FLAT, infer

CHILDREN = ["read body", "decode and preprocess", "inference"]


@pytest.fixture
def traced(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.instrument(app, provider)
    try:
        for client in start_client(models_dir, monkeypatch):
            exporter.clear()  # start-up's
            yield client, exporter
    finally:
        tracing.uninstrument(app)


def tree(spans: tuple[ReadableSpan, ...]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The one server span and its children, in the order they ended."""
    (server,) = [s for s in spans if s.parent is None]
    children = [s for s in spans if s.parent is not None]
    assert all(s.parent.span_id == server.context.span_id for s in children)  # type: ignore[union-attr]
    assert {s.context.trace_id for s in spans} == {server.context.trace_id}
    return server, children


# (what, the request, the server span's name)
REQUESTS = [
    ("raw body", lambda c: c.post("/predict/gap", content=DIGIT,
                                  headers={"content-type": "image/png"}), "POST /predict/{step}"),
    ("multipart", lambda c: c.post("/predict/6", files={"file": ("a.png", DIGIT)}),
     "POST /predict/{step}"),
    ("v2", lambda c: infer(c, "/v2/models/gap/infer", {"inputs": [FLAT]}),
     "POST /v2/models/{name}/infer"),
]  # fmt: skip


@pytest.mark.parametrize(("send", "name"), [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS])
def test_a_prediction_has_a_span_per_phase_with_step_and_version(
    traced: tuple[TestClient, InMemorySpanExporter], send, name: str
) -> None:
    client, exporter = traced
    version = client.get("/steps/gap").json()["serving"]
    exporter.clear()
    answer = send(client)
    assert answer.status_code == 200, answer.text
    server, children = tree(exporter.get_finished_spans())
    assert server.name == name
    assert [s.name for s in children] == CHILDREN
    for span in (server, *children):
        assert span.attributes is not None
        assert (span.attributes["mnist.step"], span.attributes["mnist.version"]) == ("gap", version)
    assert server.attributes is not None and server.attributes["http.status_code"] == 200
    assert children[0].start_time >= server.start_time and children[-1].end_time <= server.end_time


def test_probes_are_not_traced_and_a_pinned_version_is_named(
    traced: tuple[TestClient, InMemorySpanExporter], models_dir: Path
) -> None:
    client, exporter = traced
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200
    assert exporter.get_finished_spans() == ()
    (old,) = [v["version"] for v in client.get("/steps/gap").json()["versions"]]
    publish(models_dir, "gap", random_model(50))
    client.app.state.models.refresh()  # type: ignore[attr-defined]
    exporter.clear()
    answer = client.post(f"/predict/gap?version={old}", content=DIGIT,
                         headers={"content-type": "image/png"})  # fmt: skip
    assert answer.json()["version"] == old
    server, children = tree(exporter.get_finished_spans())
    assert {s.attributes["mnist.version"] for s in (server, *children)} == {old}  # type: ignore[index]


def test_the_spans_still_batched_are_sent_when_the_service_stops(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    # As in production, batched; the batch is due long after this test.
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=600_000))
    tracing.instrument(app, provider)
    try:
        for client in start_client(models_dir, monkeypatch):
            assert client.post("/predict/gap", content=DIGIT,
                               headers={"content-type": "image/png"}).status_code == 200  # fmt: skip
            assert exporter.get_finished_spans() == ()  # held in the batch
        server, children = tree(exporter.get_finished_spans())  # the lifespan ended: sent
        assert (server.name, [s.name for s in children]) == ("POST /predict/{step}", CHILDREN)
    finally:
        tracing.uninstrument(app)
        provider.shutdown()


def test_off_the_sdk_is_not_imported() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    check = (
        "import sys, service.app\n"
        "heavy = ('opentelemetry.sdk', 'opentelemetry.instrumentation', 'opentelemetry.exporter')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(heavy))\n"
        "assert not loaded, loaded\n"
        "from service import tracing\n"
        "assert tracing.span('x') is tracing.NOTHING\n"
    )
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True,
                          env=env | {"PYTHONPATH": str(ROOT)}, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr


# (environment, on?)
ENVIRONMENTS = [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
]


@pytest.mark.parametrize(("environ", "on"), ENVIRONMENTS)
def test_on_only_when_the_standard_variables_ask(environ: dict[str, str], on: bool) -> None:
    assert tracing.configured(environ) is on


def test_the_exporters_named_are_the_ones_installed() -> None:
    provider = tracing.sdk_provider({"OTEL_TRACES_EXPORTER": "console,otlp"})
    processors = provider._active_span_processor._span_processors  # type: ignore[attr-defined]
    exporters = [type(p.span_exporter).__name__ for p in processors]
    assert exporters == ["ConsoleSpanExporter", "OTLPSpanExporter"]
    provider.shutdown()
    with pytest.raises(ValueError, match="no exporter 'zipkin' here; use one of"):
        tracing.sdk_provider({"OTEL_TRACES_EXPORTER": "zipkin"})
