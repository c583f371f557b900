"""The service's settings, read once from the environment (or a `.env` file) at start-up."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_KEY_LENGTH = 16
NEW_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class Settings(BaseSettings):
    """Every knob of the service; each one is an environment variable of the same name."""

    # Errors name the setting, never its value: an API key must not reach a log.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)

    models_dir: Path = Field(
        Path("models"), description="MODELS_DIR: the model volume the trainer publishes into"
    )
    max_upload_bytes: int = Field(
        10 * 1024 * 1024,
        gt=0,
        description="MAX_UPLOAD_BYTES: larger request bodies get 413, counted as they stream in",
    )
    # A 24-megapixel phone photo fits; anything larger is refused before it is decoded.
    max_image_pixels: int = Field(
        25_000_000, gt=0, description="MAX_IMAGE_PIXELS: width x height above which 413"
    )
    max_batch: int = Field(64, gt=0, description="MAX_BATCH: most `file` fields in one request")
    poll_seconds: float = Field(
        2.0, gt=0, description="POLL_SECONDS: how often the volume's index is checked"
    )
    # The models are tiny (a few MFLOPs per image), so one thread per inference is enough; the
    # parallelism comes from requests running side by side in the thread pool. onnxruntime's
    # default (one spinning thread per core in every session) would put eight sessions' threads
    # on every core.
    inference_threads: int = Field(
        1, gt=0, description="INFERENCE_THREADS: onnxruntime intra-op threads per session"
    )
    log_level: str = Field("INFO", description="LOG_LEVEL: of the service's own log lines")
    pinned_versions: int = Field(
        8,
        ge=0,
        description="PINNED_VERSIONS: kept versions other than the current ones that are held "
        "loaded for `?version=` (the least recently used is dropped; a pinned request past it "
        "loads its version again)",
    )

    # API keys (service/auth.py): off unless a key is configured, so that a local run stays open.
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description="API_KEYS: comma-separated keys that prediction, explanation, lab and /v2 "
        "routes require; none (the default): no key is asked for",
    )
    api_keys_file: Path | None = Field(
        None,
        description="API_KEYS_FILE: a file of further keys, one a line (`#` starts a comment): "
        "a Docker or Kubernetes secret; read at start-up",
    )

    # Slow, lying and too many clients (service/limits.py, service/server.py). A client that
    # holds a connection costs a file descriptor and a task for as long as it likes, so each
    # phase of a request has a deadline and the number of both is capped.
    header_timeout: float = Field(
        10.0,
        gt=0,
        description="HEADER_TIMEOUT: seconds for a request's headers to arrive, from connect "
        "or from the previous response; then the connection is closed",
    )
    # 30 s takes the largest upload (10 MiB) at 2.8 Mbit/s, a 3 MB phone photo at 0.8 Mbit/s.
    body_timeout: float = Field(
        30.0,
        gt=0,
        description="BODY_TIMEOUT: seconds for the whole body to arrive once the headers have; "
        "then 408 and the connection is closed",
    )
    # nginx's default (large_client_header_buffers 4 8k) allows 32 KiB of request head.
    max_header_bytes: int = Field(
        32 * 1024, gt=0, description="MAX_HEADER_BYTES: a larger request line + headers get 431"
    )
    max_connections: int = Field(
        1000,
        gt=0,
        description="MAX_CONNECTIONS: open connections, per worker of `python -m service`; a "
        "request on one past it gets 503",
    )
    # A request in flight holds up to MAX_UPLOAD_BYTES twice (its body's chunks, then joined),
    # so this bounds what uploads can take: 32 x 2 x 10 MiB = 640 MiB, on top of the ~245 MB
    # that bench/soak.py peaks at (docker-compose.yml's memory limit is sized from both).
    max_requests: int = Field(
        32,
        gt=0,
        description="MAX_REQUESTS: requests in flight (reading, decoding, inferring), per worker "
        "of `python -m service`; past it 503 with Retry-After, except /healthz, /readyz and "
        "/metrics",
    )
    # The lab's live view (service/live.py): each open page holds a stream (a connection, a
    # task and a queue of at most 64 events) for as long as it stays open.
    max_streams: int = Field(
        100,
        gt=0,
        description="MAX_STREAMS: live progress streams open at once (GET /progress/stream), "
        "per worker of `python -m service`; past it 503. They do not count in MAX_REQUESTS",
    )
    keepalive_seconds: float = Field(
        15.0,
        gt=0,
        description="KEEPALIVE_SECONDS: an idle live stream sends a comment this often, so that "
        "proxies (nginx's proxy_read_timeout: 60 s) do not close it",
    )
    retry_after_seconds: int = Field(
        1, ge=0, description="RETRY_AFTER_SECONDS: what a 503 for overload tells clients to wait"
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @model_validator(mode="after")
    def _read_keys_file(self) -> Self:
        """Every key in `api_keys`, the file's too; each long enough to resist guessing. A
        file that is set but unreadable stops the start: serving open by mistake is worse."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            try:
                lines = self.api_keys_file.read_text().splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(
                    f"API_KEYS_FILE {self.api_keys_file} cannot be read ({type(e).__name__}); "
                    "mount the secret there, or unset API_KEYS_FILE to serve without keys"
                ) from None
            keys += [SecretStr(k.strip()) for k in lines if k.strip() and not k.startswith("#")]
        for number, key in enumerate(keys, start=1):
            secret = key.get_secret_value()
            if len(secret) < MIN_KEY_LENGTH or not secret.isascii() or not secret.isprintable():
                raise ValueError(
                    f"API key number {number} is not {MIN_KEY_LENGTH} or more printable ASCII "
                    f"characters; make one with {NEW_KEY}"
                )
        self.api_keys = tuple(keys)
        return self


CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD", or "max PERIOD"


def cpu_count(cpu_max: Path = CPU_MAX) -> int:
    """The cores this process may run on, capped by a cgroup v2 CPU quota (a container's
    `--cpus`, a pod's CPU limit), which affinity does not show."""
    cores = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError):
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return cores


def cores_per_worker() -> int:
    """This worker's share of `cpu_count()` when `python -m service` runs WEB_CONCURRENCY
    workers side by side (it sets that for them): how many decodes it runs at once."""
    workers = int(os.environ.get("WEB_CONCURRENCY") or 1)
    return max(1, cpu_count() // max(1, workers))
