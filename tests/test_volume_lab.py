"""The volume's optional files for the lab (mistakes.json, samples.json): published, read,
validated; versions published before them still load."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.volume_fixtures import (
    fake_digit_pixels,
    fake_metrics,
    fake_mistakes,
    fake_samples,
    fake_summary,
)
from volume import (
    MAX_MISTAKES,
    MISTAKES_FILE,
    SAMPLES_FILE,
    Digit,
    Mistake,
    Mistakes,
    VolumeError,
    publish,
    read_current,
    read_index,
    read_version,
)


def publish_with(root: Path, step: str = "gap", lab: bool = True) -> str:
    extra = {"mistakes": fake_mistakes(step), "samples": fake_samples()} if lab else {}
    return publish(root, step, b"onnx", fake_summary(step), fake_metrics(step), **extra)


def test_published_mistakes_and_samples_are_read_back(tmp_path: Path) -> None:
    version = publish_with(tmp_path)
    published = read_current(tmp_path, "gap")
    assert published is not None and published.version == version
    assert published.mistakes == fake_mistakes("gap")
    assert published.samples == fake_samples()
    assert (tmp_path / "gap" / version / MISTAKES_FILE).exists()


def test_a_version_published_before_them_still_loads(tmp_path: Path) -> None:
    version = publish_with(tmp_path, lab=False)
    assert not (tmp_path / "gap" / version / MISTAKES_FILE).exists()
    published = read_current(tmp_path, "gap")
    assert published is not None
    assert published.mistakes is None and published.samples is None
    assert published.metrics.step == "gap"


@pytest.mark.parametrize("name", [MISTAKES_FILE, SAMPLES_FILE])
def test_a_damaged_optional_file_names_itself(tmp_path: Path, name: str) -> None:
    version = publish_with(tmp_path)
    (tmp_path / "gap" / version / name).write_text('{"step": ')
    with pytest.raises(VolumeError, match=f"{name}: not a valid"):
        read_version(tmp_path, "gap", read_index(tmp_path).steps["gap"])


def test_mistakes_of_another_step_are_refused(tmp_path: Path) -> None:
    publish(
        tmp_path, "gap", b"onnx", fake_summary("gap"), fake_metrics("gap"),
        mistakes=fake_mistakes("setup"),
    )  # fmt: skip
    with pytest.raises(VolumeError, match="not 'gap'"):
        read_current(tmp_path, "gap")


def digit(**change: object) -> dict[str, object]:
    return {"index": 0, "label": 7, "pixels": fake_digit_pixels()} | change


def mistakes(**change: object) -> dict[str, object]:
    return fake_mistakes("gap").model_dump() | change


# (what, schema, data, a substring of the error)
INVALID = [
    ("pixels not base64", Digit, digit(pixels="not base64!"), "not base64"),
    ("27x28 pixels", Digit, digit(pixels=base64.b64encode(bytes(756)).decode()), "756 bytes"),
    ("label 10", Digit, digit(label=10), "less than or equal to 9"),
    ("confusion 9x10", Mistakes, mistakes(confusion=[[0] * 10] * 9), "not 10x10"),
    (
        "negative count",
        Mistakes,
        mistakes(confusion=[[-1] + [0] * 9] + [[0] * 10] * 9),
        "negative",
    ),
    (
        "a right answer listed",
        Mistakes,
        mistakes(mistakes=[digit(label=4, predicted=4, confidence=0.9)]),
        "not a mistake",
    ),
    (
        "more listed than counted",
        Mistakes,
        mistakes(mistakes=[digit(label=4, predicted=9, confidence=0.9)] * 2),
        "2 mistakes listed, the confusion counts 1",
    ),
    (
        f"over {MAX_MISTAKES}",
        Mistakes,
        mistakes(mistakes=[digit(label=4, predicted=9, confidence=0.9)] * (MAX_MISTAKES + 1)),
        f"at most {MAX_MISTAKES}",
    ),
]


@pytest.mark.parametrize(
    ("schema", "data", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_lab_files_are_refused(schema: type, data: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        schema.model_validate(data)


def test_a_mistake_keeps_its_pixels() -> None:
    m = Mistake(index=5, label=3, predicted=5, confidence=0.5, pixels=fake_digit_pixels(1))
    assert len(m.grey()) == 784 and m.grey()[4 * 28 + 13] == 255
