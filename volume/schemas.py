"""The volume's JSON files, one pydantic model each: what the trainer writes and the service reads.

Every model forbids unknown fields and is frozen: a file that does not match is damage, and the
reader (volume/reading.py) says which file and why.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from volume.layout import IMAGE_SIZE, NUM_CLASSES, SCHEMA_VERSION

MAX_MISTAKES = 100  # wrong test digits kept per version, the most confident first


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
