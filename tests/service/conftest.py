"""Fixtures of the service tests: tiny real ONNX models published into a real volume.

The fixture model is Flatten -> Gemm -> Softmax built with `onnx.helper`: random weights for
the API tests, or a logistic regression fitted on MNIST in numpy (a few seconds) where the
answers must be right. Both go through `volume.publish`, exactly as the trainer's do.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

import volume
from service.app import app
from tests.service.photos import load_mnist
from tests.volume_fixtures import fake_mistakes, fake_samples

# Small limits, so the tests can cross them with small files.
MAX_UPLOAD_BYTES = 300_000
MAX_IMAGE_PIXELS = 2_000_000
TRAINED = ("gap", "scheduler")  # the steps the fixture volume publishes; the others are not


def gemm_model(weights: np.ndarray, bias: np.ndarray, softmax: bool = True) -> bytes:
    """An ONNX model image [N,1,28,28] -> probabilities [N,10]: softmax(flatten(x) @ W + b)."""
    logits = "logits" if softmax else volume.OUTPUT_NAME  # without: a broken export, logits
    nodes = [
        helper.make_node("Flatten", [volume.INPUT_NAME], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "weights", "bias"], [logits]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], [volume.OUTPUT_NAME], axis=1))
    graph = helper.make_graph(
        nodes,
        "fixture",
        [helper.make_tensor_value_info(volume.INPUT_NAME, TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info(volume.OUTPUT_NAME, TensorProto.FLOAT, ["N", 10])],
        [
            numpy_helper.from_array(weights.astype(np.float32), "weights"),
            numpy_helper.from_array(bias.astype(np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # what onnxruntime has read for years
    onnx.checker.check_model(model)
    return model.SerializeToString()


def random_model(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return gemm_model(rng.normal(0, 0.05, (784, 10)), rng.normal(0, 0.1, 10))


def summary_for(step: str) -> volume.Summary:
    return volume.Summary(
        step=step,
        layers=[
            volume.LayerRow(
                name="Linear-1",
                type="Linear",
                output_shape=[-1, 10],
                params=7850,
                trainable=True,
                receptive_field=28,
                jump=1,
            )
        ],
        total_params=7850,
        trainable_params=7850,
        non_trainable_params=0,
        input_size_mb=0.0,
        forward_backward_size_mb=0.0,
        params_size_mb=0.03,
        estimated_total_size_mb=0.03,
        text=f"fixture table of {step}\nTotal params: 7,850\n",
    )


def metrics_for(step: str, accuracy: float) -> volume.Metrics:
    info = volume.STEPS_BY_SLUG[step]
    epoch = volume.EpochMetrics(
        epoch=1,
        train_loss=0.5,
        train_accuracy=accuracy - 1,
        test_loss=0.4,
        test_accuracy=accuracy,
        lr=0.01,
        seconds=1.0,
    )
    provenance = volume.Provenance(
        command="tests/service fixture",
        seed=0,
        device="cpu",
        versions={},
        data={},
        limit=None,
        started_at="2026-01-01T00:00:00+00:00",
        wall_seconds=1.0,
    )
    return volume.Metrics(
        step=step,
        number=info.number,
        title=info.title,
        objective="a fixture",
        params=7850,
        recipe={},
        epochs=[epoch],
        best_epoch=1,
        best_test_accuracy=accuracy,
        provenance=provenance,
        verification={},
    )


def publish(
    root: Path, step: str, model: bytes | None = None, accuracy: float = 90.0, lab: bool = False
) -> str:
    """Publish a fixture version of `step` the way the trainer does; return its version.
    `lab`: with the optional mistakes.json and samples.json, as the trainer writes them now."""
    return volume.publish(
        root,
        step,
        model or random_model(),
        summary_for(step),
        metrics_for(step, accuracy),
        mistakes=fake_mistakes(step) if lab else None,
        samples=fake_samples() if lab else None,
    )


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """A volume where `gap` and `scheduler` are published and the other steps are not.
    `scheduler` has the lab's optional files; `gap` was published before they existed."""
    root = tmp_path / "models"
    for number, step in enumerate(TRAINED):
        publish(root, step, random_model(number), accuracy=90.0 + number, lab=step == "scheduler")
    return root


def start_client(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch, max_upload_bytes: int = MAX_UPLOAD_BYTES
) -> Iterator[TestClient]:
    monkeypatch.setenv("MODELS_DIR", str(models_dir))
    monkeypatch.setenv("MAX_UPLOAD_BYTES", str(max_upload_bytes))
    monkeypatch.setenv("MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
    monkeypatch.setenv("POLL_SECONDS", "3600")  # tests refresh by hand; uvicorn tests poll
    with TestClient(app, raise_server_exceptions=False) as client:  # a 500 must show as one
        yield client


@pytest.fixture
def client(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The real app, started (lifespan and all) on the fixture volume."""
    yield from start_client(models_dir, monkeypatch)


# Two API keys, as API_KEYS would hold them (tests/service/test_auth.py).
KEYS = ("test-key-0123456789abcdef", "other-key-fedcba9876543210")


@pytest.fixture
def keyed_client(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The real app on the fixture volume with API keys on: KEYS."""
    monkeypatch.setenv("API_KEYS", ",".join(KEYS))
    yield from start_client(models_dir, monkeypatch)


@pytest.fixture
def empty_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The real app on a volume the trainer has not published anything into yet."""
    yield from start_client(tmp_path / "empty", monkeypatch)


def fit_linear_classifier(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression onto one-hot labels, solved in closed form: ~85 % on MNIST in a second.

    A linear model knows nothing of translation, so it is a strict test of the centring.
    """
    x = (images.reshape(len(images), -1) / 255 - volume.MNIST_MEAN) / volume.MNIST_STD
    x = np.hstack([x, np.ones((len(x), 1))])
    targets = np.eye(10)[labels]
    solution = np.linalg.solve(x.T @ x + 10 * np.eye(x.shape[1]), x.T @ targets)
    scale = 10  # softmax of the scores, sharpened into confident probabilities
    return scale * solution[:-1], scale * solution[-1]


@pytest.fixture(scope="session")
def mnist_test(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return load_mnist(mnist_dir, "t10k")


@pytest.fixture(scope="session")
def trained_model(mnist_dir: Path) -> bytes:
    """A real (if simple) MNIST classifier, as ONNX."""
    images, labels = load_mnist(mnist_dir, "train")
    return gemm_model(*fit_linear_classifier(images[:10000], labels[:10000]))


@pytest.fixture
def trained_client(
    trained_model: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    """The app serving the MNIST-trained fixture as the final step."""
    root = tmp_path / "models"
    publish(root, "scheduler", trained_model, accuracy=90.0)
    yield from start_client(root, monkeypatch, max_upload_bytes=50_000_000)  # batches of photos
