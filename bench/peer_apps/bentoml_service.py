"""The BentoML peer of `bench/peers.py`: the final step's model.onnx as BentoML's docs serve a
model, one worker.

A `@bentoml.service` class loads the session in `__init__`; its `@bentoml.api` method takes
the multipart field `file` as a `PIL.Image.Image` (BentoML's image type: it opens the upload,
lazily, so our preprocessing still decodes a JPEG at draft scale) and answers a dict. A plain
(sync) API method runs in BentoML's thread pool; `threads` stays at its default, as `workers`
stays at one.

    PYTHONPATH=. MODEL_PATH=.../model.onnx bentoml serve \
        bench.peer_apps.bentoml_service:Digit --host 127.0.0.1 --port 3000
"""

from __future__ import annotations

import bentoml
from PIL.Image import Image

from bench.peer_apps.common import INPUT_NAME, MAX_PIXELS, answer, session
from service.images import preprocess_image


@bentoml.service(workers=1)
class Digit:
    def __init__(self) -> None:
        self.session = session()

    @bentoml.api
    def predict(self, file: Image) -> dict[str, object]:
        inputs = preprocess_image(file, MAX_PIXELS)[None]
        return answer(self.session.run(None, {INPUT_NAME: inputs})[0][0])
