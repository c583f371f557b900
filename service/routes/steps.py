"""`GET /steps`, each step's kept versions, and its summary and metrics, as the trainer
published them."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field

from service.common import (
    ErrorDetail,
    ModelsDep,
    StepName,
    errors,
    loaded,
    resolve,
    train_command,
    train_hint,
)
from volume import STEPS, Metrics, Mistakes, Samples, Summary
from volume.versions import KeptVersion, kept_versions

router = APIRouter()


class StepStatus(BaseModel):
    number: int = Field(examples=[6])
    slug: str = Field(examples=["gap"])
    title: str = Field(examples=["GAP"])
    trained: bool
    version: str | None = Field(examples=["20261125T161300.123456Z-3f2a9c1b"])
    params: int | None = Field(examples=[9490])
    best_test_accuracy: float | None = Field(description="percent", examples=[99.1])
    mistakes: bool = Field(
        description="whether its version recorded its test mistakes (`/steps/{step}/mistakes`)"
    )
    train_command: str = Field(
        description="the command that trains and publishes it",
        examples=["python -m trainer run --steps gap"],
    )


@router.get("/steps", responses=errors(503))
def list_steps(models: ModelsDep) -> list[StepStatus]:
    """Every step of the design, trained or not."""
    answer = []
    for info in STEPS:
        model = models.get(info.slug)
        answer.append(
            StepStatus(
                number=info.number,
                slug=info.slug,
                title=info.title,
                trained=model is not None,
                version=model.version if model else None,
                params=model.metrics.params if model else None,
                best_test_accuracy=model.metrics.best_test_accuracy if model else None,
                mistakes=model is not None and model.mistakes is not None,
                train_command=train_command(info.slug),
            )
        )
    return answer


class StepVersions(BaseModel):
    step: str = Field(examples=["gap"])
    serving: str | None = Field(
        description="the version a request without `?version=` gets now: the index's current "
        "one, within POLL_SECONDS of its change; null while none is loaded",
        examples=["20261125T161300.123456Z-3f2a9c1b"],
    )
    versions: list[KeptVersion] = Field(
        description="every version the volume keeps, oldest first: each can be asked for with "
        "`?version=` (`python -m trainer rollback` makes one current)"
    )


@router.get("/steps/{step}", responses=errors(404, 503))
def step_versions(step: StepName, models: ModelsDep) -> StepVersions:
    """The step's kept versions with their accuracy, and which one is current."""
    slug = resolve(step, models)
    versions = kept_versions(models.root, slug)  # read from the volume: files, in the pool
    if not versions:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"step {slug!r} is not trained yet: the volume keeps no version of it; "
            f"{train_hint(slug)}",
        )
    current = models.get(slug)
    return StepVersions(step=slug, serving=current.version if current else None, versions=versions)


@router.get(
    "/steps/{step}/summary",
    response_model=Summary,
    responses={
        **errors(404, 503),
        200: {"content": {"text/plain": {"example": "----------------\n  Layer (type) ..."}}},
    },
)
def step_summary(
    step: StepName, models: ModelsDep, format: Literal["json", "text"] = "json"
) -> Summary | Response:
    """The layer table, parameter totals and sizes; `?format=text` gives the seed's table."""
    summary = loaded(step, models).summary
    return PlainTextResponse(summary.text) if format == "text" else summary


@router.get("/steps/{step}/metrics", responses=errors(404, 503))
def step_metrics(step: StepName, models: ModelsDep) -> Metrics:
    """Every epoch's train/test loss and accuracy, learning rate and time; the best epoch."""
    return loaded(step, models).metrics


@router.get(
    "/steps/{step}/mistakes",
    responses={
        **errors(503),
        404: {
            "model": ErrorDetail,
            "description": "unknown step, or a version published before mistakes were recorded",
        },
    },
)
def step_mistakes(step: StepName, models: ModelsDep) -> Mistakes:
    """The step's confusion matrix on the test set at its best epoch, and up to 100 of the test
    digits it got wrong (pixels, true label, answer), the most confident first."""
    model = loaded(step, models)
    if model.mistakes is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"step {model.step!r} version {model.version} was published before mistakes were "
            f"recorded; re-export it with `python -m trainer export {model.step}`",
        )
    return model.mistakes


@router.get("/samples")
def samples(models: ModelsDep) -> Samples:
    """A fixed set of MNIST test digits (the first two of each class) to try the steps on;
    empty when no published version carries them."""
    for info in STEPS:
        model = models.get(info.slug)
        if model is not None and model.samples is not None:
            return model.samples
    return Samples(digits=[])
