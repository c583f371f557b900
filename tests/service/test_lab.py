"""The lab's routes through TestClient: the page and its static files, `/predict/all`,
`/explain/{step}`, `/steps/{step}/mistakes`, `/samples`, and their bad-input answers."""

from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import explain as occlusion
from service import images
from service.routes.lab import STATIC_DIR
from tests.service.conftest import TRAINED, gemm_model, publish, start_client
from tests.service.test_api import BAD_INPUTS, DIGIT, NOISE, png
from tests.volume_fixtures import fake_mistakes, fake_samples
from volume import MNIST_MEAN, MNIST_STD, STEP_SLUGS

serving = contextlib.contextmanager(start_client)  # the real app on a volume of the test's own

# --- The page ---------------------------------------------------------------------------

GETS = [
    ("/", 200, '<canvas id="pad"'),
    ("/", 200, 'aria-live="polite"'),
    ("/static/lab.js", 200, "DEBOUNCE_MS"),
    ("/static/journey.js", 200, "showJourney"),
    ("/static/chart.umd.min.js", 200, "Chart.js v4.5.1"),
    ("/static/chart.js-LICENSE.md", 200, "The MIT License"),
    ("/static/nothing.js", 404, "Not Found"),
    ("/static/%2e%2e/app.py", 404, "Not Found"),
    ("/steps/scheduler/mistakes", 200, '"confusion":[[10,0,'),
    ("/steps/7/mistakes", 200, '"label":4,"pixels":'),
    ("/steps/best/mistakes", 200, '"step":"scheduler"'),
    ("/steps/gap/mistakes", 404, "published before mistakes were recorded"),
    ("/steps/gap/mistakes", 404, "python -m trainer export gap"),
    ("/steps/lighter/mistakes", 503, "python -m trainer run --steps lighter"),
    ("/steps/nope/mistakes", 404, "unknown step 'nope'"),
    ("/samples", 200, '"digits":[{"index":0,"label":0,"pixels":"'),
    ("/steps", 200, '"slug":"scheduler","title":"With Learning rate Scheduler","trained":true'),
    ("/steps", 200, '"mistakes":true,"train_command":"python -m trainer run --steps scheduler"'),
    ("/openapi.json", 200, '"/predict/all"'),
    ("/openapi.json", 200, '"/explain/{step}"'),
    ("/openapi.json", 200, '"/steps/{step}/mistakes"'),
    ("/openapi.json", 200, '"/samples"'),
]


@pytest.mark.parametrize(("path", "status", "text"), GETS)
def test_get(client: TestClient, path: str, status: int, text: str) -> None:
    answer = client.get(path)
    assert answer.status_code == status, answer.text
    assert text in answer.text


def test_the_page_asks_nothing_but_the_service(client: TestClient) -> None:
    """Air-gapped: every file the page loads is one of ours, and each one is served."""
    html = client.get("/").text
    assert client.get("/").headers["content-type"].startswith("text/html")
    assert client.get("/static/lab.js").headers["cache-control"] == "no-cache"
    links = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "/static/lab.js" in links and "/static/chart.umd.min.js" in links
    for link in links:
        assert link.startswith(("/", "#")), link
        if link.startswith("/static/"):
            assert client.get(link).status_code == 200, link
    for script in ("lab.js", "journey.js", "api.js"):
        code = (STATIC_DIR / script).read_text()
        assert "http:" not in code and "https:" not in code, script
        for module in re.findall(r'from "([^"]+)"', code):
            assert client.get(f"/static/{module.removeprefix('./')}").status_code == 200


def test_the_vendored_chart_library_is_the_released_file() -> None:
    """chart.js 4.5.1's dist/chart.umd.min.js from the npm registry, byte for byte."""
    data = (STATIC_DIR / "chart.umd.min.js").read_bytes()
    expected = "48444a82d4edcb5bec0f1965faacdde18d9c17db3063d042abada2f705c9f54a"
    assert hashlib.sha256(data).hexdigest() == expected


def test_openapi_documents_the_lab_with_examples(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/predict/all", "/explain/{step}"):
        post = paths[path]["post"]
        assert {"multipart/form-data", "image/png"} <= set(post["requestBody"]["content"])
        assert {"200", "413", "415", "422", "503"} <= set(post["responses"])
    assert "404" in paths["/explain/{step}"]["post"]["responses"]
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    explanation = schemas["Explanation"]["properties"]
    assert len(explanation["sensitivity"]["examples"][0]) == 28
    assert explanation["patch"]["examples"] == [occlusion.PATCH]
    assert "confusion" in schemas["Mistakes"]["properties"]


# --- POST /predict/all --------------------------------------------------------------------


def test_predict_all_answers_every_trained_step_as_predict_does(
    client: TestClient, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    digit = mnist_test[0][0]  # a 7, already in MNIST's form: preprocessing leaves it as it is
    assert images.in_mnist_form(digit.astype(np.float32))
    upload = png(digit)
    answer = client.post("/predict/all", files={"file": ("a.png", upload, "image/png")})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"input", "predictions"}
    assert [p["step"] for p in body["predictions"]] == [s for s in STEP_SLUGS if s in TRAINED]
    for prediction in body["predictions"]:
        alone = client.post(f"/predict/{prediction['step']}", files={"file": ("a.png", upload)})
        assert prediction == alone.json()
    grey = np.array(body["input"])
    assert grey.shape == (28, 28) and grey.dtype.kind == "i"
    np.testing.assert_array_equal(grey, digit)


def test_predict_all_shows_what_the_models_saw(client: TestClient) -> None:
    """A large drawing, dark on light and off-centre, is seen as MNIST's 28x28 form."""
    drawing = np.full((300, 200), 255, np.uint8)
    drawing[40:160, 20:40] = 0  # a thick '1' high on the left
    body = client.post("/predict/all", content=png(drawing), headers={"content-type": "image/png"})
    grey = np.array(body.json()["input"])
    assert grey.max() == 255 and grey[0].max() == 0 and grey[:, 0].max() == 0  # light on black
    rows = np.nonzero(grey > 64)[0]
    assert rows.max() - rows.min() + 1 == 20  # fitted into 20x20
    assert abs(np.average(np.arange(28), weights=grey.sum(1)) - 14) <= 1  # centred by mass


def test_predict_all_on_an_empty_volume_says_how_to_train(empty_client: TestClient) -> None:
    answer = empty_client.post("/predict/all", files={"file": ("a.png", DIGIT)})
    assert answer.status_code == 503
    assert "python -m trainer run --steps all" in answer.json()["detail"]


def test_predict_all_counts_a_prediction_per_step(client: TestClient) -> None:
    def count(step: str) -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith(f'mnist_predictions_total{{step="{step}"}}'):
                return float(line.split()[-1])
        return 0.0

    before = {s: count(s) for s in TRAINED}
    assert client.post("/predict/all", files={"file": ("a.png", DIGIT)}).status_code == 200
    assert {s: count(s) for s in TRAINED} == {s: n + 1 for s, n in before.items()}


# --- POST /explain/{step} -----------------------------------------------------------------


def reference_occlusion(weights: np.ndarray, bias: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The documented recipe written out plainly for a linear model: every square erased in
    turn (those without ink too), softmax by hand, drops averaged over covering squares."""

    def probabilities(image: np.ndarray) -> np.ndarray:
        logits = image.reshape(-1).astype(np.float64) @ weights + bias
        e = np.exp(logits - logits.max())
        return e / e.sum()

    original = probabilities(x)
    digit = original.argmax()
    total, covered = np.zeros((28, 28)), np.zeros((28, 28))
    for top in range(0, 28 - 4 + 1, 2):
        for left in range(0, 28 - 4 + 1, 2):
            erased = x.copy()
            erased[top : top + 4, left : left + 4] = -MNIST_MEAN / MNIST_STD
            total[top : top + 4, left : left + 4] += original[digit] - probabilities(erased)[digit]
            covered[top : top + 4, left : left + 4] += 1
    return total / covered


def test_explain_is_occlusion_sensitivity_as_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    rng = np.random.default_rng(5)
    weights, bias = rng.normal(0, 0.3, (784, 10)), rng.normal(0, 0.1, 10)
    root = tmp_path / "models"
    publish(root, "gap", gemm_model(weights, bias))
    with serving(root, monkeypatch) as client:
        # An MNIST digit is the model's input exactly as `input` shows it (whole grey levels).
        upload = png(mnist_test[0][0])
        answer = client.post("/explain/gap", files={"file": ("a.png", upload, "image/png")})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["patch"], body["stride"]) == (4, 2)
        assert body["baseline"] == pytest.approx(-MNIST_MEAN / MNIST_STD, abs=1e-4)
        assert (
            body["prediction"] == client.post("/predict/gap", files={"file": ("a", upload)}).json()
        )
        x = (np.asarray(body["input"], np.float32) / 255 - MNIST_MEAN) / MNIST_STD
        expected = reference_occlusion(weights.astype(np.float32), bias.astype(np.float32), x)
        np.testing.assert_allclose(body["sensitivity"], expected, atol=2e-4)
        # Only squares holding ink were run, and the map is zero away from the ink.
        ink = np.asarray(body["input"]) > 0
        assert 0 < body["occluded"] < 169
        assert np.abs(np.asarray(body["sensitivity"]))[~dilate(ink, 3)].max() == 0


def dilate(mask: np.ndarray, by: int) -> np.ndarray:
    grown = mask.copy()
    for dy in range(-by, by + 1):
        for dx in range(-by, by + 1):
            grown |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return grown


def test_explain_runs_one_batch(client: TestClient) -> None:
    calls = []
    model = client.app.state.models.get("gap")

    def predict(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return model.predict(batch)

    image = np.full((1, 28, 28), occlusion.BASELINE, np.float32)
    image[0, 10:18, 10:12] = 2.0
    result = occlusion.occlusion(predict, image)
    assert calls == [1 + result.occluded]
    # Squares 4 pixels a side every 2 holding some of rows 10-17, columns 10-11: 5 x 2.
    assert result.occluded == 5 * 2
    assert result.map.shape == (28, 28)


@pytest.mark.parametrize("step", ["gap", "6", "best"])
def test_explain_names_steps_as_predict_does(client: TestClient, step: str) -> None:
    answer = client.post(f"/explain/{step}", content=DIGIT, headers={"content-type": "image/png"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["prediction"]["step"] == ("scheduler" if step == "best" else "gap")


# --- Bad input: the same 4xx as /predict/{step}, on every route that takes an upload -------

UPLOAD_ROUTES = ("/explain/{step}", "/inside/{step}", "/predict/all")
# Where a one-image route answers differently from /predict/{step}, which takes a batch.
ONE_IMAGE = {"one bad file in a batch": (422, "takes one image and this request has 2")}


def lab_bad_inputs():
    for route in UPLOAD_ROUTES:
        for what, step, request_args, status, text in BAD_INPUTS:
            if "{step}" not in route and step != "gap":
                continue  # /predict/all names no step: the step's own cases do not apply
            status, text = ONE_IMAGE.get(what, (status, text))
            path = route.format(step=step)
            yield pytest.param(path, request_args, status, text, id=f"{route} {what}")


@pytest.mark.parametrize(("path", "request_args", "status", "text"), list(lab_bad_inputs()))
def test_bad_input_gets_the_same_clear_4xx(
    client: TestClient, path: str, request_args: dict, status: int, text: str
) -> None:
    answer = client.post(path, **request_args)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert text in answer.json()["detail"]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=2000), cut=st.integers(0, len(NOISE)), flip=st.integers(0, 255))
def test_no_bytes_make_a_500(client: TestClient, data: bytes, cut: int, flip: int) -> None:
    broken = bytearray(NOISE[:cut] + data)
    if broken:
        broken[cut % len(broken)] ^= flip
    for path in ("/predict/all", "/explain/gap", "/inside/gap"):
        answer = client.post(path, content=bytes(broken), headers={"content-type": "image/png"})
        assert answer.status_code in (200, 413, 422), answer.text


# --- Mistakes and samples -----------------------------------------------------------------


def test_mistakes_and_samples_are_the_published_files(client: TestClient) -> None:
    assert client.get("/steps/scheduler/mistakes").json() == fake_mistakes("scheduler").model_dump()
    assert client.get("/samples").json() == fake_samples().model_dump()
    listed = {s["slug"]: s["mistakes"] for s in client.get("/steps").json()}
    assert listed["scheduler"] and not listed["gap"] and not listed["lighter"]


def test_a_volume_from_before_the_lab_has_no_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "models"
    publish(root, "gap")  # as every version was published before mistakes.json existed
    with serving(root, monkeypatch) as client:
        assert client.get("/samples").json() == {"digits": []}
        assert client.get("/steps/gap/mistakes").status_code == 404
        assert client.post("/predict/all", files={"file": ("a.png", DIGIT)}).status_code == 200
