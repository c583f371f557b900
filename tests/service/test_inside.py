"""The inside routes through TestClient on the fixture volume (a Flatten -> Gemm graph whose
table is one Linear row): `POST /inside/{step}`, `GET /inside/{step}/weights` and
`GET /inside/{step}/diff`. Their bad uploads are in tests/service/test_lab.py's table; the map
from table to graph for every real step is tests/test_inside_layers.py."""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import numpy_helper

import volume
from service import images, inside
from tests.service.conftest import (
    MAX_IMAGE_PIXELS,
    metrics_for,
    random_model,
    start_client,
    summary_for,
)
from tests.service.test_api import DIGIT
from tests.volume_fixtures import fake_summary

serving = contextlib.contextmanager(start_client)


def fixture_weights(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The Gemm's weights and bias, read back from the fixture's ONNX file."""
    graph = onnx.load_from_string(random_model(seed)).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return arrays["weights"], arrays["bias"]


def decode(layer: dict) -> np.ndarray:
    """A layer's tiles back to values, as the page reads them."""
    levels = np.frombuffer(base64.b64decode(layer["tiles"]), np.uint8).astype(np.float64)
    return layer["low"] + levels * (layer["high"] - layer["low"]) / 255


def test_every_layer_of_the_step_for_the_upload(client: TestClient) -> None:
    answer = client.post("/inside/gap", files={"file": ("a.png", DIGIT, "image/png")})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    alone = client.post("/predict/gap", files={"file": ("a.png", DIGIT)}).json()
    assert body["prediction"]["digit"] == alone["digit"]
    np.testing.assert_allclose(
        body["prediction"]["probabilities"], alone["probabilities"], atol=1e-6
    )
    seen = client.post("/predict/all", files={"file": ("a.png", DIGIT)}).json()["input"]
    grey = np.frombuffer(base64.b64decode(body["input"]), np.uint8).reshape(28, 28)
    np.testing.assert_array_equal(grey, seen)

    # The one row, Linear-1, is the Gemm's output: the logits of the image the model saw.
    weights, bias = fixture_weights(0)  # gap is the fixture volume's first step
    x = images.preprocess(DIGIT, MAX_IMAGE_PIXELS).reshape(-1)  # what the model saw, exactly
    logits = x @ weights + bias
    (layer,) = body["layers"]
    assert (layer["name"], layer["type"], layer["shape"]) == ("Linear-1", "Linear", [10])
    assert (layer["receptive_field"], layer["jump"], layer["params"]) == (28, 1, 7850)
    assert layer["shown"] == 10  # features are sent whole, whatever ?channels says
    assert layer["low"] == pytest.approx(logits.min(), abs=1e-4)
    assert layer["high"] == pytest.approx(logits.max(), abs=1e-4)
    assert layer["mean"] == pytest.approx(logits.mean(), abs=1e-4)
    assert layer["zeros"] == pytest.approx((logits <= 0).mean(), abs=1e-4)
    step = (layer["high"] - layer["low"]) / 255
    np.testing.assert_allclose(decode(layer), logits, atol=step / 2 + 1e-4)
    assert layer["same_as"] is None and layer["folded_into"] is None


@pytest.mark.parametrize(
    ("query", "status", "text"),
    [
        ("?layer=Linear-1", 200, '"name":"Linear-1"'),
        ("?channels=1", 200, '"shown":10'),
        ("?layer=Conv2d-1", 404, "has no layer 'Conv2d-1': use one of Linear-1"),
        ("?channels=0", 422, "greater than or equal to 1"),
        (f"?channels={inside.MAX_CHANNELS + 1}", 422, "less than or equal to"),
    ],
)
def test_the_layer_and_channel_choices(
    client: TestClient, query: str, status: int, text: str
) -> None:
    answer = client.post(f"/inside/gap{query}", files={"file": ("a.png", DIGIT)})
    assert answer.status_code == status, answer.text
    assert text in answer.text


def test_weights_are_the_graphs(client: TestClient) -> None:
    body = client.get("/inside/6/weights").json()
    weights, bias = fixture_weights(0)
    everything = np.concatenate([weights.ravel(), bias])
    assert body["step"] == "gap" and body["kernels"] is None  # no convolution in it
    (stats,) = body["layers"]
    assert stats["layer"] == "Linear-1" and stats["holds"] == ["Linear-1"]
    assert stats["count"] == everything.size == 7850
    assert stats["min"] == pytest.approx(everything.min(), abs=1e-5)
    assert stats["max"] == pytest.approx(everything.max(), abs=1e-5)
    assert stats["std"] == pytest.approx(everything.std(), abs=1e-5)
    assert sum(stats["histogram"]) == 7850 and len(stats["histogram"]) == inside.HISTOGRAM_BINS


# --- GETs: (path, status, a substring of the body) ---------------------------------------

GETS = [
    ("/inside/scheduler/diff", 200, '"step":"scheduler","before":"gap"'),  # the step before
    ("/inside/gap/diff?before=scheduler", 200, '"change":"same"'),
    ("/inside/best/diff?before=6", 200, '"before":"gap"'),
    ("/inside/gap/diff", 503, "step 'dropout' is not trained yet"),  # gap's step before
    ("/inside/gap/diff?before=nope", 404, "unknown step 'nope'"),
    ("/inside/nope/diff", 404, "unknown step 'nope'"),
    ("/inside/lighter/diff?before=gap", 503, "python -m trainer run --steps lighter"),
    ("/inside/scheduler/weights", 200, '"step":"scheduler"'),
    ("/inside/nope/weights", 404, "unknown step 'nope'"),
    ("/inside/1/weights", 503, "python -m trainer run --steps setup"),
    ("/openapi.json", 200, '"/inside/{step}"'),
    ("/openapi.json", 200, '"/inside/{step}/weights"'),
    ("/openapi.json", 200, '"/inside/{step}/diff"'),
]


@pytest.mark.parametrize(("path", "status", "text"), GETS)
def test_get(client: TestClient, path: str, status: int, text: str) -> None:
    answer = client.get(path)
    assert answer.status_code == status, answer.text
    assert text in answer.text


def test_the_diff_names_the_recipe_fields_that_differ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "models"
    recipes = {"setup": {"lr": 0.01, "epochs": 15}, "skeleton": {"lr": 0.02, "epochs": 15}}
    for step, recipe in recipes.items():
        metrics = metrics_for(step, 90.0).model_copy(update={"recipe": recipe})
        volume.publish(root, step, random_model(), summary_for(step), metrics)
    with serving(root, monkeypatch) as client:
        body = client.get("/inside/skeleton/diff").json()
        assert body["recipe"] == [{"field": "lr", "before": 0.01, "after": 0.02}]
        first = client.get("/inside/setup/diff")
        assert first.status_code == 404
        assert "setup is the first step" in first.json()["detail"]
        assert client.get("/inside/setup/diff?before=skeleton").status_code == 200


def test_a_version_whose_graph_does_not_fit_its_table_still_predicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table listing a convolution the graph lacks: no inside view, and it says why."""
    root = tmp_path / "models"
    volume.publish(root, "gap", random_model(), fake_summary("gap"), metrics_for("gap", 90.0))
    with serving(root, monkeypatch) as client:
        assert client.post("/predict/gap", files={"file": ("a.png", DIGIT)}).status_code == 200
        for answer in (
            client.post("/inside/gap", files={"file": ("a.png", DIGIT)}),
            client.get("/inside/gap/weights"),
        ):
            assert answer.status_code == 503
            detail = answer.json()["detail"]
            assert "has no inside view" in detail and "layer Conv2d-1" in detail
            assert "python -m trainer export gap" in detail
        assert client.get("/inside/gap/diff?before=gap").status_code == 200  # tables only


def test_openapi_documents_the_inside_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/inside/{step}"]["post"]
    assert {"multipart/form-data", "image/png"} <= set(post["requestBody"]["content"])
    assert {"200", "404", "413", "415", "422", "503"} <= set(post["responses"])
    assert {p["name"] for p in post["parameters"]} == {"step", "channels", "layer", "version"}
    layer = spec["components"]["schemas"]["LayerOutput"]["properties"]
    assert all("examples" in layer[name] for name in ("tiles", "low", "zeros", "shape"))
    assert "examples" in spec["components"]["schemas"]["LayerChange"]["properties"]["change"]
