"""Real-world images through `/predict`: photo-like digits, and MNIST's own 28x28 images."""

from __future__ import annotations

import collections

import numpy as np
import onnxruntime as ort
from fastapi.testclient import TestClient
from PIL import Image

from service.images import normalise
from tests.service.photos import KINDS, encode, photo_like_set

BATCH = 30


def predict_all(client: TestClient, uploads: list[tuple[bytes, str]]) -> np.ndarray:
    digits = []
    for start in range(0, len(uploads), BATCH):
        files = [
            ("file", (f"{start + i}", data, content_type))
            for i, (data, content_type) in enumerate(uploads[start : start + BATCH])
        ]
        answer = client.post("/predict/scheduler", files=files)
        assert answer.status_code == 200, answer.text
        digits += [p["digit"] for p in answer.json()]
    return np.array(digits)


def raw_predictions(model: bytes, digits: np.ndarray) -> np.ndarray:
    """What the model says on the MNIST tensors themselves, with no preprocessing."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    batch = np.stack([normalise(d.astype(np.float32)) for d in digits])
    return session.run(None, {"image": batch})[0].argmax(axis=1)


def test_mnist_images_predict_as_the_raw_tensor_does(
    trained_client: TestClient, trained_model: bytes, mnist_test
) -> None:
    digits = mnist_test[0][:240]
    served = predict_all(
        trained_client, [(encode(Image.fromarray(d), "PNG"), "image/png") for d in digits]
    )
    assert (served == raw_predictions(trained_model, digits)).mean() >= 0.98


def test_photo_like_digits_read_about_as_well_as_mnist(
    trained_client: TestClient, trained_model: bytes, mnist_test
) -> None:
    images, labels = mnist_test
    count = 20 * len(KINDS)
    photos = photo_like_set(images, labels, count, seed=1)
    served = predict_all(trained_client, [(p.data, p.content_type) for p in photos])
    right = served == labels[:count]
    mnist_accuracy = (raw_predictions(trained_model, images[:count]) == labels[:count]).mean()
    assert right.mean() >= mnist_accuracy - 0.06, (right.mean(), mnist_accuracy)
    per_kind = collections.defaultdict(list)
    for photo, ok in zip(photos, right, strict=True):
        per_kind[photo.kind].append(ok)
    worst = min(per_kind, key=lambda kind: np.mean(per_kind[kind]))
    assert np.mean(per_kind[worst]) >= 0.6, f"{worst} photos read badly"  # a broken decode path
