"""Inside a step: `POST /inside/{step}` (every layer's output for one image),
`GET /inside/{step}/weights` (its learned weights) and `GET /inside/{step}/diff` (what changed
from another step). The computing is in `service/inside.py`; the upload takes the forms, limits
and errors of `/predict/{step}`, one image at a time.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from service import inside
from service.common import (
    ErrorDetail,
    ModelsDep,
    ParameterErrors,
    StepName,
    VersionQuery,
    errors,
    get_models,
    get_settings,
    loaded,
    loaded_version,
)
from service.models import LoadedModel
from service.routes.lab import ONE_IMAGE_BODY, read_one_image, seen
from service.routes.predict import Prediction, answers
from service.telemetry import STEP_PREDICTIONS
from service.uploads import run_on_images
from volume import STEP_NAME_PATTERN, STEPS, STEPS_BY_SLUG, encode_pixels

router = APIRouter()


class InsideAnswer(BaseModel):
    prediction: Prediction
    input: str = Field(
        description="base64 of the 28x28 grey levels the model saw (0 black .. 255 ink), row "
        "by row: the upload after preprocessing"
    )
    layers: list[inside.LayerOutput] = Field(description="in the order of the layer table")


def with_inside(model: LoadedModel) -> inside.InsideModel:
    """The model's inside view, or 503 saying why this version has none."""
    if model.inside is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"step {model.step!r} version {model.version} has no inside view: "
            f"{model.inside_problem}; re-export it with `python -m trainer export {model.step}`",
        )
    return model.inside


@router.post(
    "/inside/{step}",
    responses={
        **errors(400, 413, 415, 503),
        404: {"model": ErrorDetail, "description": "unknown step, or no `layer` of that name"},
        422: {
            "model": ErrorDetail | ParameterErrors,
            "description": "no image, or bytes that do not decode as an image, or no digit in "
            "it; or `channels` out of its range (FastAPI's list of parameter errors)",
        },
    },
    openapi_extra={"requestBody": ONE_IMAGE_BODY},
)
async def look_inside(
    step: StepName,
    request: Request,
    channels: Annotated[
        int,
        Query(
            ge=1,
            le=inside.MAX_CHANNELS,
            description="channel tiles per layer, the first ones (a layer of features is "
            "always whole)",
        ),
    ] = inside.DEFAULT_CHANNELS,
    layer: Annotated[
        str | None,
        Query(
            description="only this layer of the table, by name (its tiles even for Dropout)",
            examples=["Conv2d-1"],
            json_schema_extra={"pattern": "^[A-Za-z0-9]+-[0-9]+$"},
        ),
    ] = None,
    version: VersionQuery = None,
) -> InsideAnswer:
    """Every layer's output for one image, in the order of the step's layer table, as
    quantised channel tiles with the layer's range, mean and share of zeros; and the
    prediction of the same run."""
    model = await loaded_version(step, version, await get_models(request))
    view = with_inside(model)
    names = [x.row.name for x in view.layers]
    if layer is not None and layer not in names:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"step {model.step!r} has no layer {layer!r}: use one of {', '.join(names)}",
        )
    uploads = await read_one_image(request)

    def looked(inputs: np.ndarray) -> InsideAnswer:
        probabilities, layers = inside.layer_outputs(view, inputs[:1], channels, layer)
        grey = np.asarray(seen(inputs[0]), np.uint8)
        return InsideAnswer(
            prediction=answers(model, [probabilities.tolist()])[0],
            input=encode_pixels(grey.tobytes()),
            layers=layers,
        )

    # Off the loop: the first two steps take tens of milliseconds for one image.
    answer = await run_on_images(
        request, uploads, await get_settings(request), looked, inline=False
    )
    STEP_PREDICTIONS[model.step].inc()
    return answer


@router.get("/inside/{step}/weights", responses=errors(404, 503))
def weights(step: StepName, models: ModelsDep) -> inside.StepWeights:
    """The first convolution's kernels as tiles, and every layer's weight statistics, as the
    served graph holds them (a BatchNorm folded into its convolution shows as one)."""
    model = loaded(step, models)
    return inside.weight_stats(with_inside(model), model.step, model.version)


@router.get(
    "/inside/{step}/diff",
    responses={
        **errors(503),
        404: {
            "model": ErrorDetail,
            "description": "unknown step, or the first step compared with the one before it",
        },
    },
)
def diff(
    step: StepName,
    models: ModelsDep,
    before: Annotated[
        str | None,
        Query(
            description="the step to compare with (slug, number or `best`); default: the step "
            "before this one",
            examples=["lighter"],
            json_schema_extra={"pattern": STEP_NAME_PATTERN},
        ),
    ] = None,
) -> inside.StepDiff:
    """What changed from another step: the layer tables side by side (added, removed,
    resized), the parameters per layer, and the recipe fields that differ, from both steps'
    published summary and metrics."""
    after = loaded(step, models)
    if before is None:
        number = STEPS_BY_SLUG[after.step].number
        if number == 1:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"{after.step} is the first step: name the step to compare it with in "
                f"?before=, e.g. ?before={STEPS[1].slug}",
            )
        before = STEPS[number - 2].slug
    earlier = loaded(before, models)
    return inside.diff((earlier.summary, earlier.metrics), (after.summary, after.metrics))
