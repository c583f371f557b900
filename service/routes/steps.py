"""`GET /steps` and each step's summary and metrics, as the trainer published them."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field

from service.common import ModelsDep, StepName, errors, loaded
from volume import STEPS, Metrics, Summary

router = APIRouter()


class StepStatus(BaseModel):
    number: int = Field(examples=[6])
    slug: str = Field(examples=["gap"])
    title: str = Field(examples=["GAP"])
    trained: bool
    version: str | None = Field(examples=["20261125T161300.123456Z-3f2a9c1b"])
    params: int | None = Field(examples=[9490])
    best_test_accuracy: float | None = Field(description="percent", examples=[99.1])


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
            )
        )
    return answer


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
