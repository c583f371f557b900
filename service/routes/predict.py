"""`POST /predict/{step}`: the digit in an uploaded image, from one step's model."""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, TypeAdapter

from service import tracing
from service.common import StepName, VersionQuery, errors, get_models, get_settings, loaded_version
from service.models import LoadedModel
from service.telemetry import STEP_LATENCY, STEP_PREDICTIONS
from service.uploads import IMAGE_REQUEST_BODY, read_image_request, run_on_images

router = APIRouter()


class Prediction(BaseModel):
    digit: int = Field(ge=0, le=9, examples=[7])
    confidence: float = Field(description="the probability of `digit`", examples=[0.9931])
    probabilities: list[float] = Field(
        min_length=10,
        max_length=10,
        description="per digit 0-9, summing to 1",
        examples=[[0.0001, 0.0002, 0.0012, 0.0009, 0.0, 0.0001, 0.0, 0.9931, 0.0003, 0.0041]],
    )
    step: str = Field(examples=["gap"])
    version: str = Field(examples=["20261125T161300.123456Z-3f2a9c1b"])


def answers(model: LoadedModel, rows: list[list[float]]) -> list[Prediction]:
    """A prediction per row of the model's probabilities (ten floats: plain Python is cheaper)."""
    predictions = []
    for row in rows:
        total = sum(row)
        probabilities = [p / total for p in row]  # summing to 1 in float64, not ~1 in float32
        digit = max(range(len(probabilities)), key=probabilities.__getitem__)
        predictions.append(
            Prediction(
                digit=digit,
                confidence=probabilities[digit],
                probabilities=probabilities,
                step=model.step,
                version=model.version,
            )
        )
    return predictions


# What /predict answers several files with, serialised in one call.
PREDICTION_LIST = TypeAdapter(list[Prediction])


@router.post(
    "/predict/{step}",
    response_model=Prediction | list[Prediction],
    responses=errors(400, 404, 408, 413, 415, 422, 503),
    openapi_extra={"requestBody": IMAGE_REQUEST_BODY},
)
async def predict(step: StepName, request: Request, version: VersionQuery = None) -> Response:
    """The digit in an image (a photo, a drawing, or a 28x28 MNIST image); from a kept
    version of the step with `?version=`."""
    started = time.perf_counter()
    # Read straight from the app's state: resolving these two as dependencies, as the other
    # routes do, costs FastAPI about 60 us a request, several percent of a 28x28 prediction.
    models, settings = await get_models(request), await get_settings(request)
    # Before reading the body: a wrong step or version costs nothing.
    model = await loaded_version(step, version, models)
    tracing.annotate(model)
    with tracing.span("read body", model):
        uploads, many = await read_image_request(request, settings)

    def infer(inputs: np.ndarray) -> list[Prediction]:
        with tracing.span("inference", model):
            probabilities = model.predict(inputs)
        return answers(model, probabilities.tolist())

    predictions = await run_on_images(request, uploads, settings, infer, model)
    STEP_PREDICTIONS[model.step].inc(len(predictions))
    # The predictions are ours and valid: FastAPI would validate them again and serialise them
    # through a union's adapter, about 15 us a request (bench/README.md).
    body = PREDICTION_LIST.dump_json(predictions) if many else predictions[0].model_dump_json()
    STEP_LATENCY[model.step].observe(time.perf_counter() - started)
    return Response(body, media_type="application/json")
