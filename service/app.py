"""The HTTP service: predictions, per-step metrics and summaries, from the model volume.

Run it with `uvicorn service.app:app`; settings come from the environment (service/settings.py).
At start-up it loads every published step from MODELS_DIR and then polls the volume's index,
swapping in new versions as the trainer publishes them. It never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import anyio
import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import PlainTextResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field, TypeAdapter
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from service import images
from service.models import LoadedModel, ModelRegistry
from service.settings import Settings
from volume import STEPS, Metrics, Summary, UnknownStepError, resolve_step

log = logging.getLogger(__name__)

PREDICTIONS = Counter("mnist_predictions_total", "Images predicted, per step", ["step"])
LATENCY = Histogram(
    "mnist_predict_seconds",
    "Time to answer a successful /predict request (read, decode, infer), per step",
    ["step"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
# Every step's series exists from the start, so rate() sees its first one; bound once here, as
# `labels()` per request would look each one up again under a lock.
STEP_PREDICTIONS = {s.slug: PREDICTIONS.labels(s.slug) for s in STEPS}
STEP_LATENCY = {s.slug: LATENCY.labels(s.slug) for s in STEPS}


def train_hint(steps: str = "all") -> str:
    return f"run `python -m trainer run --steps {steps}` to publish it into MODELS_DIR"


ACCEPTED = "image/png, image/jpeg, image/gif, image/bmp, image/webp or image/tiff"
HOW_TO_SEND = (
    f"send the image as multipart field 'file', or as the raw body with Content-Type {ACCEPTED}"
)


# --- Start-up: load the models, then poll for new versions ------------------------------


def keep_freed_memory() -> bool:
    """Have glibc keep the memory that requests free, for the next request; False if not glibc.

    Preprocessing a photo allocates and frees numpy arrays of hundreds of KB. By default glibc
    maps each such array fresh from the kernel and returns it on free, so every request faults
    its pages in again: a quarter of a 400x400 JPEG's latency here. These are the settings of
    MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_, made here so that every way of running
    the service gets them. The price: the process keeps what it freed (a few MB after a load
    of photos); arrays over 64 MiB still go back to the kernel.
    """
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl, macOS: their allocators differ; leave them be
        return False
    return bool(mallopt(m_mmap_threshold, 64 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))


async def poll(models: ModelRegistry, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await anyio.to_thread.run_sync(models.refresh)
        except Exception:  # a bug here must not end polling for the life of the process
            log.exception("polling the model volume failed; trying again in %ss", seconds)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s:     %(name)s %(message)s")
    # Pillow only warns past MAX_IMAGE_PIXELS (and refuses at twice it): a warning is logged and
    # the bomb decoded anyway, so make it an error, at the same cap as `images.open_image`'s own.
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    keep_freed_memory()
    models = ModelRegistry(settings.models_dir, settings.inference_threads)
    await anyio.to_thread.run_sync(models.refresh)
    if not models.models:
        log.warning(
            "no model published in %s yet; not ready until the trainer publishes one",
            settings.models_dir,
        )
    app.state.settings = settings
    app.state.models = models
    # CPU-bound work beyond the number of cores only queues up and holds decoded images in
    # memory; this caps how many requests decode and infer at once.
    app.state.cpu = anyio.CapacityLimiter(len(os.sched_getaffinity(0)))
    poller = asyncio.create_task(poll(models, settings.poll_seconds))
    try:
        yield
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller


app = FastAPI(
    title="MNIST step models",
    summary="Predict digits with each step model of the MNIST design, and read its metrics.",
    description=(
        "Steps are addressed by slug (`gap`), 1-based number (`6`) or `best` (the trained step "
        'with the highest test accuracy). Errors are JSON `{"detail": ...}`.'
    ),
    version="0.1.0",
    lifespan=lifespan,
)


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


# --- Response models -----------------------------------------------------------------------


class ErrorDetail(BaseModel):
    detail: str = Field(examples=["unknown step 'x': use one of setup, ..., or 'best'"])


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


class StepStatus(BaseModel):
    number: int = Field(examples=[6])
    slug: str = Field(examples=["gap"])
    title: str = Field(examples=["GAP"])
    trained: bool
    version: str | None = Field(examples=["20261125T161300.123456Z-3f2a9c1b"])
    params: int | None = Field(examples=[9490])
    best_test_accuracy: float | None = Field(description="percent", examples=[99.1])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    steps: list[str] = Field(description="the steps with a loaded model", examples=[["gap"]])


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give."""
    meaning = {
        400: "a malformed multipart body, or more `file` fields than MAX_BATCH",
        404: "unknown step",
        413: "upload or image too large",
        415: "not an image type",
        422: "no image, or bytes that do not decode as an image, or no digit in it",
        503: "the step is known but the trainer has not published it yet",
    }
    return {code: {"model": ErrorDetail, "description": meaning[code]} for code in codes}


# --- Steps: which one a path names, and its model ---------------------------------------


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


# --- Uploads: bounded while they stream in ----------------------------------------------


def limit_body(request: Request, max_bytes: int) -> Request:
    """The same request, whose body raises 413 as soon as more than `max_bytes` have arrived.

    uvicorn accepts bodies of any size: a declared Content-Length is checked before a byte is
    read, and a chunked body's bytes are counted as they stream in, before anything is
    buffered or parsed.
    """
    too_large = HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"the upload is larger than {max_bytes:,} bytes; send a smaller image",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        if int(declared) > max_bytes:
            raise too_large
        # The server delivers exactly Content-Length bytes (more would be the next request).
        return request
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > max_bytes:
            raise too_large
        return message

    return Request(request.scope, receive)


async def read_uploads(request: Request, settings: Settings) -> list[tuple[str, bytes]] | None:
    """(name, bytes) of each `file` field of a multipart body, or None for a raw image body."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "multipart/form-data":
        if media_type.startswith("image/"):
            return None
        if not media_type and not await request.body():
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"no image: {HOW_TO_SEND}")
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type {media_type or 'missing'!r} is not an image type: {HOW_TO_SEND}",
        )
    uploads = []
    try:
        # The context closes the form's temporary files, however the request ends.
        async with request.form(
            max_files=settings.max_batch, max_fields=settings.max_batch
        ) as form:
            for number, field in enumerate(form.getlist("file"), start=1):
                if not isinstance(field, UploadFile):
                    raise HTTPException(
                        status.HTTP_422_UNPROCESSABLE_CONTENT,
                        f"field 'file' number {number} is text, not a file; {HOW_TO_SEND}",
                    )
                kind = (field.content_type or "").lower()
                if kind and not kind.startswith("image/") and kind != "application/octet-stream":
                    raise HTTPException(
                        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                        f"file {field.filename!r} has type {kind!r}, not an image type; "
                        f"{HOW_TO_SEND}",
                    )
                uploads.append((field.filename or f"file {number}", await field.read()))
    except StarletteHTTPException as e:
        if e.status_code != status.HTTP_400_BAD_REQUEST:  # our own 413, 415, 422 go as they are
            raise
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"malformed multipart body ({e.detail}); {HOW_TO_SEND} "
            f"(at most {settings.max_batch} files)",
        ) from None
    if not uploads:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"no image: the multipart body has no field 'file'; {HOW_TO_SEND}",
        )
    return uploads


# An MNIST-sized digit takes less time to decode, preprocess and predict (a fraction of a
# millisecond) than the trip to a worker thread and back, so small images are answered on the
# event loop. Larger ones, up to photos of MAX_IMAGE_PIXELS (tens of ms), go to the thread pool,
# so that the loop keeps serving other requests meanwhile. Small files have their headers read
# on the loop to tell which; large files go to the pool whole.
INLINE_BYTES = 16_384  # all of a request's files together: a 28x28 PNG is about 300 bytes
INLINE_PIXELS = 64 * 64  # all of a request's images together


def image_http_error(error: images.ImageError, where: str) -> HTTPException:
    code = (
        status.HTTP_413_CONTENT_TOO_LARGE
        if isinstance(error, images.ImageTooLarge)
        else status.HTTP_422_UNPROCESSABLE_CONTENT
    )
    return HTTPException(code, f"{where}{error}")


def open_uploads(
    uploads: list[tuple[str, bytes]], max_pixels: int
) -> list[tuple[str, Image.Image]]:
    """Each upload with its header read (`images.open_image`), or 413 / 422.

    Each comes with the start of its error messages: its name, when the batch has several.
    """
    opened = []
    for name, data in uploads:
        where = f"{name!r}: " if len(uploads) > 1 else ""
        if not data:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, f"{where}the image is empty; {HOW_TO_SEND}"
            )
        try:
            opened.append((where, images.open_image(data, max_pixels)))
        except images.ImageError as e:
            raise image_http_error(e, where) from None
    return opened


def preprocess_all(opened: list[tuple[str, Image.Image]], max_pixels: int) -> np.ndarray:
    """Decode and preprocess every opened upload: the model's input [N,1,28,28], or 413 / 422."""
    tensors = []
    for where, image in opened:
        try:
            tensors.append(images.preprocess_image(image, max_pixels))
        except images.ImageError as e:
            raise image_http_error(e, where) from None
    return np.stack(tensors) if len(tensors) > 1 else tensors[0][None]


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


def predict_opened(
    model: LoadedModel, opened: list[tuple[str, Image.Image]], max_pixels: int
) -> list[Prediction]:
    """Decode and preprocess every opened upload, then run them through the model as one batch."""
    return answers(model, model.predict(preprocess_all(opened, max_pixels)).tolist())


def predict_batch(
    model: LoadedModel, uploads: list[tuple[str, bytes]], max_pixels: int
) -> list[Prediction]:
    """Open, decode and preprocess every upload, then run them through the model as one batch."""
    return predict_opened(model, open_uploads(uploads, max_pixels), max_pixels)


# --- Routes ----------------------------------------------------------------------------------

IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}


# What /predict answers several files with, serialised in one call.
PREDICTION_LIST = TypeAdapter(list[Prediction])


@app.post(
    "/predict/{step}",
    response_model=Prediction | list[Prediction],
    responses=errors(400, 404, 413, 415, 422, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "One image as field `file`; several `file` fields answer a list.",
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "array", "items": IMAGE_BODY["schema"]}},
                        "required": ["file"],
                    }
                },
                "image/png": IMAGE_BODY,
                "image/jpeg": IMAGE_BODY,
            },
        }
    },
)
async def predict(step: str, request: Request) -> Response:
    """The digit in an image (a photo, a drawing, or a 28x28 MNIST image)."""
    started = time.perf_counter()
    # Read straight from the app's state: resolving these two as dependencies, as the other
    # routes do, costs FastAPI about 60 us a request, several percent of a 28x28 prediction.
    models, settings = await get_models(request), await get_settings(request)
    model = loaded(step, models)  # before reading the body: a wrong step costs nothing
    request = limit_body(request, settings.max_upload_bytes)
    uploads = await read_uploads(request, settings)
    batch = uploads if uploads is not None else [("body", await request.body())]
    max_pixels, cpu = settings.max_image_pixels, request.app.state.cpu
    if sum(len(data) for _, data in batch) <= INLINE_BYTES:
        opened = open_uploads(batch, max_pixels)
        if sum(image.width * image.height for _, image in opened) <= INLINE_PIXELS:
            predictions = predict_opened(model, opened, max_pixels)
        else:
            predictions = await anyio.to_thread.run_sync(
                predict_opened, model, opened, max_pixels, limiter=cpu
            )
    else:
        predictions = await anyio.to_thread.run_sync(
            predict_batch, model, batch, max_pixels, limiter=cpu
        )
    STEP_PREDICTIONS[model.step].inc(len(predictions))
    # The predictions are ours and valid: FastAPI would validate them again and serialise them
    # through a union's adapter, about 15 us a request (bench/README.md).
    if uploads is not None and len(uploads) > 1:
        body = PREDICTION_LIST.dump_json(predictions)
    else:
        body = predictions[0].model_dump_json().encode()
    STEP_LATENCY[model.step].observe(time.perf_counter() - started)
    return Response(body, media_type="application/json")


@app.get("/steps")
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


@app.get(
    "/steps/{step}/summary",
    response_model=Summary,
    responses={
        **errors(404, 503),
        200: {"content": {"text/plain": {"example": "----------------\n  Layer (type) ..."}}},
    },
)
def step_summary(
    step: str, models: ModelsDep, format: Literal["json", "text"] = "json"
) -> Summary | Response:
    """The layer table, parameter totals and sizes; `?format=text` gives the seed's table."""
    summary = loaded(step, models).summary
    return PlainTextResponse(summary.text) if format == "text" else summary


@app.get("/steps/{step}/metrics", responses=errors(404, 503))
def step_metrics(step: str, models: ModelsDep) -> Metrics:
    """Every epoch's train/test loss and accuracy, learning rate and time; the best epoch."""
    return loaded(step, models).metrics


@app.get("/healthz")
def healthz() -> Health:
    """Liveness: the process answers."""
    return Health()


@app.get("/readyz", responses={503: {"model": ErrorDetail, "description": "no model loaded"}})
def readyz(models: ModelsDep, settings: SettingsDep) -> Readiness:
    """Readiness: at least one step's model is loaded."""
    if not models.models:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"not ready: no model is published in {settings.models_dir} yet; {train_hint()}",
        )
    return Readiness(ready=True, steps=list(models.models))


@app.get("/metrics", response_class=PlainTextResponse)
def metrics() -> Response:
    """Prometheus metrics: predictions and latency per step, plus the process's own."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
