"""The model volume: the only contract between the trainer (writer) and the service (reader).

This module imports no torch and no FastAPI, so both sides can depend on it.

Layout of ``MODELS_DIR``::

    MODELS_DIR/
      index.json                   # names the current version of every published step
      .lock                        # writers hold an exclusive flock on it while publishing
      .staging/                    # versions being built; never read by the service
      checkpoints/<step>.pt        # the trainer's best checkpoint per step (for `trainer export`)
      checkpoints/<step>.resume.pt # its state after the last completed epoch (for `run --resume`)
      progress/<step>.json         # StepProgress (volume/progress.py): a step's training, live
      <step>/<version>/            # one immutable published version
        model.onnx                 #   "image" float32 [N,1,28,28] -> "probabilities" [N,10]
        summary.json               #   Summary: the layer table, totals, sizes, the seed-style text
        metrics.json               #   Metrics: every epoch, the best epoch, recipe, provenance
        mistakes.json              #   Mistakes (optional): confusion matrix, wrong test digits
        samples.json               #   Samples (optional): a fixed set of MNIST test digits

The two optional files came later: versions published before them load without them, and the
service then answers without what they hold.

Publishing is atomic: a version is built under ``.staging/`` on the same file system, fsynced,
then renamed into place; the index is rewritten to a temporary file and swapped in with
``os.replace``. A reader that sees a version in the index therefore sees all of its files, and a
writer killed at any moment leaves the previously published versions serving.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 1

INDEX_FILE = "index.json"
LOCK_FILE = ".lock"
STAGING_DIR = ".staging"
CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.onnx"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.json"
VERSION_FILES = (MODEL_FILE, SUMMARY_FILE, METRICS_FILE)
MISTAKES_FILE = "mistakes.json"
SAMPLES_FILE = "samples.json"
OPTIONAL_FILES = (MISTAKES_FILE, SAMPLES_FILE)  # absent from versions published before them
MAX_MISTAKES = 100  # wrong test digits kept per version, the most confident first

# The ONNX graph's tensor names and the input normalisation both sides must agree on.
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
IMAGE_SIZE = 28
NUM_CLASSES = 10
MNIST_MEAN = 0.1307  # mean pixel of the MNIST training set, on the 0..1 scale
MNIST_STD = 0.3081  # its standard deviation


@dataclass(frozen=True)
class StepInfo:
    """A step of the assignment, as both sides know it before anything is trained."""

    slug: str
    title: str  # the seed's heading

    @property
    def number(self) -> int:
        return STEP_SLUGS.index(self.slug) + 1


# The seed's steps, in its order. The trainer registers a model under each slug.
STEPS: tuple[StepInfo, ...] = (
    StepInfo("setup", "First Step - Initial Step"),
    StepInfo("skeleton", "Basic Model Skeleton"),
    StepInfo("lighter", "Lighter Model"),
    StepInfo("batchnorm", "With BatchNorm"),
    StepInfo("dropout", "With Dropout"),
    StepInfo("gap", "GAP"),
    StepInfo("scheduler", "With Learning rate Scheduler"),
    StepInfo("tiny", "Beyond the Assignment: Under 4,000 Parameters"),
)
STEP_SLUGS: tuple[str, ...] = tuple(s.slug for s in STEPS)
# The assignment's final model (tiny goes beyond it): what the benchmarks serve and time.
FINAL_STEP = "scheduler"
# The seed's steps, up to its final one; the steps after it (`tiny`) go beyond the assignment.
ASSIGNMENT_SLUGS: tuple[str, ...] = STEP_SLUGS[: STEP_SLUGS.index(FINAL_STEP) + 1]
STEPS_BY_SLUG: dict[str, StepInfo] = {s.slug: s for s in STEPS}


class VolumeError(Exception):
    """The volume holds something a reader cannot trust; the message names the file."""


class UnknownStepError(KeyError):
    """A step name that is neither a slug, a 1-based number, nor ``best``."""

    def __str__(self) -> str:
        return str(self.args[0])


def resolve_step(name: str, best_accuracy: Mapping[str, float] | None = None) -> str:
    """Turn a slug, a 1-based number or ``best`` into a slug.

    ASCII only, any case, with spaces around it allowed: exactly what ``STEP_NAME_PATTERN``
    matches. ``best`` needs ``best_accuracy`` (slug -> best test accuracy of the trained
    steps); it names the trained step with the highest one, the earlier step on a tie.
    """
    key = name.strip(" ").lower() if name.isascii() else ""
    if key in STEPS_BY_SLUG:
        return key
    if key.isdigit() and 1 <= int(key) <= len(STEPS):
        return STEPS[int(key) - 1].slug
    if key == "best":
        trained = {s: a for s, a in (best_accuracy or {}).items() if s in STEPS_BY_SLUG}
        if not trained:
            raise UnknownStepError("no step is trained yet, so there is no 'best' step")
        return max(STEP_SLUGS, key=lambda s: (trained.get(s, -1.0), -STEP_SLUGS.index(s)))
    choices = ", ".join(STEP_SLUGS)
    raise UnknownStepError(
        f"unknown step {name!r}: use one of {choices}, a number 1-{len(STEPS)}, or 'best'"
    )


def _any_case(word: str) -> str:
    return "".join(f"[{c}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


# The names `resolve_step` accepts, as an OpenAPI (ECMA 262) pattern: an HTTP API's schema
# describes its path parameter with it, so that a client (or a fuzzer) knows them exactly.
STEP_NAME_PATTERN = (
    "^ *(?:"
    + "|".join(_any_case(word) for word in (*STEP_SLUGS, "best"))
    + "|0*(?:"
    + "|".join(str(number) for number in range(len(STEPS), 0, -1))
    + ")) *$"
)


# --- JSON schemas: one pydantic model per file ---------------------------------------------


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LayerRow(_Schema):
    name: str = Field(examples=["Conv2d-1"])  # torchsummary's "<Type>-<call index>"
    type: str = Field(examples=["Conv2d"])
    output_shape: list[int] = Field(examples=[[-1, 10, 26, 26]])  # -1 is the batch
    params: int
    trainable: bool
    receptive_field: int  # of one output pixel, in input pixels, after this layer
    jump: int  # input pixels between neighbouring output pixels after this layer


class Summary(_Schema):
    step: str
    layers: list[LayerRow]
    total_params: int
    trainable_params: int
    non_trainable_params: int
    input_size_mb: float
    forward_backward_size_mb: float
    params_size_mb: float
    estimated_total_size_mb: float
    text: str  # the torchsummary-style table, as the seed prints it


class EpochMetrics(_Schema):
    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float  # percent
    test_loss: float
    test_accuracy: float  # percent
    lr: float  # the learning rate at the end of the epoch
    seconds: float


class Provenance(_Schema):
    command: str
    seed: int
    device: str
    versions: dict[str, str]  # python, torch, torchvision, onnx, onnxruntime, platform
    data: dict[str, str]  # IDX file name -> sha256 of its uncompressed content
    limit: int | None  # images used per split when training on a subset, else None
    started_at: str
    wall_seconds: float
    git_commit: str | None = None
    cuda_graphs: bool = False  # the training steps ran as captured CUDA graphs (trainer/graphs.py)
    # sha256 of the code that trained it (trainer/resume.py): `run --resume` skips a step
    # whose published version has the same recipe, code and data.
    code: dict[str, str] | None = None


class Metrics(_Schema):
    step: str
    number: int
    title: str
    objective: str
    params: int
    recipe: dict[str, Any]
    epochs: list[EpochMetrics]
    best_epoch: int  # 1-based; the checkpoint that was exported
    best_test_accuracy: float
    provenance: Provenance
    verification: dict[str, float | int]  # how the ONNX export matched PyTorch


def encode_pixels(grey: bytes) -> str:
    """The text a Digit holds: 784 grey levels (uint8, row by row) in base64."""
    return base64.b64encode(grey).decode("ascii")


class Digit(_Schema):
    """One MNIST test digit as MNIST stores it: light ink on black, 28x28 grey levels."""

    index: int = Field(ge=0, description="its place in the test split", examples=[0])
    label: int = Field(ge=0, le=9, description="the true digit", examples=[7])
    # base64 of 784 bytes: a third the size of a JSON list of numbers, and decoded by the page
    # with one call (`atob`); what `encode_pixels` makes.
    pixels: str = Field(
        description="base64 of the 28x28 grey levels (0 black .. 255 ink), row by row"
    )

    @field_validator("pixels")
    @classmethod
    def _is_28x28(cls, text: str) -> str:
        try:
            size = len(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise ValueError("pixels is not base64") from None
        if size != IMAGE_SIZE * IMAGE_SIZE:
            raise ValueError(f"pixels holds {size} bytes, not {IMAGE_SIZE}x{IMAGE_SIZE}")
        return text

    def grey(self) -> bytes:
        return base64.b64decode(self.pixels)


class Mistake(Digit):
    predicted: int = Field(ge=0, le=9, description="what the step answered", examples=[2])
    confidence: float = Field(ge=0, le=1, description="its probability of `predicted`")


class Mistakes(_Schema):
    """A step's test-set errors at its best epoch, from the weights that were exported."""

    step: str
    best_epoch: int  # 1-based: the epoch whose weights these come from
    confusion: list[list[int]] = Field(
        description="10x10 counts: row = true digit, column = predicted digit"
    )
    # The most confident mistakes first: the ones that teach the most about the model.
    mistakes: list[Mistake] = Field(max_length=MAX_MISTAKES)

    @model_validator(mode="after")
    def _consistent(self) -> Mistakes:
        rows = self.confusion
        if len(rows) != NUM_CLASSES or any(len(r) != NUM_CLASSES for r in rows):
            raise ValueError(f"confusion is not {NUM_CLASSES}x{NUM_CLASSES}")
        if any(n < 0 for r in rows for n in r):
            raise ValueError("confusion has a negative count")
        wrong = sum(rows[t][p] for t in range(NUM_CLASSES) for p in range(NUM_CLASSES) if t != p)
        if len(self.mistakes) > wrong:
            raise ValueError(f"{len(self.mistakes)} mistakes listed, the confusion counts {wrong}")
        for m in self.mistakes:
            if m.predicted == m.label or rows[m.label][m.predicted] < 1:
                raise ValueError(f"test digit {m.index} is not a mistake of the confusion matrix")
        return self


class Samples(_Schema):
    """A fixed set of MNIST test digits to try the models on (the page offers them)."""

    digits: list[Digit]


class IndexEntry(_Schema):
    version: str
    published_at: str
    model_sha256: str  # readers check it before loading: a disk can lie


class Index(_Schema):
    schema_version: int = SCHEMA_VERSION
    steps: dict[str, IndexEntry] = {}


# --- Reading ------------------------------------------------------------------------------


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


def version_folder(root: Path, step: str, version: str) -> Path:
    return Path(root) / step / version


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


# --- Writing (the trainer is the only writer) ---------------------------------------------


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


def checkpoint_path(root: Path, step: str) -> Path:
    return Path(root) / CHECKPOINT_DIR / f"{step}.pt"
