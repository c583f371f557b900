"""The HTTP service: predictions, per-step metrics and summaries, from the model volume.

Run it with `python -m service` (service/server.py: uvicorn with limits on slow and lying
clients), or `uvicorn service.app:app`; settings come from the environment (service/settings.py).
At start-up it loads every published step from MODELS_DIR and then polls the volume's index,
swapping in new versions as the trainer publishes them. It never imports torch.

The routes live in `service/routes/`, one module per concern; what they share (the app's state
as dependencies, step lookup, upload reading) is in `service/common.py` and `service/uploads.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from PIL import Image

from service import openapi, telemetry, tracing
from service.auth import ApiKeys
from service.limits import RequestLimits
from service.live import LiveFeed, closed_on_exit_signals
from service.models import ModelRegistry
from service.routes import docs, inside, lab, live, ops, predict, steps, v2
from service.settings import Settings, cores_per_worker
from service.uploads import document_limits

log = logging.getLogger(__name__)


def keep_freed_memory() -> bool:
    """Have glibc keep the memory that requests free, for the next request; False if not glibc.

    Preprocessing a photo allocates and frees numpy arrays of hundreds of KB. By default glibc
    maps each such array fresh from the kernel and returns it on free, so every request faults
    its pages in again: a quarter of a 400x400 JPEG's latency here. These are the settings of
    MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_, made here so that every way of running
    the service gets them. The price: the process keeps what it freed; arrays over 64 MiB still
    go back to the kernel. Each malloc arena keeps its own, and glibc makes up to 8 per core for
    the thread pool's threads, so the arenas are capped at one per core (MALLOC_ARENA_MAX):
    bench/soak.py's peak RSS went from 446 MB to 235 MB with it.
    """
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # glibc's <malloc.h>
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl, macOS: their allocators differ; leave them be
        return False
    return (
        bool(mallopt(m_mmap_threshold, 64 << 20))
        and bool(mallopt(m_trim_threshold, 256 << 20))
        and bool(mallopt(m_arena_max, len(os.sched_getaffinity(0))))
    )


async def poll(models: ModelRegistry, feed: LiveFeed, seconds: float) -> None:
    """The one poll of the volume: new versions of the steps, then (for the live pages) the
    trainer's progress and what was swapped in."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await anyio.to_thread.run_sync(models.refresh)
            await feed.update()
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
    models = ModelRegistry(
        settings.models_dir, settings.inference_threads, telemetry.serving,
        pinned=settings.pinned_versions,
    )  # fmt: skip
    await anyio.to_thread.run_sync(models.refresh)
    if not models.models:
        log.warning(
            "no model published in %s yet; not ready until the trainer publishes one",
            settings.models_dir,
        )
    feed = LiveFeed(settings.models_dir, models, settings.max_streams)
    await feed.update()
    app.state.settings = settings
    app.state.models = models
    app.state.live = feed
    app.state.api_keys = tuple(key.get_secret_value().encode() for key in settings.api_keys)
    log.info(
        "API keys: %s",
        f"on ({len(settings.api_keys)} keys)" if settings.api_keys else "off (no key is asked for)",
    )
    document_limits(settings)  # the OpenAPI schema says MAX_BATCH and keys: built after this
    app.openapi_schema = None
    # CPU-bound work beyond the number of cores only queues up and holds decoded images in
    # memory; this caps how many requests decode and infer at once.
    app.state.cpu = anyio.CapacityLimiter(cores_per_worker())
    poller = asyncio.create_task(poll(models, feed, settings.poll_seconds))
    try:
        with closed_on_exit_signals(feed):
            yield
    finally:
        feed.close()
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        await anyio.to_thread.run_sync(tracing.flush)  # the spans still batched (when on)


app = FastAPI(
    title="MNIST step models",
    summary="Predict digits with each step model of the MNIST design, and read its metrics.",
    description=(
        "Steps are addressed by slug (`gap`), 1-based number (`6`) or `best` (the trained step "
        'with the highest test accuracy). Errors are JSON `{"detail": ...}`, except under `/v2`, '
        'the Open Inference Protocol (KServe v2), whose errors are `{"error": ...}`.'
    ),
    version="0.1.0",
    lifespan=lifespan,
    # FastAPI's own pages load Swagger UI and ReDoc from a CDN: /docs is service/routes/docs.py.
    docs_url=None,
    redoc_url=None,
)
# The lab first: its `POST /predict/all` must match before `/predict/{step}` takes "all".
for module in (lab, predict, steps, inside, live, ops, v2, docs):
    app.include_router(module.router)
app.mount("/static", lab.static_files, name="static")
# Body deadlines, requests in flight, responses counted by route and code (service/limits.py).
app.add_middleware(RequestLimits)
# Outside it: a request without a valid key is refused before it takes a place (service/auth.py).
app.add_middleware(ApiKeys)
openapi.complete(app)
if tracing.configured():  # OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER (service/tracing.py)
    tracing.instrument(app)
