"""Reading the volume (the service's side, and the trainer's when it resumes or reports).

A reader never sees half a version (volume/publishing.py publishes atomically), but it still
checks what it reads: the model's sha256 against the index, every JSON file against its schema.
Whatever does not check out raises one VolumeError that names the file and what to do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from volume.layout import (
    INDEX_FILE,
    METRICS_FILE,
    MISTAKES_FILE,
    MODEL_FILE,
    SAMPLES_FILE,
    SCHEMA_VERSION,
    SUMMARY_FILE,
    VolumeError,
    version_folder,
)
from volume.schemas import Index, IndexEntry, Metrics, Mistakes, Samples, Summary, _Schema


def _load_optional(path: Path, schema: type[_Schema]) -> Any:
    """A file a version may lack (OPTIONAL_FILES): None when absent; a damaged one raises,
    as a damaged required file does, since the trainer writes all of a version's files."""
    return _load_json(path, schema) if path.exists() else None


def _load_json(path: Path, schema: type[_Schema]) -> Any:
    try:
        return schema.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise VolumeError(
            f"{path}: missing; republish the step with `python -m trainer export`"
        ) from None
    except (ValidationError, ValueError) as e:
        first = str(e).splitlines()[0]
        raise VolumeError(f"{path}: not a valid {schema.__name__} file ({first})") from None


def read_index(root: Path) -> Index:
    """The index, or an empty one where nothing was published yet."""
    path = Path(root) / INDEX_FILE
    if not path.exists():
        return Index()
    index: Index = _load_json(path, Index)
    if index.schema_version != SCHEMA_VERSION:
        raise VolumeError(
            f"{path}: schema version {index.schema_version}, expected {SCHEMA_VERSION}"
        )
    return index


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class PublishedVersion:
    step: str
    version: str
    folder: Path
    summary: Summary
    metrics: Metrics
    model_bytes: bytes  # read once and checked against the index, so what was checked is what runs
    mistakes: Mistakes | None = None  # None: published before mistakes.json existed
    samples: Samples | None = None  # None: published before samples.json existed

    @property
    def model_path(self) -> Path:
        return self.folder / MODEL_FILE


def read_version(root: Path, step: str, entry: IndexEntry) -> PublishedVersion:
    """Load and check one published version; raise VolumeError naming the first bad file."""
    folder = version_folder(root, step, entry.version)
    model_path = folder / MODEL_FILE
    try:
        model_bytes = model_path.read_bytes()
    except FileNotFoundError:
        raise VolumeError(
            f"{model_path}: missing; republish the step with `python -m trainer export {step}`"
        ) from None
    if hashlib.sha256(model_bytes).hexdigest() != entry.model_sha256:
        raise VolumeError(f"{model_path}: sha256 does not match {INDEX_FILE}; the file is corrupt")
    summary: Summary = _load_json(folder / SUMMARY_FILE, Summary)
    metrics: Metrics = _load_json(folder / METRICS_FILE, Metrics)
    mistakes: Mistakes | None = _load_optional(folder / MISTAKES_FILE, Mistakes)
    samples: Samples | None = _load_optional(folder / SAMPLES_FILE, Samples)
    if (
        summary.step != step
        or metrics.step != step
        or (mistakes is not None and mistakes.step != step)
    ):
        raise VolumeError(f"{folder}: files describe step {metrics.step!r}, not {step!r}")
    return PublishedVersion(
        step, entry.version, folder, summary, metrics, model_bytes, mistakes, samples
    )


def read_current(root: Path, step: str, attempts: int = 3) -> PublishedVersion | None:
    """The current version of ``step`` (None if unpublished), loaded and checked.

    A version can be pruned between reading the index and reading its files when a writer
    publishes twice in that moment; then the index has moved on, and reading it again is right.
    A file missing from the version the index still names is damage, and raises VolumeError.
    """
    for attempt in range(attempts):
        entry = read_index(root).steps.get(step)
        if entry is None:
            return None
        try:
            return read_version(root, step, entry)
        except VolumeError:
            if attempt == attempts - 1 or read_index(root).steps.get(step) == entry:
                raise
    raise AssertionError("unreachable")


def list_versions(root: Path, step: str) -> list[str]:
    folder = Path(root) / step
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir())
