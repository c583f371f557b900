"""Training progress on the model volume: what a trainer is doing now, for anyone to read.

While a step trains, the trainer keeps ``progress/<step>.json`` up to date (atomically, so a
reader never sees half a file): the epochs done with their metrics, the fraction of the epoch in
hand, when it started and its estimate of when it ends. The service only reads these files (the
lab's live view); the trainer is their only writer, as for everything on the volume.

A file's ``state`` says how it ended: ``training`` while it runs, ``published`` once the step's
version is in the index (the file then names it), ``failed`` or ``stopped`` when the run ended
without one. A trainer killed at once (SIGKILL, a lost machine) cannot say so: its file keeps
``training``, and ``is_stale()`` recognises it by its age, since a live trainer rewrites it at
least every ``heartbeat_seconds``, and, on the same host, by its process being gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from volume.publishing import atomic_write_bytes
from volume.schemas import EpochMetrics, _Schema

PROGRESS_DIR = "progress"
PROGRESS_SCHEMA_VERSION = 1
HEARTBEAT_SECONDS = 10.0  # a training trainer rewrites its file at least this often
STALE_AFTER_HEARTBEATS = 6  # silent for this many heartbeats: the writer is gone

ProgressState = Literal["training", "published", "failed", "stopped"]


class StepProgress(_Schema):
    """``progress/<step>.json``: one step's training as it happens."""

    schema_version: int = PROGRESS_SCHEMA_VERSION
    step: str
    state: ProgressState = "training"
    host: str  # the writer's host name and process id, to tell a killed writer on this host
    pid: int
    started_at: str  # ISO 8601, UTC: when this run of the step began (a resumed run: the first)
    updated_at: str  # ISO 8601, UTC: when this file was last written
    heartbeat_seconds: float = HEARTBEAT_SECONDS
    epochs: int  # the epochs the recipe trains
    epoch: int  # the epoch in hand, 1-based (== epochs once the last is done)
    fraction: float  # of the epoch in hand, 0..1
    # The epochs done, as metrics.json will hold them.
    history: list[EpochMetrics] = Field(default_factory=list)
    elapsed_seconds: float  # training time so far (a resumed run counts the runs before it)
    eta_seconds: float | None = None  # the trainer's estimate of the time left; None: not yet
    version: str | None = None  # the published version, once state is "published"
    message: str | None = None  # why it failed or stopped


def progress_path(root: Path, step: str) -> Path:
    return Path(root) / PROGRESS_DIR / f"{step}.json"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def write_progress(root: Path, progress: StepProgress) -> None:
    """Replace the step's progress file atomically (the writer's side)."""
    data = (progress.model_dump_json(indent=1) + "\n").encode()
    atomic_write_bytes(progress_path(root, progress.step), data)


def read_progress(root: Path) -> dict[str, StepProgress]:
    """Every readable progress file on the volume, by step. A file that is not valid (another
    schema version, damage) is left out rather than raised: progress is advisory."""
    folder = Path(root) / PROGRESS_DIR
    found: dict[str, StepProgress] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.json")):
        with contextlib.suppress(OSError, ValidationError, ValueError):
            progress = StepProgress.model_validate_json(path.read_bytes())
            if progress.schema_version == PROGRESS_SCHEMA_VERSION and path.stem == progress.step:
                found[progress.step] = progress
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    return True


def is_stale(progress: StepProgress, now: datetime | None = None) -> bool:
    """True when a file still says ``training`` but its writer is gone: silent for
    STALE_AFTER_HEARTBEATS heartbeats, or (on the writer's host) its process has ended."""
    if progress.state != "training":
        return False
    now = now or datetime.now(UTC)
    age = (now - datetime.fromisoformat(progress.updated_at)).total_seconds()
    if age > STALE_AFTER_HEARTBEATS * progress.heartbeat_seconds:
        return True
    return progress.host == socket.gethostname() and not _pid_alive(progress.pid)
