"""Where things lie on the model volume, and what a published ``model.onnx`` takes and gives.

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
"""

from __future__ import annotations

from pathlib import Path

SCHEMA_VERSION = 1  # of index.json

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

# The ONNX graph's tensor names and the input normalisation both sides must agree on.
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
IMAGE_SIZE = 28
NUM_CLASSES = 10
MNIST_MEAN = 0.1307  # mean pixel of the MNIST training set, on the 0..1 scale
MNIST_STD = 0.3081  # its standard deviation


class VolumeError(Exception):
    """The volume holds something a reader cannot trust; the message names the file."""


def version_folder(root: Path, step: str, version: str) -> Path:
    return Path(root) / step / version


def checkpoint_path(root: Path, step: str) -> Path:
    return Path(root) / CHECKPOINT_DIR / f"{step}.pt"
