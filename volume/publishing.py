"""Publishing into the volume (the trainer is the only writer).

Publishing is atomic: a version is built under ``.staging/`` on the same file system, fsynced,
then renamed into place; the index is rewritten to a temporary file and swapped in with
``os.replace``. A reader that sees a version in the index therefore sees all of its files, and a
writer killed at any moment leaves the previously published versions serving. Writers take
turns under an exclusive lock on ``.lock``, so several trainers may publish into one volume.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from volume.layout import (
    INDEX_FILE,
    LOCK_FILE,
    METRICS_FILE,
    MISTAKES_FILE,
    MODEL_FILE,
    SAMPLES_FILE,
    STAGING_DIR,
    SUMMARY_FILE,
    VolumeError,
    version_folder,
)
from volume.reading import list_versions, read_index
from volume.schemas import Index, IndexEntry, Metrics, Mistakes, Samples, Summary
from volume.steps import STEP_SLUGS, STEPS_BY_SLUG, UnknownStepError


@contextlib.contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """Serialise writers: a second trainer waits here instead of racing on the index."""
    Path(root).mkdir(parents=True, exist_ok=True)
    with open(Path(root) / LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The temporary file goes to ``tmp_dir`` (same file system), by default beside ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; the service may be another user
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _dump(model: BaseModel) -> bytes:
    return (model.model_dump_json(indent=2) + "\n").encode()


def new_version_name(model_sha256: str, now: datetime | None = None) -> str:
    """Sortable by time, unique by content: ``20261125T161300.123456Z-3f2a9c1b``."""
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{model_sha256[:8]}"


def publish(
    root: Path,
    step: str,
    model_onnx: bytes,
    summary: Summary,
    metrics: Metrics,
    keep: int = 3,
    mistakes: Mistakes | None = None,
    samples: Samples | None = None,
    make_current: bool | Callable[[], bool] = True,
) -> str:
    """Publish a new immutable version of ``step`` and make it current; return its name.

    Older versions beyond ``keep`` are removed, never the current one. ``mistakes`` and
    ``samples`` are optional files of the version (OPTIONAL_FILES). On a full disk it raises
    one VolumeError naming the volume and the bytes needed, and leaves nothing of the attempt.
    ``make_current``: False, or a callable answering False, publishes and keeps the version
    without naming it in the index (a step with no current version gets it all the same). The
    callable is asked under the writer lock, so that it sees the index as it will be replaced
    (volume/versions.py's `Promotion`: a new run that tests worse than the one served).
    """
    if step not in STEPS_BY_SLUG:
        raise UnknownStepError(f"unknown step {step!r}")
    if keep < 1:
        raise ValueError("keep must be at least 1")
    root = Path(root)
    model_sha = hashlib.sha256(model_onnx).hexdigest()
    files = [
        (MODEL_FILE, model_onnx),
        (SUMMARY_FILE, _dump(summary)),
        (METRICS_FILE, _dump(metrics)),
    ]
    files += [(MISTAKES_FILE, _dump(mistakes))] if mistakes is not None else []
    files += [(SAMPLES_FILE, _dump(samples))] if samples is not None else []
    needed = sum(len(data) for _, data in files) + 4096  # and the index, rewritten
    with writer_lock(root), space_needed(root, f"publishing {step}", needed):
        clean_staging(root)  # a killed writer's leftovers would take the space this needs
        staging = root / STAGING_DIR
        staging.mkdir(exist_ok=True)
        build = Path(tempfile.mkdtemp(dir=staging, prefix=f"{step}-"))
        try:
            for name, data in files:
                with open(build / name, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            os.chmod(build, 0o755)  # mkdtemp makes 0700; the service may run as another user
            _fsync_dir(build)
            version = new_version_name(model_sha)
            final = version_folder(root, step, version)
            final.parent.mkdir(exist_ok=True)
            os.rename(build, final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        try:
            index = read_index(root)
            current = index.steps.get(step)
            promote = make_current() if callable(make_current) else make_current
            if current is not None and not promote:
                # Kept beside the current one: it is the newest, so pruning spares it.
                _prune(root, step, keep=max(keep, 2), current=current.version)
                clean_staging(root)
                return version
            entry = IndexEntry(
                version=version, published_at=datetime.now(UTC).isoformat(), model_sha256=model_sha
            )
            steps = dict(index.steps) | {step: entry}
            ordered = {s: steps[s] for s in STEP_SLUGS if s in steps}
            # The temporary index lives in staging, so what a killed writer leaves is cleaned.
            atomic_write_bytes(root / INDEX_FILE, _dump(Index(steps=ordered)), tmp_dir=staging)
        except BaseException:
            # Complete but never named by the index: no reader will look at it; free its space.
            with contextlib.suppress(Exception):
                named = read_index(root).steps.get(step)
                if named is None or named.version != version:
                    shutil.rmtree(final, ignore_errors=True)
            raise
        _prune(root, step, keep=keep, current=version)
        clean_staging(root)
    return version


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def space_needed(root: Path, what: str, needed: int) -> Iterator[None]:
    """Turn a full disk under ``root`` into one VolumeError that says what needed how much."""
    try:
        yield
    except OSError as e:
        if e.errno not in NO_SPACE:
            raise
        try:
            free = f"{shutil.disk_usage(root).free:,} bytes are free"
        except OSError:
            free = "its free space is unknown"
        raise VolumeError(
            f"no space left on the model volume {root}: {what} needs about {needed:,} bytes and "
            f"{free}; free some space there (or publish fewer versions: --keep) and run again. "
            "The versions published before are untouched and still served"
        ) from None


def _prune(root: Path, step: str, keep: int, current: str) -> None:
    old = [v for v in list_versions(root, step) if v != current]
    for version in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(version_folder(root, step, version), ignore_errors=True)


def clean_staging(root: Path) -> None:
    """Remove what a killed writer left half-built. Call only while holding the writer lock."""
    staging = Path(root) / STAGING_DIR
    if staging.is_dir():
        for leftover in staging.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
