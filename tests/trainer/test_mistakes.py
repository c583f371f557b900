"""What export records for the lab: the served model's confusion matrix and mistakes on the test
split, and the fixed sample digits; published with the version."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.volume_fixtures import fake_metrics
from trainer import export
from trainer.data import MNIST, Split, normalize, read_mnist_folder
from trainer.loop import evaluate
from trainer.steps import get_step
from trainer.train import fit
from volume import MAX_MISTAKES, read_current

pytestmark = pytest.mark.slow  # trains `gap` and exports it


@pytest.fixture(scope="module")
def mnist(mnist_dir: Path) -> MNIST:
    return read_mnist_folder(mnist_dir)


@pytest.fixture(scope="module")
def trained(mnist: MNIST) -> tuple[torch.nn.Module, bytes]:
    """`gap` after one epoch on 2,000 images: wrong often enough to fill the gallery."""
    torch.manual_seed(0)
    model = get_step("gap").build()
    recipe = replace(get_step("gap").recipe, epochs=1)
    fit(model, mnist.train.head(2000), mnist.test.head(100), recipe, progress=False, log=False)
    return model.eval(), export.export_onnx(model)


def test_the_confusion_matrix_is_the_models_test_accuracy(
    trained: tuple[torch.nn.Module, bytes], mnist: MNIST
) -> None:
    model, onnx_bytes = trained
    test = mnist.test.head(3000)
    recorded = export.record_mistakes(onnx_bytes, test, "gap", best_epoch=4)
    confusion = np.array(recorded.confusion)
    assert recorded.step == "gap" and recorded.best_epoch == 4
    assert confusion.sum() == len(test)
    np.testing.assert_array_equal(confusion.sum(1), np.bincount(test.labels.numpy(), minlength=10))
    _, accuracy = evaluate(model, test)  # PyTorch, as the training loop measures it
    right = np.trace(confusion)
    assert abs(right - accuracy / 100 * len(test)) <= 1  # ONNX and PyTorch: a near tie at most
    wrong = len(test) - right
    assert wrong > MAX_MISTAKES  # a model this brief errs often: the list is cut
    assert len(recorded.mistakes) == MAX_MISTAKES


def test_mistakes_are_the_most_confident_wrong_answers_with_their_pixels(
    trained: tuple[torch.nn.Module, bytes], mnist: MNIST
) -> None:
    _, onnx_bytes = trained
    test = mnist.test.head(3000)
    recorded = export.record_mistakes(onnx_bytes, test, "gap", best_epoch=1)
    confidences = [m.confidence for m in recorded.mistakes]
    assert confidences == sorted(confidences, reverse=True)
    probabilities = served_probabilities(onnx_bytes, test)
    surest_wrong = max(
        float(probabilities[i].max())
        for i in range(len(test))
        if probabilities[i].argmax() != int(test.labels[i])
    )
    assert confidences[0] == pytest.approx(surest_wrong, abs=1e-4)
    for m in recorded.mistakes:
        assert m.label == int(test.labels[m.index]) != m.predicted
        assert m.predicted == int(probabilities[m.index].argmax())
        assert m.grey() == test.images[m.index].numpy().tobytes()


def served_probabilities(onnx_bytes: bytes, test: Split) -> np.ndarray:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": normalize(test.images).numpy()})[0]


def test_samples_are_the_first_two_of_each_digit(mnist: MNIST) -> None:
    samples = export.pick_samples(mnist.test)
    labels = mnist.test.labels.numpy()
    assert [d.label for d in samples.digits] == [d for d in range(10) for _ in range(2)]
    for digit in range(10):
        first_two = np.flatnonzero(labels == digit)[:2].tolist()
        assert [d.index for d in samples.digits if d.label == digit] == first_two
    assert samples.digits[0].grey() == mnist.test.images[samples.digits[0].index].numpy().tobytes()
    assert export.pick_samples(mnist.test.head(500)) == samples  # the same on any larger subset


def test_export_publishes_them_with_the_version(
    trained: tuple[torch.nn.Module, bytes],
    mnist: MNIST,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, onnx_bytes = trained
    monkeypatch.setattr(export, "export_onnx", lambda _model: onnx_bytes)  # exported once above
    test = mnist.test.head(1000)
    export.export_and_publish(tmp_path, "gap", model.state_dict(), fake_metrics("gap"), test)
    published = read_current(tmp_path, "gap")
    assert published is not None and published.mistakes is not None
    assert published.mistakes.best_epoch == fake_metrics("gap").best_epoch
    assert np.array(published.mistakes.confusion).sum() == len(test)
    assert published.samples == export.pick_samples(test)
