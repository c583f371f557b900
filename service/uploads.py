"""Uploads: read a request's image(s), bounded while they stream in, and decode them.

Every route that takes an image (`/predict/{step}` and the ones that grow beside it) reads it
with `read_image_request`, so that the same upload forms, limits and errors hold everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import numpy as np
from fastapi import HTTPException, Request, status
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from service import images, tracing
from service.models import LoadedModel
from service.settings import Settings

T = TypeVar("T")

ACCEPTED = "image/png, image/jpeg, image/gif, image/bmp, image/webp or image/tiff"
HOW_TO_SEND = (
    f"send the image as multipart field 'file', or as the raw body with Content-Type {ACCEPTED}"
)

# The OpenAPI request body of every route that takes images.
IMAGE_SCHEMA = {"type": "string", "format": "binary"}
IMAGE_REQUEST_BODY = {
    "required": True,
    "description": "One image as field `file`; several `file` fields answer a list.",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                # At least one: an empty list is "no image" (422). maxItems is MAX_BATCH, set
                # by `document_limits` when the app starts.
                "properties": {"file": {"type": "array", "items": IMAGE_SCHEMA, "minItems": 1}},
                "required": ["file"],
            }
        },
        "image/png": {"schema": IMAGE_SCHEMA},
        "image/jpeg": {"schema": IMAGE_SCHEMA},
    },
}


def document_limits(settings: Settings) -> None:
    """Put the limits this process enforces into IMAGE_REQUEST_BODY, before FastAPI first
    builds the OpenAPI schema from it (at the first /openapi.json or /docs)."""
    multipart = IMAGE_REQUEST_BODY["content"]["multipart/form-data"]["schema"]  # type: ignore[index]
    multipart["properties"]["file"]["maxItems"] = settings.max_batch


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


async def read_image_request(
    request: Request, settings: Settings
) -> tuple[list[tuple[str, bytes]], bool]:
    """Every image of a request, bounded by MAX_UPLOAD_BYTES, and whether it was multipart with
    several `file` fields (then the answer is a list)."""
    request = limit_body(request, settings.max_upload_bytes)
    uploads = await read_uploads(request, settings)
    if uploads is None:
        return [("body", await request.body())], False
    return uploads, len(uploads) > 1


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


# An MNIST-sized digit takes less time to decode, preprocess and predict (a fraction of a
# millisecond) than the trip to a worker thread and back, so small images are answered on the
# event loop. Larger ones, up to photos of MAX_IMAGE_PIXELS (tens of ms), go to the thread pool,
# so that the loop keeps serving other requests meanwhile. Small files have their headers read
# on the loop to tell which; large files go to the pool whole.
INLINE_BYTES = 16_384  # all of a request's files together: a 28x28 PNG is about 300 bytes
INLINE_PIXELS = 64 * 64  # all of a request's images together


async def run_on_images(
    request: Request,
    uploads: list[tuple[str, bytes]],
    settings: Settings,
    work: Callable[[np.ndarray], T],
    model: LoadedModel | None = None,
    inline: bool = True,
) -> T:
    """Decode and preprocess `uploads` into the models' input [N,1,28,28], then `work(inputs)`:
    on the event loop for small images, else both in a worker thread (decoding and
    onnxruntime release the GIL, so photos use every core). `inline=False` sends even small
    images to the thread: for work that takes milliseconds whatever the image (every step's
    model in turn, or an explanation's batch), which would stall the loop. `model`: the one
    the work runs, named by the trace's `decode and preprocess` span (service/tracing.py)."""
    max_pixels, cpu = settings.max_image_pixels, request.app.state.cpu

    def opened_then_work(opened: list[tuple[str, Image.Image]]) -> T:
        with tracing.span("decode and preprocess", model):
            inputs = preprocess_all(opened, max_pixels)
        return work(inputs)

    def all_then_work() -> T:
        with tracing.span("decode and preprocess", model):
            inputs = preprocess_all(open_uploads(uploads, max_pixels), max_pixels)
        return work(inputs)

    if inline and sum(len(data) for _, data in uploads) <= INLINE_BYTES:
        with tracing.span("decode and preprocess", model):
            opened = open_uploads(uploads, max_pixels)
            small = sum(image.width * image.height for _, image in opened) <= INLINE_PIXELS
            inputs = preprocess_all(opened, max_pixels) if small else None
        if inputs is not None:
            return work(inputs)
        # Few bytes, many pixels: decoded in the pool (a second span: the header was read here).
        return await anyio.to_thread.run_sync(opened_then_work, opened, limiter=cpu)
    return await anyio.to_thread.run_sync(all_then_work, limiter=cpu)
