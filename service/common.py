"""What every group of routes shares: the app's state as dependencies, step lookup, errors.

A route names a step by slug, 1-based number or `best`; `loaded` turns that into the model
serving it, or into the 404 / 503 that says what to do; `loaded_version` does the same for a
kept version that a request pins (`?version=`).
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import Depends, HTTPException, Path, Query, Request, status
from pydantic import BaseModel, Field

from service.models import LoadedModel, ModelRegistry
from service.settings import Settings
from volume import (
    STEP_NAME_PATTERN,
    STEP_SLUGS,
    STEPS,
    UnknownStepError,
    VolumeError,
    resolve_step,
)
from volume.versions import VERSION_PATTERN, UnknownVersionError


def train_command(steps: str = "all") -> str:
    """The command that trains and publishes `steps` (what the page shows an untrained step)."""
    return f"python -m trainer run --steps {steps}"


def train_hint(steps: str = "all") -> str:
    return f"run `{train_command(steps)}` to publish it into MODELS_DIR"


# Dependencies are coroutines: FastAPI runs a plain `def` dependency in the thread pool, a
# thread hop per dependency per request for what is an attribute lookup.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_models(request: Request) -> ModelRegistry:
    models: ModelRegistry = request.app.state.models
    return models


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelsDep = Annotated[ModelRegistry, Depends(get_models)]

# The `{step}` of every route that names one. The pattern documents exactly the names
# `resolve_step` accepts, so that clients and fuzzers send real ones; it is documentation only
# (`json_schema_extra`, not `pattern=`): an unknown name is the API's 404, not FastAPI's 422.
StepName = Annotated[
    str,
    Path(
        description=f"a slug ({', '.join(STEP_SLUGS)}), a number 1-{len(STEPS)}, or `best` "
        "(the trained step with the highest test accuracy); any case",
        examples=["gap", "6", "best"],
        json_schema_extra={"pattern": STEP_NAME_PATTERN},
    ),
]


# `?version=`: documented by its pattern, as `StepName` is; an unknown one is the API's 404.
VersionQuery = Annotated[
    str | None,
    Query(
        description="a kept version of the step to answer from (`GET /steps/{step}` lists "
        "them); default: the current one",
        examples=["20261125T161300.123456Z-3f2a9c1b"],
        json_schema_extra={"pattern": VERSION_PATTERN},
    ),
]


class ErrorDetail(BaseModel):
    detail: str = Field(examples=["unknown step 'x': use one of setup, ..., or 'best'"])


class ParameterErrors(BaseModel):
    """FastAPI's own 422, for a query parameter outside its declared range."""

    detail: list[dict[str, Any]] = Field(
        examples=[
            [
                {
                    "loc": ["query", "channels"],
                    "msg": "Input should be greater than or equal to 1",
                    "type": "greater_than_equal",
                }
            ]
        ]
    )


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give."""
    meaning = {
        400: "a malformed multipart body, or more `file` fields than MAX_BATCH",
        404: "unknown step, or a version the volume does not keep",
        408: "the request body did not arrive within BODY_TIMEOUT seconds",
        413: "upload or image too large",
        415: "not an image type",
        422: "no image, or bytes that do not decode as an image, or no digit in it",
        503: "the step is known but the trainer has not published it yet; or the service is "
        "answering MAX_REQUESTS requests already (then with Retry-After)",
    }
    return {code: {"model": ErrorDetail, "description": meaning[code]} for code in codes}


def resolve(step: str, models: ModelRegistry) -> str:
    """The slug `step` names, or 404; `best` with nothing trained is 503."""
    try:
        return resolve_step(step, models.best_accuracy())
    except UnknownStepError as e:
        if step.strip().lower() == "best":
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, f"no step is trained yet; {train_hint()}"
            ) from None
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(e)) from None


def loaded(step: str, models: ModelRegistry) -> LoadedModel:
    """The model currently serving `step`, or 404 / 503."""
    slug = resolve(step, models)
    model = models.get(slug)
    if model is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"step {slug!r} is not trained yet: the trainer has not published it; "
            f"{train_hint(slug)}",
        )
    return model


async def loaded_version(step: str, version: str | None, models: ModelRegistry) -> LoadedModel:
    """The model serving `step`, or its kept version `version` (loaded on demand, off the
    event loop, then held); 404 / 503 as `loaded`, 404 for a version the volume does not keep
    (the detail names the kept ones), 503 for a kept one that cannot be loaded."""
    model = loaded(step, models)
    if version is None:
        return model
    pinned = models.held(model.step, version)
    if pinned is not None:
        return pinned
    try:
        return await anyio.to_thread.run_sync(models.load_pinned, model.step, version)
    except UnknownVersionError as e:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(e)) from None
    except VolumeError as e:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"{e}; ask for another version (`GET /steps/{model.step}` lists them)",
        ) from None
