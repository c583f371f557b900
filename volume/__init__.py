"""The model volume: the only contract between the trainer (writer) and the service (reader).

This package imports no torch and no FastAPI, so both sides can depend on it. Its modules, in
the order a newcomer reads them:

- ``volume.steps``: the step catalogue (slugs, titles, order) and the names that address a step
- ``volume.layout``: where each file lies on the volume, and the ONNX model's inputs and outputs
- ``volume.schemas``: one pydantic model per JSON file (summary, metrics, mistakes, samples, index)
- ``volume.reading``: reading and checking a published version
- ``volume.publishing``: publishing one atomically, and the writers' lock
- ``volume.progress``: a step's training as it happens (``progress/<step>.json``)

Everything but ``progress`` is also importable from ``volume`` itself (``from volume import
publish``), which is how both sides use it.
"""

from volume.layout import (
    CHECKPOINT_DIR,
    IMAGE_SIZE,
    INDEX_FILE,
    INPUT_NAME,
    LOCK_FILE,
    METRICS_FILE,
    MISTAKES_FILE,
    MNIST_MEAN,
    MNIST_STD,
    MODEL_FILE,
    NUM_CLASSES,
    OPTIONAL_FILES,
    OUTPUT_NAME,
    SAMPLES_FILE,
    SCHEMA_VERSION,
    STAGING_DIR,
    SUMMARY_FILE,
    VERSION_FILES,
    VolumeError,
    checkpoint_path,
    version_folder,
)
from volume.publishing import (
    NO_SPACE,
    atomic_write_bytes,
    clean_staging,
    new_version_name,
    publish,
    space_needed,
    writer_lock,
)
from volume.reading import (
    PublishedVersion,
    list_versions,
    read_current,
    read_index,
    read_version,
    sha256_file,
)
from volume.schemas import (
    MAX_MISTAKES,
    Digit,
    EpochMetrics,
    Index,
    IndexEntry,
    LayerRow,
    Metrics,
    Mistake,
    Mistakes,
    Provenance,
    Samples,
    Summary,
    encode_pixels,
)
from volume.steps import (
    ASSIGNMENT_SLUGS,
    FINAL_STEP,
    STEP_NAME_PATTERN,
    STEP_SLUGS,
    STEPS,
    STEPS_BY_SLUG,
    StepInfo,
    UnknownStepError,
    resolve_step,
)

__all__ = [
    "ASSIGNMENT_SLUGS",
    "CHECKPOINT_DIR",
    "FINAL_STEP",
    "IMAGE_SIZE",
    "INDEX_FILE",
    "INPUT_NAME",
    "LOCK_FILE",
    "MAX_MISTAKES",
    "METRICS_FILE",
    "MISTAKES_FILE",
    "MNIST_MEAN",
    "MNIST_STD",
    "MODEL_FILE",
    "NO_SPACE",
    "NUM_CLASSES",
    "OPTIONAL_FILES",
    "OUTPUT_NAME",
    "SAMPLES_FILE",
    "SCHEMA_VERSION",
    "STAGING_DIR",
    "STEPS",
    "STEPS_BY_SLUG",
    "STEP_NAME_PATTERN",
    "STEP_SLUGS",
    "SUMMARY_FILE",
    "VERSION_FILES",
    "Digit",
    "EpochMetrics",
    "Index",
    "IndexEntry",
    "LayerRow",
    "Metrics",
    "Mistake",
    "Mistakes",
    "Provenance",
    "PublishedVersion",
    "Samples",
    "StepInfo",
    "Summary",
    "UnknownStepError",
    "VolumeError",
    "atomic_write_bytes",
    "checkpoint_path",
    "clean_staging",
    "encode_pixels",
    "list_versions",
    "new_version_name",
    "publish",
    "read_current",
    "read_index",
    "read_version",
    "resolve_step",
    "sha256_file",
    "space_needed",
    "version_folder",
    "writer_lock",
]
