"""The service's settings, read once from the environment (or a `.env` file) at start-up."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service; each one is an environment variable of the same name."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

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
    # default (one spinning thread per core in every session) would put seven sessions' threads
    # on every core.
    inference_threads: int = Field(
        1, gt=0, description="INFERENCE_THREADS: onnxruntime intra-op threads per session"
    )
    log_level: str = Field("INFO", description="LOG_LEVEL: of the service's own log lines")
