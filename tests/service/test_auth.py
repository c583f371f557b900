"""API keys (service/auth.py): off by default; on, every route but the probes, the metrics, the
page and the API's docs needs one, in either header; refusals are 401s that say how to send a
key, counted in /metrics; keys are compared in constant time and never logged."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service import auth
from service.settings import Settings
from service.telemetry import RESPONSES
from tests.service.conftest import KEYS, start_client
from tests.service.test_api import DIGIT
from tests.service.test_v2 import FLAT

PNG = {"content-type": "image/png"}
IMAGE = {"content": DIGIT, "headers": PNG}
BEARER = {"authorization": f"Bearer {KEYS[0]}"}
INFER = {"json": {"inputs": [FLAT]}}

# (what, method, path, request keyword arguments, extra headers, status, words of the answer)
REQUESTS: list[tuple[str, str, str, dict[str, Any], dict[str, str], int, str]] = [
    ("no key", "POST", "/predict/gap", IMAGE, {}, 401, "needs an API key"),
    ("wrong key", "POST", "/predict/gap", IMAGE, {"authorization": "Bearer nope"}, 401,
     "not one of this service's keys"),
    ("a key's prefix", "POST", "/predict/gap", IMAGE, {"x-api-key": KEYS[0][:-1]}, 401,
     "not one of"),
    ("the key as Basic", "POST", "/predict/gap", IMAGE, {"authorization": f"Basic {KEYS[0]}"},
     401, "needs an API key"),
    ("Bearer", "POST", "/predict/gap", IMAGE, BEARER, 200, '"step":"gap"'),
    ("bearer, any case", "POST", "/predict/gap", IMAGE, {"authorization": f"bearer {KEYS[1]}"},
     200, '"digit"'),
    ("X-API-Key", "POST", "/predict/gap", IMAGE, {"x-api-key": KEYS[1]}, 200, '"digit"'),
    ("a wrong Bearer, a right X-API-Key", "POST", "/predict/gap", IMAGE,
     {"authorization": "Bearer nope", "x-api-key": KEYS[0]}, 200, '"digit"'),
    ("every step at once", "POST", "/predict/all", IMAGE, {}, 401, "Authorization: Bearer KEY"),
    ("explain", "POST", "/explain/gap", IMAGE, {}, 401, "X-API-Key: KEY"),
    ("steps", "GET", "/steps", {}, {}, 401, "needs an API key"),
    ("kept versions", "GET", "/steps/gap", {}, {}, 401, "needs an API key"),
    ("mistakes", "GET", "/steps/scheduler/mistakes", {}, {}, 401, "needs an API key"),
    ("samples", "GET", "/samples", {}, {}, 401, "needs an API key"),
    ("v2 infer", "POST", "/v2/models/gap/infer", INFER, {}, 401, '"error":'),
    ("v2 metadata", "GET", "/v2/models/gap", {}, {"x-api-key": "nope"}, 401, '"error":'),
    ("v2 with a key", "POST", "/v2/models/gap/infer", INFER, BEARER, 200, '"model_name": "gap"'),
    ("unknown path", "GET", "/nope", {}, {}, 401, "needs an API key"),
    ("liveness", "GET", "/healthz", {}, {}, 200, '"ok"'),
    ("readiness", "GET", "/readyz", {}, {}, 200, '"ready":true'),
    ("metrics", "GET", "/metrics", {}, {}, 200, "mnist_predictions_total"),
    ("the page", "GET", "/", {}, {}, 200, "<html"),
    ("its scripts", "GET", "/static/auth.js", {}, {}, 200, "sessionStorage"),
    ("docs", "GET", "/docs", {}, {}, 200, "swagger"),
    ("the OpenAPI document", "GET", "/openapi.json", {}, {}, 200, '"securitySchemes"'),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "headers", "status", "text"),
    [case[1:] for case in REQUESTS],
    ids=[case[0] for case in REQUESTS],
)
def test_with_keys_on(
    keyed_client: TestClient,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    headers: dict[str, str],
    status: int,
    text: str,
) -> None:
    sent = {**kwargs, "headers": {**kwargs.get("headers", {}), **headers}}
    answer = keyed_client.request(method, path, **sent)
    assert answer.status_code == status, answer.text
    assert text in answer.text
    if status == 401:
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert list(answer.json()) == (["error"] if path.startswith("/v2") else ["detail"])


def refused() -> dict[str, float]:
    """The 401s counted so far, by reason (the counters live as long as the process)."""
    return {r: RESPONSES.labels(r, "401")._value.get() for r in (auth.NO_KEY, auth.WRONG_KEY)}


def test_refusals_are_counted_by_reason(keyed_client: TestClient) -> None:
    before = refused()
    for headers in ({}, {}, {"x-api-key": "nope"}, BEARER):
        keyed_client.post("/predict/gap", headers={**PNG, **headers}, content=DIGIT)
    after = refused()
    assert after[auth.NO_KEY] - before[auth.NO_KEY] == 2
    assert after[auth.WRONG_KEY] - before[auth.WRONG_KEY] == 1
    exposed = keyed_client.get("/metrics").text
    assert (
        f'mnist_http_responses_total{{code="401",route="(no API key)"}} {after[auth.NO_KEY]}'
        in exposed
    )


def test_keys_are_off_by_default(client: TestClient) -> None:
    assert client.post("/predict/gap", content=DIGIT, headers=PNG).status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json()["components"]


def test_a_keys_file_adds_its_keys(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Docker or Kubernetes secret: one key a line, comments and blank lines skipped."""
    secret = tmp_path / "api-keys"
    secret.write_text(f"# rotated 2026-12-01\n{KEYS[1]}\n\n")
    monkeypatch.setenv("API_KEYS_FILE", str(secret))
    for client in start_client(models_dir, monkeypatch):
        ok = client.post("/predict/gap", content=DIGIT, headers={**PNG, "x-api-key": KEYS[1]})
        assert ok.status_code == 200
        refused = client.post("/predict/gap", content=DIGIT, headers=PNG)
        assert refused.status_code == 401


# (environment, words of the error): a start that would serve open, or guessably, stops.
BAD_SETTINGS = [
    ({"API_KEYS": "short"}, "not 16 or more printable ASCII characters"),
    ({"API_KEYS": f"{KEYS[0]},tab\tin-it-0123456789"}, "API key number 2"),
    ({"API_KEYS_FILE": "/nonexistent/api-keys"}, "cannot be read"),
]


@pytest.mark.parametrize(("environ", "error"), BAD_SETTINGS)
def test_bad_keys_stop_the_start_without_showing_them(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], error: str
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None)
    assert error in str(raised.value)
    assert "short" not in str(raised.value).replace("API_KEYS", "")
    assert "tab\tin" not in str(raised.value)


def test_keys_are_never_logged(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("API_KEYS", ",".join(KEYS))
    with caplog.at_level(logging.DEBUG):
        for client in start_client(models_dir, monkeypatch):
            client.post("/predict/gap", content=DIGIT, headers={**PNG, **BEARER})
            client.post("/predict/gap", content=DIGIT, headers={**PNG, "x-api-key": "wrong"})
    assert "API keys: on (2 keys)" in caplog.text
    assert not any(key in caplog.text for key in KEYS)
    assert KEYS[0] not in repr(Settings(_env_file=None))


def test_every_key_is_compared_whatever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit at the first match: the time does not tell which key was sent."""
    compared = []

    def compare(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return a == b

    monkeypatch.setattr(auth.hmac, "compare_digest", compare)
    keys = tuple(k.encode() for k in (*KEYS, "third-key-000000000000"))
    assert auth.any_matches([KEYS[0].encode()], keys)
    assert not auth.any_matches([b"nope", b"nope too"], keys)
    assert compared == [*keys, *keys, *keys]


def test_the_document_says_which_operations_need_a_key(keyed_client: TestClient) -> None:
    document = keyed_client.get("/openapi.json").json()
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    paths = document["paths"]
    for path, method in (("/predict/{step}", "post"), ("/v2/models/{name}/infer", "post")):
        operation = paths[path][method]
        assert operation["security"] == [{"bearer": []}, {"apiKey": []}]
        assert "401" in operation["responses"]
    for path in ("/healthz", "/readyz", "/metrics", "/"):
        assert "security" not in paths[path]["get"]
