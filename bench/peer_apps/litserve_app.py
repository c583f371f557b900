"""The LitServe peer of `bench/peers.py`: the final step's model.onnx as LitServe's docs serve a
model, one inference worker on the CPU.

A `LitAPI` loads the session in `setup`, reads the multipart field `file` in
`decode_request` and runs our preprocessing on it, predicts, and answers in
`encode_response`. `fast_queue=True` is what the docs recommend past 100 requests a second
(ZeroMQ between the HTTP server and the worker instead of a multiprocessing queue).

    PYTHONPATH=. MODEL_PATH=.../model.onnx python -m bench.peer_apps.litserve_app PORT
"""

from __future__ import annotations

import sys

import litserve as ls
import numpy as np

from bench.peer_apps.common import INPUT_NAME, MAX_PIXELS, answer, preprocess, session


class DigitAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.session = session()

    # Unannotated, as in the docs: LitServe then hands over the request's form (an annotation
    # would make it validate a JSON body against that type instead).
    def decode_request(self, request):
        return preprocess(request["file"].file.read(), MAX_PIXELS)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {INPUT_NAME: x[None]})[0][0]

    def encode_response(self, output: np.ndarray) -> dict[str, object]:
        return answer(output)


if __name__ == "__main__":
    server = ls.LitServer(DigitAPI(), accelerator="cpu", workers_per_device=1, fast_queue=True)
    server.run(host="127.0.0.1", port=int(sys.argv[1]), generate_client_file=False)
