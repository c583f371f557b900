"""The TorchServe peer of `bench/peers.py`: a custom handler for the final step's model.onnx,
archived with `torch-model-archiver --serialized-file model.onnx --handler THIS_FILE` and
served by `torchserve` with one worker (bench/peers.py does both).

TorchServe's `BaseHandler` finds the ONNX file in the archive and opens it with onnxruntime
(its documented ONNX support); the session is then made again with our settings, as every
framework peer's is. Requests arrive as a list (one here: batching stays off, as by default)
of dicts holding the multipart fields' bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ts.torch_handler.base_handler import BaseHandler

from bench.peer_apps.common import INPUT_NAME, MAX_PIXELS, answer, preprocess, session


class DigitHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        super().initialize(context)  # sets model_pt_path, opens it with TorchServe's options
        self.model = session(self.model_pt_path)

    def preprocess(self, data: list[dict[str, Any]]) -> np.ndarray:
        # The multipart field `file`, as TorchServe hands it over (a bytearray).
        return np.stack([preprocess(bytes(row["file"]), MAX_PIXELS) for row in data])

    def inference(self, data: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        return self.model.run(None, {INPUT_NAME: data})[0]

    def postprocess(self, data: np.ndarray) -> list[dict[str, object]]:
        return [answer(row) for row in data]
