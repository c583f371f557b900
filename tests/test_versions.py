"""Kept versions (volume/versions.py): listed with their accuracy, pinned, made current again,
and a new run that tests worse kept without replacing the better one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.volume_fixtures import fake_metrics, fake_summary
from volume import MODEL_FILE, VolumeError, list_versions, publish, read_current, read_index
from volume.versions import (
    Promotion,
    UnknownVersionError,
    kept_versions,
    make_current,
    previous_version,
    read_kept,
)


def publish_run(
    root: Path, accuracy: float, payload: bytes, promote: Promotion | bool = True, keep: int = 3
) -> str:
    metrics = fake_metrics("gap", accuracy)
    return publish(root, "gap", payload, fake_summary("gap"), metrics, keep=keep,
                   make_current=promote)  # fmt: skip


@pytest.fixture
def three(tmp_path: Path) -> tuple[Path, list[str]]:
    """`gap` published three times (98.0, 98.5, 99.0 %): the last is current."""
    root = tmp_path / "models"
    versions = [publish_run(root, 98.0 + i / 2, f"onnx {i}".encode()) for i in range(3)]
    return root, versions


def test_kept_versions_list_each_with_its_accuracy(three: tuple[Path, list[str]]) -> None:
    root, versions = three
    kept = kept_versions(root, "gap")
    assert [k.version for k in kept] == versions
    assert [k.best_test_accuracy for k in kept] == [98.0, 98.5, 99.0]
    assert [k.current for k in kept] == [False, False, True]
    assert kept[0].published_at.startswith(versions[0][:4])
    assert kept_versions(root, "setup") == []


def test_a_kept_version_is_read_and_checked(three: tuple[Path, list[str]]) -> None:
    root, versions = three
    assert read_kept(root, "gap", versions[0]).model_bytes == b"onnx 0"
    (root / "gap" / versions[0] / MODEL_FILE).write_bytes(b"tampered")
    with pytest.raises(VolumeError, match="does not match its version's name"):
        read_kept(root, "gap", versions[0])


@pytest.mark.parametrize(
    "version",
    ["20260101T000000.000000Z-00000000", "../gap", "..", "", "index.json", "nope"],
)
def test_an_unknown_version_names_the_kept_ones(
    three: tuple[Path, list[str]], version: str
) -> None:
    root, versions = three
    with pytest.raises(UnknownVersionError) as raised:
        read_kept(root, "gap", version)
    assert all(v in str(raised.value) for v in versions)
    with pytest.raises(UnknownVersionError):
        make_current(root, "gap", version)


def test_rollback_makes_a_kept_version_current_and_back(three: tuple[Path, list[str]]) -> None:
    root, versions = three
    assert previous_version(root, "gap") == versions[1]
    assert make_current(root, "gap", versions[0]) == versions[2]
    assert read_index(root).steps["gap"].version == versions[0]
    current = read_current(root, "gap")
    assert current is not None and current.model_bytes == b"onnx 0"  # the index's sha holds
    with pytest.raises(VolumeError, match="no version older"):
        previous_version(root, "gap")
    assert make_current(root, "gap", versions[2]) == versions[0]  # and forward again
    assert list_versions(root, "gap") == versions  # nothing pruned, nothing added
    assert not list((root / ".staging").iterdir())


def test_nothing_to_roll_back_on_an_unpublished_step(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="not published"):
        previous_version(tmp_path, "gap")


# (current accuracy, new accuracy, --promote, made current)
PROMOTIONS = [
    (99.0, 99.2, False, True),
    (99.0, 99.0, False, True),  # a tie: the newer run
    (99.0, 98.9, False, False),
    (99.0, 98.9, True, True),
    (None, 97.0, False, True),  # the first version of a step is always current
]


@pytest.mark.parametrize(("before", "after", "force", "current"), PROMOTIONS)
def test_a_worse_run_is_kept_but_not_made_current_without_promote(
    tmp_path: Path, before: float | None, after: float, force: bool, current: bool
) -> None:
    root = tmp_path / "models"
    served = publish_run(root, before, b"served") if before is not None else None
    decision = Promotion(root, "gap", after, force=force)
    new = publish_run(root, after, b"new run", promote=decision, keep=1)
    assert decision.promoted is current
    assert read_index(root).steps["gap"].version == (new if current else served)
    # keep=1 still keeps the new run beside the one served: it is what a rollback would serve
    assert new in list_versions(root, "gap")
    message = decision.message(new)
    assert ("NOT current" in message) is (not current)
    if not current:
        assert f"python -m trainer rollback gap {new}" in message
    if force and before is not None and after < before:
        assert "promoted although it tests worse" in message
