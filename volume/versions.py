"""The kept versions of a step: listing them, pinning one, making one current again.

`publish` keeps the newest versions of each step (``--keep``, 3 by default) and the index names
the current one. This module is what both sides need of the others:

- `kept_versions`: each kept version with its accuracy (the service's `GET /steps/{step}`).
- `read_kept`: one kept version, loaded and checked (the service's `?version=`).
- `make_current`: name a kept version in the index, atomically under the writer lock as
  `publish` does (`python -m trainer rollback`); the service follows within POLL_SECONDS.
- `Promotion`: whether a new run becomes current. A run that tests worse than the version being
  served is published and kept, but not made current unless promoted: an ML server's users
  should not lose a better model silently. `publish` asks it under the writer lock, so that two
  runs of a step publishing at once compare against each other too.

The index holds the sha256 of the current version's model only; a kept version's folder name
ends with the first 8 hex digits of its model's sha256 (`new_version_name`), which is checked
instead before a kept version is served or made current.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from volume import (
    INDEX_FILE,
    METRICS_FILE,
    MODEL_FILE,
    STAGING_DIR,
    STEP_SLUGS,
    Index,
    IndexEntry,
    Metrics,
    PublishedVersion,
    VolumeError,
    atomic_write_bytes,
    list_versions,
    read_index,
    read_version,
    version_folder,
    writer_lock,
)
from volume.publishing import _dump
from volume.reading import _load_json

# What `new_version_name` makes: UTC time to the microsecond, then the model's sha256 prefix.
VERSION_PATTERN = r"^\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}$"
_VERSION = re.compile(VERSION_PATTERN)


class UnknownVersionError(KeyError):
    """A version that the volume does not keep for the step; the message names the kept ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class KeptVersion(BaseModel):
    """One kept version of a step, as `GET /steps/{step}` lists it."""

    version: str = Field(examples=["20261125T161300.123456Z-3f2a9c1b"])
    published_at: str = Field(description="UTC, from the version's name")
    current: bool = Field(description="the version the index names: what a request without "
                          "`?version=` gets")  # fmt: skip
    best_test_accuracy: float | None = Field(
        description="percent; null when its metrics.json cannot be read", examples=[99.41]
    )
    best_epoch: int | None = Field(examples=[14])
    params: int | None = Field(examples=[7_864])


def published_at(version: str) -> str:
    """The UTC time a version was published, from its name (ISO 8601)."""
    stamp = datetime.strptime(version.split("-", 1)[0], "%Y%m%dT%H%M%S.%fZ")
    return stamp.replace(tzinfo=UTC).isoformat()


def kept_names(root: Path, step: str) -> list[str]:
    """The names of the kept versions of `step`, oldest first."""
    return [v for v in list_versions(root, step) if _VERSION.match(v)]


def kept_versions(root: Path, step: str) -> list[KeptVersion]:
    """Every kept version of `step`, oldest first, with the accuracy its metrics record."""
    current = read_index(root).steps.get(step)
    kept = []
    for version in kept_names(root, step):
        try:
            metrics: Metrics | None = _load_json(
                version_folder(root, step, version) / METRICS_FILE, Metrics
            )
        except (VolumeError, OSError):
            metrics = None
        kept.append(
            KeptVersion(
                version=version,
                published_at=published_at(version),
                current=current is not None and current.version == version,
                best_test_accuracy=metrics.best_test_accuracy if metrics else None,
                best_epoch=metrics.best_epoch if metrics else None,
                params=metrics.params if metrics else None,
            )
        )
    return kept


def unknown_version(root: Path, step: str, version: str) -> UnknownVersionError:
    names = ", ".join(kept_names(root, step)) or "none"
    return UnknownVersionError(
        f"step {step!r} has no kept version {version!r}; the volume keeps: {names}"
    )


def kept_entry(root: Path, step: str, version: str) -> IndexEntry:
    """An index entry for a kept version, its model checked against the version's name."""
    # Only names the volume lists: a version is never a path (`../x`) into the file system.
    if version not in kept_names(root, step):
        raise unknown_version(root, step, version)
    current = read_index(root).steps.get(step)
    if current is not None and current.version == version:
        return current
    model = version_folder(root, step, version) / MODEL_FILE
    try:
        sha = hashlib.sha256(model.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise unknown_version(root, step, version) from None  # pruned a moment ago
    if not version.endswith(f"-{sha[:8]}"):
        raise VolumeError(f"{model}: sha256 does not match its version's name; the file is corrupt")
    return IndexEntry(version=version, published_at=published_at(version), model_sha256=sha)


def read_kept(root: Path, step: str, version: str) -> PublishedVersion:
    """A kept version of `step`, loaded and checked; UnknownVersionError if it is not kept."""
    return read_version(root, step, kept_entry(root, step, version))


def previous_version(root: Path, step: str) -> str:
    """The newest kept version older than the current one: what a rollback goes back to."""
    current = read_index(root).steps.get(step)
    if current is None:
        raise VolumeError(f"step {step!r} is not published; there is nothing to roll back")
    older = [v for v in kept_names(root, step) if v < current.version]
    if not older:
        raise VolumeError(
            f"step {step!r} keeps no version older than the current one ({current.version}); "
            "name the version to make current"
        )
    return older[-1]


def make_current(root: Path, step: str, version: str) -> str | None:
    """Make a kept version of `step` the current one; return the version it replaces.

    Under the writer lock, with the index swapped in by `os.replace`, as `publish` does: a
    reader sees the old index or the new one, and the version's files were checked first.
    """
    root = Path(root)
    with writer_lock(root):
        entry = kept_entry(root, step, version)
        read_version(root, step, entry)  # every file of it readable and valid, or raise
        index = read_index(root)
        before = index.steps.get(step)
        steps = dict(index.steps) | {step: entry}
        ordered = {s: steps[s] for s in STEP_SLUGS if s in steps}
        staging = root / STAGING_DIR  # where `clean_staging` finds what a killed writer left
        staging.mkdir(exist_ok=True)
        atomic_write_bytes(root / INDEX_FILE, _dump(Index(steps=ordered)), tmp_dir=staging)
    return before.version if before else None


@dataclass
class Promotion:
    """Whether a new version of `step` becomes current: `publish(make_current=...)` asks it
    under the writer lock. It does unless it tests worse than the current version, or when
    `force` (`--promote`). After publishing, `message` says which, for the log."""

    root: Path
    step: str
    accuracy: float  # the new version's best test accuracy, percent
    force: bool = False
    current: str | None = None  # the version served when publish asked
    current_accuracy: float | None = None
    promoted: bool | None = None  # None: not asked yet

    def __call__(self) -> bool:
        entry = read_index(self.root).steps.get(self.step)
        self.current = entry.version if entry else None
        self.promoted = True
        if entry is not None:
            try:
                path = version_folder(self.root, self.step, entry.version) / METRICS_FILE
                metrics: Metrics = _load_json(path, Metrics)
                self.current_accuracy = metrics.best_test_accuracy
            except (VolumeError, OSError):
                return True  # a current version that cannot be read is no better
            self.promoted = self.force or self.accuracy >= self.current_accuracy
        return self.promoted

    def message(self, version: str) -> str:
        """What happened to `version` (published with this decision), for the log."""
        if self.current is None or self.current_accuracy is None:
            return f"{self.step} {version} is current"
        compared = f"{self.accuracy:.2f}% against {self.current_accuracy:.2f}% of {self.current}"
        if self.promoted and self.accuracy < self.current_accuracy:
            return (
                f"{self.step} {version} is current, promoted although it tests worse ({compared})"
            )
        if self.promoted:
            return f"{self.step} {version} is current ({compared})"
        return (
            f"{self.step} {version} is kept but NOT current: it tests worse ({compared}), which "
            f"stays current; serve it with `python -m trainer rollback {self.step} {version}`, "
            "or train with --promote"
        )
