"""Every endpoint of the real app through TestClient, and every bad input's 4xx."""

from __future__ import annotations

import io
import platform
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.app import keep_freed_memory
from tests.service.conftest import MAX_IMAGE_PIXELS, MAX_UPLOAD_BYTES, publish, random_model
from volume import STEPS


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def digit_png(size: int = 28) -> bytes:
    """A stroke like a '1', light on black, as MNIST draws it."""
    image = np.zeros((size, size), np.uint8)
    image[size // 5 : size - size // 5, size // 2 - size // 14 : size // 2 + size // 14] = 255
    return png(image)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels in a few dozen bytes: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def one_bit_bomb(side: int) -> bytes:
    """A real, fully decodable 1-bit PNG of side x side: kilobytes that decode to megapixels."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, "PNG")
    return buffer.getvalue()


DIGIT = digit_png()
NOISE = png(np.random.default_rng(0).integers(0, 256, (100, 100), dtype=np.uint8))


# --- GET endpoints: (path, status, a substring of the body) ------------------------------

GETS = [
    ("/healthz", 200, '"status":"ok"'),
    ("/readyz", 200, '"ready":true'),
    ("/steps", 200, '"slug":"setup"'),
    ("/steps", 200, '"slug":"gap","title":"GAP","trained":true'),
    ("/steps", 200, '"slug":"lighter","title":"Lighter Model","trained":false'),
    ("/steps/gap/summary", 200, '"total_params":7850'),
    ("/steps/6/summary", 200, '"name":"Linear-1"'),
    ("/steps/GAP/summary", 200, '"step":"gap"'),
    ("/steps/gap/summary?format=text", 200, "fixture table of gap"),
    ("/steps/gap/summary?format=xml", 422, "json"),
    ("/steps/best/summary", 200, "fixture table of scheduler"),  # 91 % beats gap's 90 %
    ("/steps/scheduler/metrics", 200, '"best_epoch":1'),
    ("/steps/7/metrics", 200, '"best_test_accuracy":91.0'),
    ("/steps/lighter/metrics", 503, "not trained yet"),
    ("/steps/3/summary", 503, "python -m trainer run --steps lighter"),
    ("/steps/nope/metrics", 404, "unknown step 'nope'"),
    ("/steps/0/metrics", 404, f"a number 1-{len(STEPS)}"),
    (f"/steps/{len(STEPS) + 1}/summary", 404, "unknown step"),
    ("/steps/tiny/summary", 503, "python -m trainer run --steps tiny"),
    ("/steps/gap", 200, '"best_test_accuracy":90.0,"best_epoch":1,"params":7850'),
    ("/steps/7", 200, '"step":"scheduler","serving":"2'),
    ("/steps/lighter", 503, "keeps no version of it"),
    ("/steps/nope", 404, "unknown step 'nope'"),
    ("/steps/%2e%2e/metrics", 404, "unknown step '..'"),
    ("/steps/..%2Fvolume/metrics", 404, "Not Found"),
    ("/steps/%2e%2e%2f%2e%2e%2fetc%2fpasswd/summary", 404, "Not Found"),
    ("/metrics", 200, "mnist_predictions_total"),
    ("/metrics", 200, "mnist_predict_seconds_bucket"),
    ("/openapi.json", 200, '"/predict/{step}"'),
    ("/openapi.json", 200, '"examples"'),
    ("/docs", 200, "swagger"),
]


@pytest.mark.parametrize(("path", "status", "text"), GETS)
def test_get(client: TestClient, path: str, status: int, text: str) -> None:
    answer = client.get(path)
    assert answer.status_code == status, answer.text
    assert text in answer.text


def test_errors_are_json_with_a_detail(client: TestClient) -> None:
    for path in ("/steps/nope/summary", "/steps/lighter/summary", "/nowhere"):
        answer = client.get(path)
        assert answer.headers["content-type"] == "application/json"
        assert isinstance(answer.json()["detail"], str)


def test_steps_lists_every_step_in_order(client: TestClient) -> None:
    steps = client.get("/steps").json()
    assert [(s["number"], s["slug"]) for s in steps] == [(i.number, i.slug) for i in STEPS]
    gap = steps[5]
    assert gap["trained"] and gap["params"] == 7850 and gap["version"]
    assert steps[0] == {
        "number": 1,
        "slug": "setup",
        "title": "First Step - Initial Step",
        "trained": False,
        "version": None,
        "params": None,
        "best_test_accuracy": None,
        "mistakes": False,
        "train_command": "python -m trainer run --steps setup",
    }


# --- POST /predict ---------------------------------------------------------------------


def test_predict_multipart(client: TestClient) -> None:
    answer = client.post("/predict/gap", files={"file": ("one.png", DIGIT, "image/png")})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert set(body) == {"digit", "confidence", "probabilities", "step", "version"}
    assert len(body["probabilities"]) == 10
    assert sum(body["probabilities"]) == pytest.approx(1, abs=1e-9)
    assert body["digit"] == int(np.argmax(body["probabilities"]))
    assert body["confidence"] == max(body["probabilities"])
    assert body["step"] == "gap"
    assert body["version"] == client.get("/steps").json()[5]["version"]


@pytest.mark.parametrize("step", ["gap", "6", "GAP", "best", "scheduler"])
def test_predict_raw_body_and_step_names(client: TestClient, step: str) -> None:
    answer = client.post(f"/predict/{step}", content=DIGIT, headers={"content-type": "image/png"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["step"] == ("scheduler" if step in ("best", "scheduler") else "gap")


def test_predict_batch_answers_a_list_in_order(client: TestClient) -> None:
    singles = [digit_png(size) for size in (28, 60, 200)]
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(singles)]
    batch = client.post("/predict/gap", files=files)
    assert batch.status_code == 200, batch.text
    one_by_one = [
        client.post("/predict/gap", files={"file": ("x.png", d, "image/png")}).json()
        for d in singles
    ]
    np.testing.assert_allclose(
        [b["probabilities"] for b in batch.json()],
        [o["probabilities"] for o in one_by_one],
        atol=1e-6,
    )


def test_predict_counts_and_times_per_step(client: TestClient) -> None:
    def count(step: str) -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith(f'mnist_predictions_total{{step="{step}"}}'):
                return float(line.split()[-1])
        return 0.0

    before = count("gap")
    files = [("file", ("a.png", DIGIT, "image/png"))] * 3
    assert client.post("/predict/gap", files=files).status_code == 200
    assert count("gap") == before + 3
    assert 'mnist_predict_seconds_count{step="gap"}' in client.get("/metrics").text


# (what, step, request keyword arguments, status, a substring of the detail)
BAD_INPUTS = [
    (
        "unknown step",
        "nope",
        {"content": DIGIT, "headers": {"content-type": "image/png"}},
        404,
        "unknown step 'nope'",
    ),
    (
        "dot-dot step",
        "%2e%2e",
        {"content": DIGIT, "headers": {"content-type": "image/png"}},
        404,
        "unknown step '..'",
    ),
    (
        "path-like step",
        "..%2Fx",
        {"content": DIGIT, "headers": {"content-type": "image/png"}},
        404,
        "Not Found",
    ),
    (
        "untrained step",
        "lighter",
        {"files": {"file": ("a.png", DIGIT, "image/png")}},
        503,
        "the trainer has not published it",
    ),
    (
        "untrained number",
        "1",
        {"content": DIGIT, "headers": {"content-type": "image/png"}},
        503,
        "not trained yet",
    ),
    ("no body at all", "gap", {}, 422, "no image"),
    (
        "no file field",
        "gap",
        {"data": {"other": "x"}, "files": {"x": ("a.png", DIGIT)}},
        422,
        "no field 'file'",
    ),
    (
        "file field is text",
        "gap",
        {"data": {"file": "hello"}, "files": {"x": ("a", b"x")}},
        422,
        "is text, not a file",
    ),
    ("empty file", "gap", {"files": {"file": ("a.png", b"", "image/png")}}, 422, "empty"),
    (
        "empty raw body",
        "gap",
        {"content": b"", "headers": {"content-type": "image/png"}},
        422,
        "empty",
    ),
    (
        "text body",
        "gap",
        {"content": b"hello", "headers": {"content-type": "text/plain"}},
        415,
        "not an image type",
    ),
    ("json body", "gap", {"json": {"image": [0, 1]}}, 415, "multipart field 'file'"),
    ("bytes, no type", "gap", {"content": DIGIT}, 415, "'missing' is not an image type"),
    (
        "text upload",
        "gap",
        {"files": {"file": ("a.txt", b"hello", "text/plain")}},
        415,
        "'text/plain', not an image type",
    ),
    (
        "not an image",
        "gap",
        {"files": {"file": ("a.png", b"hello world", "image/png")}},
        422,
        "not a readable image",
    ),
    (
        "truncated PNG",
        "gap",
        {"content": NOISE[: len(NOISE) // 2], "headers": {"content-type": "image/png"}},
        422,
        "not a readable image",
    ),
    (
        "format not accepted",
        "gap",
        {"content": b"%PDF-1.4\n" + b"x" * 100, "headers": {"content-type": "image/x-pdf"}},
        422,
        "send a complete PNG, JPEG",
    ),
    (
        "SVG",
        "gap",
        {
            "content": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
            "headers": {"content-type": "image/svg+xml"},
        },
        422,
        "not a readable image",
    ),
    (
        "upload over the limit",
        "gap",
        {"files": {"file": ("a.png", b"\0" * (MAX_UPLOAD_BYTES + 1), "image/png")}},
        413,
        f"larger than {MAX_UPLOAD_BYTES:,} bytes",
    ),
    (
        "raw body over the limit",
        "gap",
        {"content": b"\0" * (MAX_UPLOAD_BYTES + 1), "headers": {"content-type": "image/png"}},
        413,
        "send a smaller image",
    ),
    (
        "bomb: header claims 100k x 100k",
        "gap",
        {"content": png_header_only(100_000, 100_000), "headers": {"content-type": "image/png"}},
        413,
        "send a smaller photo",
    ),
    (
        "bomb: 1-bit PNG over the pixel cap",
        "gap",
        {"files": {"file": ("b.png", one_bit_bomb(int(MAX_IMAGE_PIXELS**0.5) + 10), "image/png")}},
        413,
        "pixels",
    ),
    (
        "blank white image",
        "gap",
        {"files": {"file": ("w.png", png(np.full((64, 64), 255, np.uint8)))}},
        422,
        "no digit found",
    ),
    (
        "blank black image",
        "gap",
        {"content": png(np.zeros((28, 28), np.uint8)), "headers": {"content-type": "image/png"}},
        422,
        "no digit found",
    ),
    (
        "one bad file in a batch",
        "gap",
        {
            "files": [
                ("file", ("good.png", DIGIT, "image/png")),
                ("file", ("bad.png", b"junk", "image/png")),
            ]
        },
        422,
        "'bad.png': the upload is not a readable image",
    ),
    (
        "too many files",
        "gap",
        {"files": [("file", ("a.png", DIGIT, "image/png"))] * 65},
        400,
        "at most 64 files",
    ),
    (
        "unknown version",
        "gap?version=20260101T000000.000000Z-00000000",
        {"content": DIGIT, "headers": {"content-type": "image/png"}},
        404,
        "'gap' has no kept version '20260101T000000.000000Z-00000000'; the volume keeps: 2",
    ),
    (
        "path-like version",
        "gap?version=..%2F..%2Findex.json",
        {"content": DIGIT, "headers": {"content-type": "image/png"}},
        404,
        "has no kept version '../../index.json'",
    ),
    (
        "version of an untrained step",
        "lighter?version=20260101T000000.000000Z-00000000",
        {"content": DIGIT, "headers": {"content-type": "image/png"}},
        503,
        "not trained yet",
    ),
    (
        "malformed multipart",
        "gap",
        {"content": b"--x\r\nnonsense", "headers": {"content-type": "multipart/form-data"}},
        400,
        "malformed multipart body",
    ),
]


@pytest.mark.parametrize(
    ("step", "request_args", "status", "text"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_gets_a_clear_4xx(
    client: TestClient, step: str, request_args: dict, status: int, text: str
) -> None:
    answer = client.post(f"/predict/{step}", **request_args)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert text in answer.json()["detail"]


def test_the_service_still_answers_after_every_bad_input(client: TestClient) -> None:
    for _, step, request_args, _, _ in BAD_INPUTS:
        client.post(f"/predict/{step}", **request_args)
    assert client.post("/predict/gap", files={"file": ("a.png", DIGIT)}).status_code == 200


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=2000), cut=st.integers(0, len(NOISE)), flip=st.integers(0, 255))
def test_no_bytes_make_a_500(client: TestClient, data: bytes, cut: int, flip: int) -> None:
    """Random bytes, and a real PNG truncated and with one byte changed: never a 5xx."""
    broken = bytearray(NOISE[:cut] + data)
    if broken:
        broken[cut % len(broken)] ^= flip
    for body in (data, bytes(broken)):
        answer = client.post("/predict/gap", content=body, headers={"content-type": "image/png"})
        assert answer.status_code in (200, 413, 422), answer.text


# --- An empty volume, then the trainer publishes ----------------------------------------


def test_empty_volume_starts_not_ready(empty_client: TestClient) -> None:
    assert empty_client.get("/healthz").status_code == 200
    ready = empty_client.get("/readyz")
    assert ready.status_code == 503 and "not ready" in ready.json()["detail"]
    for path in ("/predict/gap", "/predict/best"):
        answer = empty_client.post(path, files={"file": ("a.png", DIGIT)})
        assert answer.status_code == 503
        assert "python -m trainer run" in answer.json()["detail"]
    assert not any(s["trained"] for s in empty_client.get("/steps").json())


def test_a_new_version_is_served_without_a_restart(client: TestClient, models_dir: Path) -> None:
    before = client.post("/predict/gap", files={"file": ("a.png", DIGIT)}).json()
    version = publish(models_dir, "gap", random_model(99))
    client.app.state.models.refresh()  # what the poller does every POLL_SECONDS
    after = client.post("/predict/gap", files={"file": ("a.png", DIGIT)}).json()
    assert after["version"] == version != before["version"]
    assert after["probabilities"] != before["probabilities"]
    assert client.get("/steps").json()[5]["version"] == version
    exposed = client.get("/metrics").text  # which version each step serves, for an operator
    assert f'mnist_model_info{{step="gap",version="{version}"}} 1.0' in exposed
    assert f'version="{before["version"]}"' not in exposed


def test_a_kept_version_answers_when_pinned(client: TestClient, models_dir: Path) -> None:
    old = client.post("/predict/gap", files={"file": ("a.png", DIGIT)}).json()
    new_version = publish(models_dir, "gap", random_model(98), accuracy=89.0)
    client.app.state.models.refresh()
    new = client.post("/predict/gap", files={"file": ("a.png", DIGIT)}).json()
    assert new["version"] == new_version != old["version"]
    pinned = client.post(f"/predict/gap?version={old['version']}", content=DIGIT,
                         headers={"content-type": "image/png"}).json()  # fmt: skip
    assert pinned == old  # the same version, the same answer
    listed = client.get("/steps/6").json()
    assert listed["serving"] == new_version
    assert [(v["version"], v["current"], v["best_test_accuracy"]) for v in listed["versions"]] == [
        (old["version"], False, 90.0),
        (new_version, True, 89.0),
    ]


def test_openapi_documents_both_ways_to_send_an_image(client: TestClient) -> None:
    body = client.get("/openapi.json").json()["paths"]["/predict/{step}"]["post"]
    assert {"multipart/form-data", "image/png"} <= set(body["requestBody"]["content"])
    assert {"200", "404", "413", "415", "422", "503"} <= set(body["responses"])
    answer = body["responses"]["200"]["content"]["application/json"]["schema"]["anyOf"]
    assert {"$ref": "#/components/schemas/Prediction"} in answer  # one file: one prediction


def test_freed_memory_is_kept_for_the_next_request_on_glibc() -> None:
    """glibc's malloc is tuned at start-up (see `keep_freed_memory`); other libcs are left be."""
    assert keep_freed_memory() == (platform.libc_ver()[0] == "glibc")
