"""Export means export and verify: ONNX equals PyTorch for every step, or nothing is published."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.volume_fixtures import fake_metrics
from trainer import export
from trainer.data import MNIST, normalize, read_mnist_folder
from trainer.steps import get_step
from trainer.train import fit
from volume import INPUT_NAME, OUTPUT_NAME, STEP_SLUGS, read_current, read_index


@pytest.fixture(scope="module")
def mnist(mnist_dir: Path) -> MNIST:
    return read_mnist_folder(mnist_dir)


def briefly_trained(slug: str, mnist: MNIST) -> torch.nn.Module:
    torch.manual_seed(0)
    model = get_step(slug).build()
    recipe = replace(get_step(slug).recipe, epochs=1)
    fit(model, mnist.train.head(256), mnist.test.head(100), recipe, progress=False, log=False)
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("slug", STEP_SLUGS)
def test_onnx_matches_pytorch_on_real_images(slug: str, mnist: MNIST) -> None:
    model = briefly_trained(slug, mnist)
    onnx_bytes = export.export_onnx(model)
    report = export.verify_onnx(model, onnx_bytes, mnist.test)
    assert report["disagreements"] == 0 and report["max_abs_diff"] <= export.ATOL
    assert report["images"] == export.VERIFY_IMAGES
    # A plain InferenceSession, as any user would run it, on a batch of 7.
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    x = normalize(mnist.test.images[:7]).numpy()
    (probs,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
    assert probs.shape == (7, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).exp().numpy()
    np.testing.assert_allclose(probs, expected, atol=export.ATOL)


@pytest.mark.slow  # exports to ONNX twice
def test_a_mismatching_export_publishes_nothing(
    mnist: MNIST, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = get_step("gap").build().eval()
    torch.manual_seed(1)
    other = get_step("gap").build().eval()  # different weights: a wrong export
    monkeypatch.setattr(export, "export_onnx", lambda _model: export_real(other))
    with pytest.raises(export.ExportError, match="ONNX does not match PyTorch"):
        export.export_and_publish(
            tmp_path, "gap", model.state_dict(), fake_metrics("gap"), mnist.test
        )
    assert read_index(tmp_path).steps == {}
    assert read_current(tmp_path, "gap") is None


export_real = export.export_onnx
