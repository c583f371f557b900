"""The ceiling for `bench/serve.py`: a bare FastAPI app that only reads the upload.

It answers `POST /predict/{step}` like the service (multipart field `file`), but does nothing
with the image: it reads the upload and returns a constant JSON of the same shape as a real
prediction. Served by uvicorn with the same flags as the service, it shows the most requests
per second the framework allows on this machine; whatever the service falls short of it is
the cost of decoding, preprocessing, inference and our own per-request code.

    uvicorn bench.bare_app:app --host 127.0.0.1 --port 8001
"""

from __future__ import annotations

import json

from fastapi import FastAPI, UploadFile
from fastapi.responses import Response

app = FastAPI(title="bare ceiling for bench/serve.py")

ANSWER = json.dumps(
    {
        "digit": 7,
        "confidence": 0.9931,
        "probabilities": [0.0001, 0.0002, 0.0012, 0.0009, 0.0, 0.0001, 0.0, 0.9931, 0.0003, 0.0041],
        "step": "scheduler",
        "version": "20261125T161300.123456Z-3f2a9c1b",
    }
).encode()


@app.post("/predict/{step}")
async def predict(step: str, file: UploadFile) -> Response:
    await file.read()
    return Response(ANSWER, media_type="application/json")


@app.get("/readyz")
def readyz() -> dict[str, bool]:
    return {"ready": True}
