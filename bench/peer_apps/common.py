"""What every framework peer of `bench/peers.py` shares with the service, so only the framework
differs: our preprocessing (`service.images.preprocess`, imported from the work tree) and our
onnxruntime session settings (`service.sessions.session_options`: one intra-op thread, no
spinning), on the same `model.onnx`. Each peer answers `{"digit": D, "probabilities": [...]}`.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

from service.images import preprocess
from service.sessions import session_options
from volume import INPUT_NAME

MODEL_PATH = os.environ.get("MODEL_PATH", "model.onnx")
MAX_PIXELS = 25_000_000  # the service's default MAX_IMAGE_PIXELS

__all__ = ["INPUT_NAME", "MAX_PIXELS", "MODEL_PATH", "answer", "preprocess", "session"]


def session(path: str = MODEL_PATH) -> ort.InferenceSession:
    return ort.InferenceSession(path, session_options(1), providers=["CPUExecutionProvider"])


def answer(probabilities: np.ndarray) -> dict[str, object]:
    """One image's answer from its row of the model's probabilities."""
    return {"digit": int(probabilities.argmax()), "probabilities": probabilities.tolist()}
