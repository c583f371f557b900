"""The "tutorial" peer of `bench/peers.py`: an MNIST app the way blog posts write one.

FastAPI's `UploadFile`, the upload opened with Pillow, made grey and resized to 28x28, scaled
and normalised as in training, and a default onnxruntime session (as many intra-op threads as
cores, spinning while it waits). No cropping, centring or inversion: a photo of a dark digit
on white paper reaches the model as MNIST's opposite, which is why it is often wrong there.
It is what a user would compare the service with first; `bench/peers.py` counts how often it
answers another digit than ours.

    MODEL_PATH=.../model.onnx uvicorn --app-dir bench/peer_apps tutorial:app --port 8002
"""

from __future__ import annotations

import io
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, File, UploadFile
from PIL import Image

app = FastAPI(title="MNIST tutorial app")
session = ort.InferenceSession(os.environ["MODEL_PATH"])
input_name = session.get_inputs()[0].name


@app.post("/predict")
async def predict(file: UploadFile = File(...)) -> dict[str, object]:
    contents = await file.read()
    image = Image.open(io.BytesIO(contents)).convert("L").resize((28, 28))
    pixels = np.array(image, dtype=np.float32) / 255.0
    pixels = (pixels - 0.1307) / 0.3081
    probabilities = session.run(None, {input_name: pixels.reshape(1, 1, 28, 28)})[0][0]
    return {"digit": int(np.argmax(probabilities)), "probabilities": probabilities.tolist()}
