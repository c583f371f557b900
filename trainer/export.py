"""Export a trained step to ONNX, verify it against PyTorch, and publish it into the volume.

Export means export and verify: the ONNX file is run by onnxruntime on real MNIST test images,
and publishing is refused unless it predicts the same digit as PyTorch for every image, with
probabilities within ``ATOL``.

The exported file then answers the whole test split once more, so that the version carries
what the lab page shows of it: the confusion matrix and the most confident mistakes of the model
that is served (the best epoch's weights), plus a fixed set of sample test digits. The training
loop needs no change for it, and a re-export (`python -m trainer export`) records them too.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from trainer.data import Split, normalize
from trainer.steps import get_step
from trainer.summary import summarize
from volume import (
    IMAGE_SIZE,
    INPUT_NAME,
    MAX_MISTAKES,
    NUM_CLASSES,
    OUTPUT_NAME,
    Digit,
    Metrics,
    Mistake,
    Mistakes,
    Samples,
    atomic_write_bytes,
    checkpoint_path,
    encode_pixels,
    publish,
    space_needed,
)

ATOL = 1e-4  # max |p_onnx - p_torch| over all images and classes
VERIFY_IMAGES = 1000
OPSET = 18
SAMPLES_PER_DIGIT = 2  # the first test digits of each class: 20 samples
# Test images per onnxruntime call when recording mistakes: the first step's first activation
# is 87 KB an image, so 10,000 at once would take 0.9 GB.
MISTAKES_BATCH = 500


class ExportError(Exception):
    """The ONNX export failed or does not match PyTorch; nothing was published."""


class WithSoftmax(nn.Module):
    """What is exported: the model, then softmax, so that the graph outputs probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.model(image), dim=1)


def export_onnx(model: nn.Module) -> bytes:
    """The model (in eval mode, on the CPU) as ONNX bytes, with a dynamic batch dimension."""
    wrapped = WithSoftmax(model).cpu().eval()
    example = torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        program = torch.onnx.export(
            wrapped,
            (example,),
            dynamo=True,  # torch.export-based: the exporter torch 2.14 recommends
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"image": {0: batch}},
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
        if program is None:
            raise ExportError("torch.onnx.export returned no program")
        program.save(str(path), external_data=False)
        return path.read_bytes()


def verify_onnx(model: nn.Module, onnx_bytes: bytes, images: Split) -> dict[str, float | int]:
    """Compare onnxruntime with PyTorch on ``images``; raise ExportError on any disagreement."""
    x = normalize(images.images[:VERIFY_IMAGES].cpu())
    model = model.cpu().eval()
    with torch.no_grad():
        expected = F.softmax(model(x), dim=1).numpy()
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    # Two calls with different batch sizes prove the batch dimension is really dynamic.
    got = np.concatenate(
        [
            session.run([OUTPUT_NAME], {INPUT_NAME: x[:1].numpy()})[0],
            session.run([OUTPUT_NAME], {INPUT_NAME: x[1:].numpy()})[0],
        ]
    )
    if got.shape != expected.shape:
        raise ExportError(f"ONNX output shape {got.shape} != PyTorch's {expected.shape}")
    max_diff = float(np.abs(got - expected).max())
    disagree = int((got.argmax(1) != expected.argmax(1)).sum())
    if disagree or not max_diff <= ATOL:
        raise ExportError(
            f"ONNX does not match PyTorch on {len(x)} MNIST test images: {disagree} different "
            f"predictions, max probability difference {max_diff:.2e} (tolerance {ATOL:.0e})"
        )
    return {"images": len(x), "max_abs_diff": max_diff, "atol": ATOL, "disagreements": disagree}


def record_mistakes(onnx_bytes: bytes, test: Split, step: str, best_epoch: int) -> Mistakes:
    """The exported model's confusion matrix on ``test`` and its MAX_MISTAKES most confident
    wrong answers (ties in test order), run by onnxruntime as the service runs it."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    images = test.images.cpu()
    probabilities = np.concatenate(
        [
            session.run(
                [OUTPUT_NAME],
                {INPUT_NAME: normalize(images[start : start + MISTAKES_BATCH]).numpy()},
            )[0]
            for start in range(0, len(images), MISTAKES_BATCH)
        ]
    )
    labels = test.labels.cpu().numpy()
    predicted = probabilities.argmax(1)
    confidence = probabilities.max(1)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:MAX_MISTAKES]
    grey = images.numpy()
    return Mistakes(
        step=step,
        best_epoch=best_epoch,
        confusion=confusion.tolist(),
        mistakes=[
            Mistake(
                index=int(i),
                label=int(labels[i]),
                pixels=encode_pixels(grey[i].tobytes()),
                predicted=int(predicted[i]),
                confidence=round(float(confidence[i]), 4),
            )
            for i in worst
        ],
    )


def pick_samples(test: Split) -> Samples:
    """The first SAMPLES_PER_DIGIT test digits of each class, by class: the same for every step
    and every run on the same test split."""
    labels = test.labels.cpu().numpy()
    grey = test.images.cpu().numpy()
    chosen = [
        int(i)
        for digit in range(NUM_CLASSES)
        for i in np.flatnonzero(labels == digit)[:SAMPLES_PER_DIGIT]
    ]
    return Samples(
        digits=[
            Digit(index=i, label=int(labels[i]), pixels=encode_pixels(grey[i].tobytes()))
            for i in chosen
        ]
    )


def save_checkpoint(
    root: Path, step: str, state: dict[str, torch.Tensor], meta: dict[str, Any]
) -> Path:
    """Keep the best weights with everything needed to re-export them (nanoGPT style)."""
    buffer = io.BytesIO()
    torch.save({"step": step, "state_dict": state, **meta}, buffer)
    path = checkpoint_path(root, step)
    with space_needed(root, f"the checkpoint of {step}", len(buffer.getvalue())):
        atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(root: Path, step: str) -> dict[str, Any]:
    path = checkpoint_path(root, step)
    if not path.exists():
        raise ExportError(
            f"no checkpoint for {step!r} at {path}: train it first with "
            f"`python -m trainer run --steps {step}`"
        )
    ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt


def export_and_publish(
    root: Path,
    step: str,
    state: dict[str, torch.Tensor],
    metrics: Metrics,
    test: Split,
    keep: int = 3,
    make_current: bool | Callable[[], bool] = True,
) -> str:
    """Build the step's model with ``state``, export, verify, publish; return the version name.
    ``make_current``: as `volume.publish` takes it (a `volume.versions.Promotion`)."""
    model = get_step(step).build()
    model.load_state_dict(state)
    model.eval()
    onnx_bytes = export_onnx(model)
    verification = verify_onnx(model, onnx_bytes, test)
    metrics = metrics.model_copy(update={"verification": verification})
    return publish(
        root,
        step,
        onnx_bytes,
        summarize(model, step),
        metrics,
        keep=keep,
        mistakes=record_mistakes(onnx_bytes, test, step, metrics.best_epoch),
        samples=pick_samples(test),
        make_current=make_current,
    )
