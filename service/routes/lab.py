"""The lab: the page (`GET /`, static files under `/static`), and the two routes it draws on,
`POST /predict/all` (every step answers one image) and `POST /explain/{step}` (a step's
occlusion-sensitivity map). Both take the upload forms, limits and errors of `/predict/{step}`,
one image at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from service import explain as occlusion
from service.common import (
    VersionQuery,
    errors,
    get_models,
    get_settings,
    loaded_version,
    train_hint,
)
from service.routes.predict import Prediction, answers
from service.telemetry import STEP_PREDICTIONS
from service.uploads import ACCEPTED, IMAGE_SCHEMA, read_image_request, run_on_images
from volume import IMAGE_SIZE, MNIST_MEAN, MNIST_STD, STEPS

router = APIRouter()

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


class RevalidatedFiles(StaticFiles):
    """Static files the browser checks on every load (`no-cache`: a 304 when unchanged).
    Without it a browser guesses how long they stay fresh from Last-Modified, and could run an
    older release's lab.js against this release's API."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["cache-control"] = "no-cache"
        return response


# Mounted by the app at /static: the page's CSS, JavaScript, the vendored chart library.
static_files = RevalidatedFiles(directory=STATIC_DIR)

ONE_IMAGE_BODY = {
    "required": True,
    "description": f"One image, as multipart field `file` or as the raw body ({ACCEPTED}).",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": IMAGE_SCHEMA},
                "required": ["file"],
            }
        },
        "image/png": {"schema": IMAGE_SCHEMA},
        "image/jpeg": {"schema": IMAGE_SCHEMA},
    },
}

# A "1" as the models see it, for the OpenAPI examples.
EXAMPLE_INPUT = [[255 if 4 <= r < 24 and 13 <= c < 16 else 0 for c in range(28)] for r in range(28)]
EXAMPLE_MAP = [
    [0.12 if 4 <= r < 24 and 12 <= c < 17 else 0.0 for c in range(28)] for r in range(28)
]
INPUT_FIELD = Field(
    description="the 28x28 image the models saw, after preprocessing: grey levels 0..255, "
    "light ink on black, row by row (MNIST's form)",
    examples=[EXAMPLE_INPUT],
)


class AllPredictions(BaseModel):
    input: list[list[int]] = INPUT_FIELD
    predictions: list[Prediction] = Field(
        description="one per trained step, in the steps' order; untrained steps are absent"
    )


class Explanation(BaseModel):
    prediction: Prediction
    input: list[list[int]] = INPUT_FIELD
    sensitivity: list[list[float]] = Field(
        description="28x28, row by row: how much erasing the pixels around each one lowers the "
        "probability of the answered digit (mean over the squares covering it; -1..1). Positive: "
        "the answer rests on this ink; negative: this ink argues against it",
        examples=[EXAMPLE_MAP],
    )
    patch: int = Field(description="side of each erased square, in pixels", examples=[4])
    stride: int = Field(description="pixels between erased squares", examples=[2])
    baseline: float = Field(
        description="the normalised value an erased pixel takes: no ink", examples=[-0.4242]
    )
    occluded: int = Field(description="squares erased and run (those holding ink)", examples=[61])


def seen(model_input: np.ndarray) -> list[list[int]]:
    """A normalised model input [1,28,28] as the grey levels it came from."""
    grey = np.rint((model_input[0] * MNIST_STD + MNIST_MEAN) * 255).clip(0, 255)
    return grey.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE).tolist()


async def read_one_image(request: Request) -> list[tuple[str, bytes]]:
    uploads, many = await read_image_request(request, await get_settings(request))
    if many:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{request.url.path} takes one image and this request has {len(uploads)}; send one "
            "`file` field (several images go to /predict/{step})",
        )
    return uploads


@router.get("/", response_class=HTMLResponse, summary="The lab page")
async def page() -> Response:
    """Draw or upload a digit and every trained step answers side by side, with the journey
    of the design beside it (plain HTML, CSS and JavaScript under `/static`)."""
    return FileResponse(
        STATIC_DIR / "index.html", media_type="text/html", headers={"cache-control": "no-cache"}
    )


@router.post(
    "/predict/all",
    responses=errors(400, 413, 415, 422, 503),
    openapi_extra={"requestBody": ONE_IMAGE_BODY},
)
async def predict_all(request: Request) -> AllPredictions:
    """One image, decoded and preprocessed once, answered by every trained step; with the
    28x28 input the models saw."""
    snapshot = (await get_models(request)).models  # one version of each step for the request
    serving = [snapshot[s.slug] for s in STEPS if s.slug in snapshot]
    if not serving:  # before reading the body: it could not be answered
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"no step is trained yet; {train_hint()}"
        )
    uploads = await read_one_image(request)

    def every_step(inputs: np.ndarray) -> AllPredictions:
        predictions = [answers(m, m.predict(inputs).tolist())[0] for m in serving]
        return AllPredictions(input=seen(inputs[0]), predictions=predictions)

    # Off the loop: the first two steps alone take milliseconds of CPU for one image.
    answer = await run_on_images(
        request, uploads, await get_settings(request), every_step, inline=False
    )
    for model in serving:
        STEP_PREDICTIONS[model.step].inc()
    return answer


@router.post(
    "/explain/{step}",
    responses=errors(400, 404, 413, 415, 422, 503),
    openapi_extra={"requestBody": ONE_IMAGE_BODY},
)
async def explain(step: str, request: Request, version: VersionQuery = None) -> Explanation:
    """The step's prediction for one image and its occlusion-sensitivity map: every 4x4
    square holding ink, every 2 pixels, erased in turn and run in one batch (see
    `service/explain.py`); a kept version of the step with `?version=`."""
    model = await loaded_version(step, version, await get_models(request))
    uploads = await read_one_image(request)

    def explained(inputs: np.ndarray) -> Explanation:
        result = occlusion.occlusion(model.predict, inputs[0])
        return Explanation(
            prediction=answers(model, [result.probabilities.tolist()])[0],
            input=seen(inputs[0]),
            sensitivity=np.round(result.map, 4).tolist(),
            patch=occlusion.PATCH,
            stride=occlusion.STRIDE,
            baseline=round(occlusion.BASELINE, 4),
            occluded=result.occluded,
        )

    answer = await run_on_images(
        request, uploads, await get_settings(request), explained, inline=False
    )
    STEP_PREDICTIONS[model.step].inc()
    return answer
