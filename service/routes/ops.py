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


@router.get("/healthz")
def healthz() -> Health:
    """Liveness: the process answers."""
    return Health()


@router.get("/readyz", responses={503: {"model": ErrorDetail, "description": "no model loaded"}})
def readyz(models: ModelsDep, settings: SettingsDep) -> Readiness:
    """Readiness: at least one step's model is loaded."""
    if not models.models:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"not ready: no model is published in {settings.models_dir} yet; {train_hint()}",
        )
    return Readiness(ready=True, steps=list(models.models))


@router.get("/metrics", response_class=PlainTextResponse)
def metrics() -> Response:
    """Prometheus metrics: predictions and latency per step, plus the process's own (with one
    worker; with several, `python -m service` adds up their predictions and latencies)."""
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
