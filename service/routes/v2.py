"""The Open Inference Protocol (KServe v2, as Triton speaks it) over the same models: `/v2/...`.

For users who already have a Triton or KServe client (`tritonclient`, KServe's own) and send
tensors rather than images: each step is a model named by its slug (or number, or `best`, as
everywhere in this service), with one input and one output:

    image          FP32 [-1, 1, 28, 28]   normalised as in training (what the service makes of an
                                          upload: `service.images.preprocess`)
    probabilities  FP32 [-1, 10]          per digit 0-9

Data is row-major, nested or flat, in the JSON body or in Triton's binary tensor extension (a
JSON header of `Inference-Header-Content-Length` bytes followed by the raw little-endian tensor,
what tritonclient sends by default). A request body may be gzip- or deflate-compressed.

Shared with the rest of the service: step lookup (`common.loaded`), MAX_UPLOAD_BYTES (counted as
the body streams in, and again after decompression) and MAX_BATCH (images per request), the CPU
limiter, and the prediction metrics. What is the protocol's own: errors are `{"error": "..."}`,
and status codes are the ones Triton answers for each kind of error:

    400  a malformed request: JSON, input name, datatype, shape, data; MAX_BATCH exceeded
    401  no valid API key, where keys are configured (service/auth.py)
    404  an unknown model (step) or a version the volume does not keep
    413  a body over MAX_UPLOAD_BYTES
    415  a Content-Encoding other than gzip or deflate
    503  a known model that is not available: a step the trainer has not published yet, or a
         kept version that cannot be loaded

Every kept version of a step can be asked for (`/v2/models/{name}/versions/{version}/...`), as
Triton serves numbered versions side by side: one other than the current one is loaded on
demand and held (PINNED_VERSIONS, service/models.py).

The health endpoints answer true with 200 and false with 400, as the protocol's "4xx means
false" and Triton do (an unknown model is 404, also false).
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import tracing
from service.common import get_models, get_settings, loaded_version, train_hint
from service.models import LoadedModel, ModelRegistry
from service.telemetry import STEP_LATENCY, STEP_PREDICTIONS
from service.uploads import limit_body
from volume import IMAGE_SIZE, INPUT_NAME, NUM_CLASSES, OUTPUT_NAME
from volume.versions import kept_names

PLATFORM = "onnx_onnxv1"  # Triton's name for an ONNX model
DATATYPE = "FP32"
INPUT_SHAPE = [-1, 1, IMAGE_SIZE, IMAGE_SIZE]
OUTPUT_SHAPE = [-1, NUM_CLASSES]
PIXELS = IMAGE_SIZE * IMAGE_SIZE
HEADER_LENGTH = "Inference-Header-Content-Length"  # Triton's binary tensor data extension
EXTENSIONS = ["binary_tensor_data"]
# A JSON image is about 8-16 KB. Parsing a few of them and running the model takes less than the
# trip to a worker thread; a large batch (tens of ms of JSON parsing) goes to the thread pool,
# under the CPU limiter, so that the event loop keeps serving other requests meanwhile.
INLINE_BYTES = 64 * 1024


class ProtocolRoute(APIRoute):
    """Errors the protocol's way, `{"error": "..."}`, instead of FastAPI's `{"detail": ...}`.

    Only the routes of this router: the rest of the API keeps FastAPI's convention.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except StarletteHTTPException as e:
                return error(e.status_code, str(e.detail))
            except RequestValidationError as e:  # a path or query parameter FastAPI refused
                first = e.errors()[0]
                return error(400, f"{'.'.join(map(str, first['loc']))}: {first['msg']}")

        return route


router = APIRouter(prefix="/v2", route_class=ProtocolRoute, tags=["Open Inference Protocol"])


def error(code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=code)


def bad(message: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, message)


# --- schemas: the protocol's JSON objects ------------------------------------------------


class ErrorResponse(BaseModel):
    error: str = Field(examples=["unknown step 'x': use one of setup, ..., or 'best'"])


class ServerMetadata(BaseModel):
    name: str = Field(examples=["mnist-steps"])
    version: str = Field(examples=["0.1.0"])
    extensions: list[str] = Field(examples=[EXTENSIONS])


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str = Field(examples=["gap"])
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a dimension of any size: the batch")


class ModelMetadata(BaseModel):
    name: str = Field(examples=["gap"])
    versions: list[str] = Field(
        description="the versions that can be asked for: every kept one, oldest first",
        examples=[["20261125T161300.123456Z-3f2a9c1b"]],
    )
    platform: str = Field(examples=[PLATFORM])
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = {}
    # Nested or flat numbers; absent when the tensor comes as binary data after the JSON.
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] = {}


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] = {}
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[float] | None = None


class InferenceResponse(BaseModel):
    model_name: str = Field(examples=["gap"])
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    meaning = {
        400: "malformed request (or, for a health endpoint: false)",
        404: "unknown model or version",
        413: "body over MAX_UPLOAD_BYTES",
        415: "unsupported Content-Encoding",
        503: "the model or version is not loaded",
    }
    return {c: {"model": ErrorResponse, "description": meaning[c]} for c in codes}


# --- which model: the step and, if named, its version --------------------------------------


async def model_for(name: str, version: str | None, models: ModelRegistry) -> LoadedModel:
    """The model serving step `name`, or its kept version `version`; 404 / 503 as
    `common.loaded_version` (a version the volume does not keep is 404)."""
    return await loaded_version(name, version, models)


def metadata(model: LoadedModel, root: Path) -> ModelMetadata:
    return ModelMetadata(
        name=model.step,
        versions=kept_names(root, model.step) or [model.version],
        platform=PLATFORM,
        inputs=[TensorMetadata(name=INPUT_NAME, datatype=DATATYPE, shape=INPUT_SHAPE)],
        outputs=[TensorMetadata(name=OUTPUT_NAME, datatype=DATATYPE, shape=OUTPUT_SHAPE)],
    )


async def readiness(name: str, version: str | None, models: ModelRegistry) -> ModelReady:
    """200 when the model (and version) can infer now; 400 when not, 404 when unknown."""
    try:
        model = await model_for(name, version, models)
    except HTTPException as e:
        if e.status_code == status.HTTP_404_NOT_FOUND:
            raise
        raise bad(f"not ready: {e.detail}") from None
    return ModelReady(name=model.step, ready=True)


# --- health and metadata ------------------------------------------------------------------


@router.get("")
async def server_metadata(request: Request) -> ServerMetadata:
    """Server metadata: its name, version and protocol extensions."""
    return ServerMetadata(name="mnist-steps", version=request.app.version, extensions=EXTENSIONS)


@router.get("/health/live")
async def server_live() -> Live:
    """Server live: the process answers (as `/healthz`)."""
    return Live(live=True)


@router.get("/health/ready", responses=errors(400))
async def server_ready(request: Request) -> Ready:
    """Server ready: a step's model is loaded (as `/readyz`); the others answer 503 until the
    trainer publishes them."""
    models = await get_models(request)
    if not models.models:
        settings = await get_settings(request)
        raise bad(f"not ready: no model is published in {settings.models_dir} yet; {train_hint()}")
    return Ready(ready=True)


@router.get("/models/{name}/ready", responses=errors(400, 404))
async def model_ready(name: str, request: Request) -> ModelReady:
    """Model ready: the step's current version is loaded."""
    return await readiness(name, None, await get_models(request))


@router.get("/models/{name}/versions/{version}/ready", responses=errors(400, 404))
async def model_version_ready(name: str, version: str, request: Request) -> ModelReady:
    """Model version ready: that kept version is loaded (loading it now if it was not)."""
    return await readiness(name, version, await get_models(request))


@router.get("/models/{name}", responses=errors(404, 503))
async def model_metadata(name: str, request: Request) -> ModelMetadata:
    """Model metadata: platform, versions, the input and output tensors."""
    models = await get_models(request)
    return metadata(await model_for(name, None, models), models.root)


@router.get("/models/{name}/versions/{version}", responses=errors(404, 503))
async def model_version_metadata(name: str, version: str, request: Request) -> ModelMetadata:
    """Model version metadata."""
    models = await get_models(request)
    return metadata(await model_for(name, version, models), models.root)


# --- inference ----------------------------------------------------------------------------


def decompress(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """A gzip or deflate (zlib) body, inflated to at most `max_bytes`: a small bomb stays small."""
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or no encoding",
        )
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as e:
        raise bad(f"the body is not valid {encoding} data ({e})") from None
    if len(data) > max_bytes:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the body inflates to more than {max_bytes:,} bytes; send fewer images at once",
        )
    if not inflater.eof:
        raise bad(f"the {encoding} body is cut short; send all of it")
    return data


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data after it (empty without the extension)."""
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise bad(
            f"{HEADER_LENGTH} {header_length!r} is not a length within the body's {len(body)} bytes"
        )
    return body[: int(header_length)], body[int(header_length) :]


def parse_request(header: bytes) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate_json(header)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"])) or "the body"
        raise bad(
            f"not an inference request ({where}: {first['msg']}); send JSON "
            f'{{"inputs": [{{"name": "{INPUT_NAME}", "datatype": "{DATATYPE}", '
            f'"shape": [N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}], "data": [...]}}]}}'
        ) from None


def input_tensor(request: InferenceRequest, binary: bytes, max_batch: int) -> np.ndarray:
    """The `image` input as float32 [N,1,28,28], checked against the model's metadata."""
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
        names = [i.name for i in request.inputs]
        raise bad(f"the model takes one input, {INPUT_NAME!r}; the request has {names}")
    tensor = request.inputs[0]
    if tensor.datatype != DATATYPE:
        raise bad(f"input {INPUT_NAME!r} is {DATATYPE}, not {tensor.datatype!r}")
    shape = tensor.shape
    if len(shape) != 4 or shape[1:] != INPUT_SHAPE[1:] or shape[0] < 1:
        raise bad(
            f"input {INPUT_NAME!r} has shape [N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}] with N >= 1, "
            f"not {shape}"
        )
    if shape[0] > max_batch:
        raise bad(f"{shape[0]} images in one request; send at most MAX_BATCH={max_batch}")
    if "shared_memory_region" in tensor.parameters:
        raise bad("shared memory is not supported; send the data in the request body")
    count = math.prod(shape)
    size = tensor.parameters.get("binary_data_size")
    if size is not None:
        if size != count * 4 or len(binary) != size:
            raise bad(
                f"binary_data_size is {size} and {len(binary)} bytes follow the JSON; "
                f"{shape} FP32 is {count * 4} bytes"
            )
        return np.frombuffer(binary, "<f4").reshape(shape).astype(np.float32, copy=False)
    if binary:
        raise bad(f"{len(binary)} bytes follow the JSON, but no input has binary_data_size")
    if tensor.data is None:
        raise bad(f"input {INPUT_NAME!r} has no data")
    try:
        array = np.asarray(tensor.data)
    except ValueError:  # ragged lists
        raise bad(f"input {INPUT_NAME!r}: data is not a regular array of {shape}") from None
    # Numbers only: numpy would turn strings like "0.5" into floats, and True into 1.
    if array.dtype.kind not in "fiu":
        kind = {"U": "strings", "b": "booleans"}.get(array.dtype.kind, "values of mixed types")
        raise bad(f"input {INPUT_NAME!r}: data holds {kind}, not only numbers")
    if array.shape not in ((count,), tuple(shape)):
        raise bad(
            f"input {INPUT_NAME!r}: data of shape {list(array.shape)} is neither {shape} "
            f"nested nor {count} values flat"
        )
    images = array.reshape(shape).astype(np.float32)
    if not np.isfinite(images).all():
        raise bad(f"input {INPUT_NAME!r}: data holds NaN or infinity")
    return images


def wants_binary(request: InferenceRequest) -> bool:
    """Whether `probabilities` goes back as binary data: per output, else for the request."""
    default = bool(request.parameters.get("binary_data_output", False))
    if request.outputs is None:
        return default
    names = [o.name for o in request.outputs]
    if names != [OUTPUT_NAME]:
        raise bad(f"the model has one output, {OUTPUT_NAME!r}; the request asks for {names}")
    return bool(request.outputs[0].parameters.get("binary_data", default))


def infer_response(
    model: LoadedModel, request: InferenceRequest, probabilities: np.ndarray, binary: bool
) -> Response:
    output: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": DATATYPE}
    output["shape"] = list(probabilities.shape)
    answer: dict[str, Any] = {"model_name": model.step, "model_version": model.version}
    if request.id is not None:
        answer["id"] = request.id
    answer["outputs"] = [output]
    if not binary:
        output["data"] = probabilities.ravel().tolist()
        return Response(json.dumps(answer), media_type="application/json")
    data = probabilities.astype("<f4").tobytes()
    output["parameters"] = {"binary_data_size": len(data)}
    header = json.dumps(answer).encode()
    return Response(
        header + data,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


def run(
    model: LoadedModel, body: bytes, header_length: str | None, max_batch: int
) -> tuple[Response, int]:
    """Parse, check, infer and answer, and the number of images: plain CPU work, on the event
    loop or in a worker thread."""
    with tracing.span("decode and preprocess", model):
        header, binary = split_body(body, header_length)
        request = parse_request(header)
        images = input_tensor(request, binary, max_batch)
        binary_out = wants_binary(request)
    with tracing.span("inference", model):
        probabilities = model.predict(images)
    return infer_response(model, request, probabilities, binary_out), len(images)


# The models the hand-written body below refers to: service/openapi.py puts them into the
# document's components, where its $ref points.
BODY_MODELS = (InferenceRequest,)
INFER_BODY = {
    "required": True,
    "description": "JSON; or with Triton's binary tensor extension, the JSON header "
    f"({HEADER_LENGTH} bytes) then the raw tensors, as application/octet-stream",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


async def infer(name: str, version: str | None, request: Request) -> Response:
    started = time.perf_counter()
    models, settings = await get_models(request), await get_settings(request)
    # Before reading the body: a wrong model costs nothing.
    model = await model_for(name, version, models)
    tracing.annotate(model)
    with tracing.span("read body", model):
        body = await limit_body(request, settings.max_upload_bytes).body()
        encoding = request.headers.get("content-encoding", "").strip().lower()
        body = decompress(body, encoding, settings.max_upload_bytes)
    header_length = request.headers.get(HEADER_LENGTH)
    if len(body) <= INLINE_BYTES:
        answer, images = run(model, body, header_length, settings.max_batch)
    else:
        answer, images = await anyio.to_thread.run_sync(
            run, model, body, header_length, settings.max_batch, limiter=request.app.state.cpu
        )
    # Successful inferences only, as on /predict: a 4xx raised above counts nothing.
    STEP_PREDICTIONS[model.step].inc(images)
    STEP_LATENCY[model.step].observe(time.perf_counter() - started)
    return answer


@router.post(
    "/models/{name}/infer",
    response_model=InferenceResponse,
    responses=errors(400, 404, 413, 415, 503),
    openapi_extra={"requestBody": INFER_BODY},
)
async def model_infer(name: str, request: Request) -> Response:
    """Inference: `image` FP32 [N,1,28,28] in, `probabilities` FP32 [N,10] out."""
    return await infer(name, None, request)


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferenceResponse,
    responses=errors(400, 404, 413, 415, 503),
    openapi_extra={"requestBody": INFER_BODY},
)
async def model_version_infer(name: str, version: str, request: Request) -> Response:
    """Inference on a kept version of the step (loaded on demand)."""
    return await infer(name, version, request)
