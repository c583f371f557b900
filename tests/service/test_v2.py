"""The Open Inference Protocol (`/v2`): every endpoint and error through TestClient, then the
real `tritonclient[http]` against a real uvicorn, agreeing with `/predict` on real digits."""

from __future__ import annotations

import gzip
import json
import os
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as tritonclient_http
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tritonclient.utils import InferenceServerException

from service import images
from service.routes.v2 import HEADER_LENGTH
from tests.conftest import ROOT
from tests.servers import serve
from tests.service.conftest import MAX_IMAGE_PIXELS, MAX_UPLOAD_BYTES, publish, random_model
from tests.service.photos import encode, load_mnist
from tests.service.test_api import DIGIT
from tests.service.test_uvicorn import wait_for
from volume import STEPS

SHAPE = [1, 1, 28, 28]


def image_input(data: Any, shape: list[int] | None = None, **fields: Any) -> dict[str, Any]:
    return {"name": "image", "datatype": "FP32", "shape": shape or SHAPE, "data": data, **fields}


def tensor(count: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 1, 28, 28)).astype(np.float32)


def infer(client: TestClient, path: str, request: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return client.post(path, content=json.dumps(request), **kwargs)


def probabilities(answer: httpx.Response) -> np.ndarray:
    (output,) = answer.json()["outputs"]
    assert (output["name"], output["datatype"]) == ("probabilities", "FP32"), output
    return np.asarray(output["data"], np.float32).reshape(output["shape"])


def binary_request(batch: np.ndarray, **request: Any) -> tuple[bytes, dict[str, str]]:
    """Triton's binary tensor extension: a JSON header, then the raw little-endian tensor."""
    data = batch.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": list(batch.shape),
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            **request,
        }
    ).encode()
    return header + data, {HEADER_LENGTH: str(len(header))}


# --- health and metadata: (path, status, a substring of the body) ---------------------------

GETS = [
    ("/v2", 200, '"extensions":["binary_tensor_data"]'),
    ("/v2/health/live", 200, '"live":true'),
    ("/v2/health/ready", 200, '"ready":true'),
    ("/v2/models/gap", 200, '"platform":"onnx_onnxv1"'),
    ("/v2/models/gap", 200, '{"name":"image","datatype":"FP32","shape":[-1,1,28,28]}'),
    ("/v2/models/gap", 200, '{"name":"probabilities","datatype":"FP32","shape":[-1,10]}'),
    ("/v2/models/6", 200, '"name":"gap"'),
    ("/v2/models/GAP", 200, '"name":"gap"'),
    ("/v2/models/best", 200, '"name":"scheduler"'),  # 91 % beats gap's 90 %
    ("/v2/models/gap/ready", 200, '{"name":"gap","ready":true}'),
    ("/v2/models/best/ready", 200, '{"name":"scheduler","ready":true}'),
    ("/v2/models/nope", 404, "unknown step 'nope'"),
    ("/v2/models/nope/ready", 404, "unknown step 'nope'"),
    ("/v2/models/0/ready", 404, f"a number 1-{len(STEPS)}"),
    ("/v2/models/lighter", 503, "python -m trainer run --steps lighter"),
    ("/v2/models/lighter/ready", 400, "not ready: step 'lighter' is not trained yet"),
    ("/v2/models/gap/versions/nope", 404, "'gap' has no kept version 'nope'; the volume keeps"),
    ("/v2/models/gap/versions/nope/ready", 404, "has no kept version"),
]


@pytest.mark.parametrize(("path", "status", "text"), GETS)
def test_get(client: TestClient, path: str, status: int, text: str) -> None:
    answer = client.get(path)
    assert answer.status_code == status, answer.text
    assert text in answer.text
    assert answer.headers["content-type"] == "application/json"
    assert set(answer.json()) != {"detail"}


def test_errors_are_the_protocols_and_the_rest_of_the_api_keeps_its_own(
    client: TestClient,
) -> None:
    for path in ("/v2/models/nope", "/v2/models/lighter", "/v2/models/lighter/ready"):
        body = client.get(path).json()
        assert list(body) == ["error"] and isinstance(body["error"], str)
    assert list(client.get("/steps/nope/summary").json()) == ["detail"]


def test_metadata_names_the_current_version_which_answers(client: TestClient) -> None:
    (version,) = client.get("/v2/models/gap").json()["versions"]
    assert client.post("/predict/gap", content=DIGIT, headers=PNG).json()["version"] == version
    for path in (f"/v2/models/gap/versions/{version}", f"/v2/models/gap/versions/{version}/ready"):
        assert client.get(path).status_code == 200
    answer = infer(client, f"/v2/models/gap/versions/{version}/infer", {"inputs": [FLAT]})
    assert answer.status_code == 200
    assert (answer.json()["model_name"], answer.json()["model_version"]) == ("gap", version)


def test_a_version_no_longer_current_answers_from_the_volume(
    client: TestClient, models_dir: Path
) -> None:
    """Every kept version is served side by side, as Triton serves numbered versions."""
    (old,) = client.get("/v2/models/gap").json()["versions"]
    before = infer(client, "/v2/models/gap/infer", {"inputs": [FLAT]}).json()["outputs"]
    new = publish(models_dir, "gap", random_model(5))
    client.app.state.models.refresh()  # type: ignore[attr-defined]
    assert client.get("/v2/models/gap").json()["versions"] == [old, new]
    answer = infer(client, f"/v2/models/gap/versions/{old}/infer", {"inputs": [FLAT]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == old and answer.json()["outputs"] == before
    current = infer(client, "/v2/models/gap/infer", {"inputs": [FLAT]}).json()
    assert current["model_version"] == new and current["outputs"] != before
    assert client.get(f"/v2/models/gap/versions/{old}").json()["versions"] == [old, new]
    assert client.get(f"/v2/models/gap/versions/{old}/ready").json()["ready"] is True


def test_an_empty_volume_is_live_not_ready(empty_client: TestClient) -> None:
    assert empty_client.get("/v2/health/live").status_code == 200
    ready = empty_client.get("/v2/health/ready")
    assert ready.status_code == 400 and "python -m trainer run" in ready.json()["error"]
    answer = infer(empty_client, "/v2/models/gap/infer", {"inputs": [FLAT]})
    assert answer.status_code == 503 and "not trained yet" in answer.json()["error"]
    best = infer(empty_client, "/v2/models/best/infer", {"inputs": [FLAT]})
    assert best.status_code == 503 and "no step is trained yet" in best.json()["error"]


# --- inference ----------------------------------------------------------------------------

PNG = {"content-type": "image/png"}
FLAT = image_input(tensor(1).ravel().tolist())


def test_nested_flat_and_binary_data_give_the_same_answer(client: TestClient) -> None:
    batch = tensor(3, seed=1)
    shape = list(batch.shape)
    nested = infer(client, "/v2/models/gap/infer", {"inputs": [image_input(batch.tolist(), shape)]})
    flat = infer(
        client, "/v2/models/gap/infer", {"inputs": [image_input(batch.ravel().tolist(), shape)]}
    )
    body, headers = binary_request(batch)
    binary = client.post("/v2/models/gap/infer", content=body, headers=headers)
    for answer in (nested, flat, binary):
        assert answer.status_code == 200, answer.text
    expected = probabilities(nested)
    assert expected.shape == (3, 10)
    np.testing.assert_allclose(expected.sum(axis=1), 1, atol=1e-5)
    assert np.array_equal(probabilities(flat), expected)
    assert np.array_equal(probabilities(binary), expected)


def test_binary_output_when_asked_per_output_or_per_request(client: TestClient) -> None:
    batch = tensor(2, seed=2)
    expected = probabilities(
        infer(
            client,
            "/v2/models/gap/infer",
            {"inputs": [image_input(batch.tolist(), [2, 1, 28, 28])]},
        )
    )
    for request in (
        {"outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]},
        {"parameters": {"binary_data_output": True}},
    ):
        body, headers = binary_request(batch, **request)
        answer = client.post("/v2/models/gap/infer", content=body, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/octet-stream"
        length = int(answer.headers[HEADER_LENGTH])
        header = json.loads(answer.content[:length])
        (output,) = header["outputs"]
        assert output["parameters"] == {"binary_data_size": 2 * 10 * 4} and "data" not in output
        data = np.frombuffer(answer.content[length:], "<f4").reshape(output["shape"])
        assert np.array_equal(data, expected)


def test_the_same_probabilities_as_predict_on_the_same_digit(client: TestClient) -> None:
    predicted = client.post("/predict/gap", content=DIGIT, headers=PNG).json()
    preprocessed = images.preprocess(DIGIT, MAX_IMAGE_PIXELS)[None]
    answer = infer(client, "/v2/models/gap/infer", {"inputs": [image_input(preprocessed.tolist())]})
    assert answer.json()["model_version"] == predicted["version"]
    np.testing.assert_allclose(probabilities(answer)[0], predicted["probabilities"], atol=1e-6)


def test_the_request_id_comes_back(client: TestClient) -> None:
    answer = infer(client, "/v2/models/gap/infer", {"id": "42", "inputs": [FLAT]})
    assert answer.json()["id"] == "42"
    assert "id" not in infer(client, "/v2/models/gap/infer", {"inputs": [FLAT]}).json()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_request_body(client: TestClient, encoding: str) -> None:
    plain = json.dumps({"inputs": [FLAT]}).encode()
    packed = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain)
    answer = client.post(
        "/v2/models/gap/infer", content=packed, headers={"content-encoding": encoding}
    )
    assert answer.status_code == 200, answer.text
    expected = infer(client, "/v2/models/gap/infer", {"inputs": [FLAT]})
    assert np.array_equal(probabilities(answer), probabilities(expected))


def test_predictions_are_counted_per_step_and_failures_are_not(client: TestClient) -> None:
    def count() -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith('mnist_predictions_total{step="gap"}'):
                return float(line.split()[-1])
        raise AssertionError("no gap counter")

    before = count()
    batch = tensor(4)
    assert (
        infer(
            client,
            "/v2/models/gap/infer",
            {"inputs": [image_input(batch.tolist(), [4, 1, 28, 28])]},
        ).status_code
        == 200
    )
    assert infer(client, "/v2/models/gap/infer", {"inputs": []}).status_code == 400
    assert count() == before + 4
    assert 'mnist_predict_seconds_count{step="gap"}' in client.get("/metrics").text


# --- every bad request: (what is sent, status, a substring of the error) --------------------

TOO_MANY = 65  # the service's default MAX_BATCH is 64
ZEROS = [0.0] * 784
BAD: list[tuple[str, Any, dict[str, str], int, str]] = [
    ("not json", b"{", {}, 400, "not an inference request"),
    ("no inputs", {}, {}, 400, "inputs: Field required"),
    ("input not a list", {"inputs": "x"}, {}, 400, "inputs"),
    ("two inputs", {"inputs": [FLAT, FLAT]}, {}, 400, "one input, 'image'"),
    ("wrong name", {"inputs": [{**FLAT, "name": "x"}]}, {}, 400, "the request has ['x']"),
    ("wrong type", {"inputs": [{**FLAT, "datatype": "FP64"}]}, {}, 400, "not 'FP64'"),
    ("no shape", {"inputs": [{"name": "image", "datatype": "FP32", "data": ZEROS}]}, {}, 400,
     "shape: Field required"),
    ("3 dims", {"inputs": [image_input(ZEROS, [1, 28, 28])]}, {}, 400, "N >= 1, not [1, 28, 28]"),
    ("2 channels", {"inputs": [image_input(ZEROS * 2, [1, 2, 28, 28])]}, {}, 400, "[1, 2, 28, 28]"),
    ("empty batch", {"inputs": [image_input([], [0, 1, 28, 28])]}, {}, 400, "N >= 1"),
    ("MAX_BATCH", {"inputs": [image_input([0.0], [TOO_MANY, 1, 28, 28])]}, {}, 400,
     "at most MAX_BATCH=64"),
    ("too few values", {"inputs": [image_input(ZEROS[:-1])]}, {}, 400, "neither [1, 1, 28, 28]"),
    ("too many values", {"inputs": [image_input([*ZEROS, 0.0])]}, {}, 400, "785"),
    ("ragged", {"inputs": [image_input([[0.0] * 28] * 27 + [[0.0]])]}, {}, 400,
     "not a regular array"),
    ("strings", {"inputs": [image_input(["0.5"] * 784)]}, {}, 400, "strings"),
    ("booleans", {"inputs": [image_input([True] * 784)]}, {}, 400, "booleans"),
    ("objects", {"inputs": [image_input([{}] * 784)]}, {}, 400, "mixed types"),
    ("no data", {"inputs": [{"name": "image", "datatype": "FP32", "shape": SHAPE}]}, {}, 400,
     "has no data"),
    ("2-D shape", {"inputs": [image_input(ZEROS, [1, 784])]}, {}, 400, "not [1, 784]"),
    ("NaN", b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], '
     b'"data": [NaN' + b", 0" * 783 + b"]}]}", {}, 400, "NaN or infinity"),
    ("infinity", b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], '
     b'"data": [' + b"Infinity, " * 783 + b"0]}]}", {}, 400, "NaN or infinity"),
    ("unknown output", {"inputs": [FLAT], "outputs": [{"name": "logits"}]}, {}, 400,
     "one output, 'probabilities'"),
    ("shared memory", {"inputs": [{**FLAT, "parameters": {"shared_memory_region": "r"}}]}, {},
     400, "shared memory is not supported"),
    ("header length past the body", {"inputs": [FLAT]}, {HEADER_LENGTH: "999999"}, 400,
     "not a length within the body"),
    ("header length not a number", {"inputs": [FLAT]}, {HEADER_LENGTH: "-1"}, 400,
     "not a length"),
    ("binary bytes without binary_data_size", b'{"inputs": []}xx', {HEADER_LENGTH: "14"}, 400,
     "one input"),
    ("unknown encoding", {"inputs": [FLAT]}, {"content-encoding": "br"}, 415, "gzip, deflate"),
    ("not gzip", {"inputs": [FLAT]}, {"content-encoding": "gzip"}, 400, "not valid gzip"),
    ("cut gzip", gzip.compress(json.dumps({"inputs": [FLAT]}).encode())[:-12],
     {"content-encoding": "gzip"}, 400, "cut short"),
    ("gzip bomb", gzip.compress(b" " * (MAX_UPLOAD_BYTES + 1)), {"content-encoding": "gzip"},
     413, "inflates to more than"),
    ("over MAX_UPLOAD_BYTES", b" " * (MAX_UPLOAD_BYTES + 1), {}, 413, "larger than"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "headers", "status", "text"), [case[1:] for case in BAD], ids=[c[0] for c in BAD]
)
def test_bad_requests_get_the_protocols_error(
    client: TestClient, body: Any, headers: dict[str, str], status: int, text: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = client.post("/v2/models/gap/infer", content=content, headers=headers)
    assert answer.status_code == status, answer.text
    assert list(answer.json()) == ["error"]
    assert text in answer.json()["error"], answer.json()["error"]


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers(-(2**70), 2**70) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=20,
)
TENSOR = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["image", "x"]),
        "datatype": st.sampled_from(["FP32", "INT8", "BYTES"]),
        "shape": st.lists(st.integers(-3, 70), max_size=5) | st.just(SHAPE),
    },
    optional={"data": JSON, "parameters": JSON},
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(inputs=st.lists(TENSOR, max_size=2), outputs=JSON, raw=st.binary(max_size=200))
def test_no_request_makes_a_500(client: TestClient, inputs: Any, outputs: Any, raw: bytes) -> None:
    """Requests of the right form with wrong values, JSON of the wrong form, and bytes: a 4xx
    with the protocol's error, never a 5xx."""
    for body in (
        json.dumps({"inputs": inputs}).encode(),
        json.dumps({"inputs": inputs, "outputs": outputs}).encode(),
        raw,
    ):
        answer = client.post("/v2/models/gap/infer", content=body)
        assert answer.status_code in (200, 400), answer.text
        assert answer.status_code == 200 or list(answer.json()) == ["error"]


def test_binary_data_of_the_wrong_size(client: TestClient) -> None:
    body, headers = binary_request(tensor(2))
    answer = client.post("/v2/models/gap/infer", content=body[:-4], headers=headers)
    assert answer.status_code == 400
    assert "binary_data_size is 6272 and 6268 bytes follow" in answer.json()["error"]


def test_unknown_and_untrained_models_refuse_before_reading_the_body(client: TestClient) -> None:
    big = b" " * (MAX_UPLOAD_BYTES + 1)  # would be 413 if it were read
    assert client.post("/v2/models/nope/infer", content=big).status_code == 404
    assert client.post("/v2/models/lighter/infer", content=big).status_code == 503
    assert client.post("/v2/models/gap/versions/x/infer", content=big).status_code == 404


def test_openapi_documents_the_protocol(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/versions/{version}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    ):
        assert path in paths, path
    body = paths["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/octet-stream"} <= set(body)


# --- the real tritonclient against a real uvicorn --------------------------------------------

DIGITS = 8


@pytest.fixture(scope="module")
def server(
    trained_model: bytes, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[httpx.Client, Any, Path]]:
    """uvicorn serving the MNIST-trained fixture as `scheduler` and a random `gap`; an httpx
    client, a tritonclient for it, and the volume. One server for the module: tests that
    publish into it publish other steps."""
    tmp = tmp_path_factory.mktemp("v2")
    models_dir = tmp / "models"
    publish(models_dir, "scheduler", trained_model, accuracy=92.0)
    publish(models_dir, "gap", random_model(3))
    env = os.environ | {
        "MODELS_DIR": str(models_dir),
        "POLL_SECONDS": "0.2",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1"]
    with serve(lambda port: [*command, "--port", str(port)], env, ROOT, tmp / "uvicorn.log") as (
        http,
        _,
    ):
        triton = tritonclient_http.InferenceServerClient(url=str(http.base_url).split("//")[1])
        try:
            yield http, triton, models_dir
        finally:
            triton.close()


@pytest.fixture(scope="module")
def digit_pngs(mnist_dir: Path) -> tuple[list[bytes], np.ndarray]:
    """The first MNIST test digits as PNG files, dark ink on white paper, 3x enlarged (so that
    the service's photo recipe runs, not only its MNIST fast path), and their labels."""
    digits, labels = load_mnist(mnist_dir)
    pngs = [
        encode(Image.fromarray(255 - d).resize((84, 84), Image.Resampling.BILINEAR), "PNG")
        for d in digits[:DIGITS]
    ]
    return pngs, labels[:DIGITS]


@pytest.mark.slow
def test_tritonclient_health_and_metadata(server: tuple[httpx.Client, Any, Path]) -> None:
    http, triton, _ = server
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("scheduler") and triton.is_model_ready("7")
    assert not triton.is_model_ready("lighter")  # known, not trained
    assert not triton.is_model_ready("nope")
    assert triton.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    meta = triton.get_model_metadata("scheduler")
    assert meta["platform"] == "onnx_onnxv1"
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    steps = {s["slug"]: s for s in http.get("/steps").json()}
    assert meta["versions"] == [steps["scheduler"]["version"]]
    assert triton.is_model_ready("scheduler", model_version=meta["versions"][0])
    with pytest.raises(InferenceServerException) as unknown:
        triton.get_model_metadata("nope")
    assert unknown.value.status() == "404" and "unknown step 'nope'" in unknown.value.message()
    with pytest.raises(InferenceServerException) as untrained:
        triton.get_model_metadata("lighter")
    assert untrained.value.status() == "503"


@pytest.mark.slow
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infers_what_predict_answers(
    server: tuple[httpx.Client, Any, Path],
    digit_pngs: tuple[list[bytes], np.ndarray],
    binary: bool,
) -> None:
    """A batch of real digits: the probabilities of /predict on each PNG are those tritonclient
    gets for the same digits, preprocessed as the service does, in one request."""
    http, triton, _ = server
    pngs, labels = digit_pngs
    predicted = [http.post("/predict/scheduler", content=png, headers=PNG).json() for png in pngs]
    batch = np.stack([images.preprocess(png, MAX_IMAGE_PIXELS) for png in pngs])
    assert batch.shape == (DIGITS, 1, 28, 28) and batch.dtype == np.float32
    tensor_in = tritonclient_http.InferInput("image", list(batch.shape), "FP32")
    tensor_in.set_data_from_numpy(batch, binary_data=binary)
    wanted = tritonclient_http.InferRequestedOutput("probabilities", binary_data=binary)
    result = triton.infer("scheduler", [tensor_in], outputs=[wanted], request_id="batch-1")
    answer = result.as_numpy("probabilities")
    assert answer.shape == (DIGITS, 10) and answer.dtype == np.float32
    np.testing.assert_allclose(answer, [p["probabilities"] for p in predicted], atol=1e-6)
    assert list(answer.argmax(axis=1)) == [p["digit"] for p in predicted]
    assert (answer.argmax(axis=1) == labels).mean() >= 0.75  # a linear model on real digits
    response = result.get_response()
    assert response["model_name"] == "scheduler" and response["id"] == "batch-1"
    assert response["model_version"] == predicted[0]["version"]


@pytest.mark.slow
def test_tritonclient_defaults_versions_and_compression(
    server: tuple[httpx.Client, Any, Path],
) -> None:
    """With no outputs named, tritonclient asks for binary output; a version that was current
    is still served by its number after a swap; a gzip body is read."""
    _, triton, models_dir = server
    batch = tensor(5, seed=4)
    tensor_in = tritonclient_http.InferInput("image", list(batch.shape), "FP32")
    tensor_in.set_data_from_numpy(batch)
    publish(models_dir, "dropout", random_model(8))
    wait_for(lambda: triton.is_model_ready("dropout"), "dropout")
    first = triton.infer("dropout", [tensor_in]).as_numpy("probabilities")
    assert first.shape == (5, 10)
    packed = triton.infer("dropout", [tensor_in], request_compression_algorithm="gzip")
    assert np.array_equal(packed.as_numpy("probabilities"), first)

    (old,) = triton.get_model_metadata("dropout")["versions"]
    new = publish(models_dir, "dropout", random_model(9))
    wait_for(
        lambda: triton.infer("dropout", [tensor_in]).get_response()["model_version"] == new,
        "the new one",
    )
    assert triton.get_model_metadata("dropout")["versions"] == [old, new]
    assert triton.is_model_ready("dropout", model_version=old)
    pinned = triton.infer("dropout", [tensor_in], model_version=old).as_numpy("probabilities")
    assert np.array_equal(pinned, first)
    with pytest.raises(InferenceServerException) as unknown:
        triton.infer("dropout", [tensor_in], model_version="20260101T000000.000000Z-00000000")
    assert unknown.value.status() == "404" and old in unknown.value.message()
    swapped = triton.infer("dropout", [tensor_in], model_version=new).as_numpy("probabilities")
    assert not np.array_equal(swapped, first)
