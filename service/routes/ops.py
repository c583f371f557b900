"""What operators and orchestrators ask: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from service.common import ErrorDetail, ModelsDep, SettingsDep, train_hint
from service.telemetry import exposition

router = APIRouter()


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    steps: list[str] = Field(description="the steps with a loaded model", examples=[["gap"]])
    problems: list[str] = Field(
        description="what is wrong with the model volume or a step's current version, while "
        "the models loaded before keep serving",
        examples=[["cannot read the index of the model volume /models: [Errno 13] Permission "
                   "denied: '/models/index.json'; still serving what was loaded (gap)"]],
    )  # fmt: skip


@router.get("/healthz")
def healthz() -> Health:
    """Liveness: the process answers."""
    return Health()


@router.get("/readyz", responses={503: {"model": ErrorDetail, "description": "no model loaded"}})
def readyz(models: ModelsDep, settings: SettingsDep) -> Readiness:
    """Readiness: at least one step's model is loaded; and what is wrong with the volume, if
    anything (ready all the same while loaded models serve: a replica that can answer stays in
    rotation)."""
    problems = models.problems
    if not models.models:
        why = f" ({'; '.join(problems)})" if problems else ""
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"not ready: no model is published in {settings.models_dir} yet{why}; {train_hint()}",
        )
    return Readiness(ready=True, steps=list(models.models), problems=problems)


@router.get("/metrics", response_class=PlainTextResponse)
def metrics() -> Response:
    """Prometheus metrics: predictions and latency per step, plus the process's own (with one
    worker; with several, `python -m service` adds up their predictions and latencies)."""
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
