"""The model volume: atomic, immutable versions that a reader can always trust."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.volume_fixtures import fake_metrics, fake_summary
from volume import (
    INDEX_FILE,
    MODEL_FILE,
    STEPS,
    SUMMARY_FILE,
    UnknownStepError,
    VolumeError,
    list_versions,
    publish,
    read_current,
    read_index,
    read_version,
    resolve_step,
)


def publish_fake(root: Path, step: str = "gap", payload: bytes = b"onnx", keep: int = 3) -> str:
    return publish(root, step, payload, fake_summary(step), fake_metrics(step), keep=keep)


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("gap", "gap"),
        ("GAP", "gap"),
        ("1", "setup"),
        ("7", "scheduler"),
        (" 6 ", "gap"),
        ("8", "tiny"),
    ],
)
def test_resolve_step(name: str, slug: str) -> None:
    assert resolve_step(name) == slug


@pytest.mark.parametrize(
    "name", ["0", str(len(STEPS) + 1), "../x", "%2e%2e", "", "gap/../setup", "-1"]
)
def test_resolve_unknown_step(name: str) -> None:
    with pytest.raises(UnknownStepError, match="unknown step"):
        resolve_step(name)


def test_resolve_best() -> None:
    assert resolve_step("best", {"gap": 99.1, "setup": 99.3, "lighter": 99.3}) == "setup"
    with pytest.raises(UnknownStepError, match="no step is trained yet"):
        resolve_step("best", {})


def test_publish_then_read(tmp_path: Path) -> None:
    version = publish_fake(tmp_path, payload=b"model-bytes")
    entry = read_index(tmp_path).steps["gap"]
    assert entry.version == version
    published = read_version(tmp_path, "gap", entry)
    assert published.model_bytes == b"model-bytes"
    assert published.metrics.best_test_accuracy == 98.0
    assert published.summary.total_params == 90
    assert list((tmp_path / ".staging").iterdir()) == []


def test_published_files_are_readable_by_other_users(tmp_path: Path) -> None:
    """The service may run as another user than the trainer: nothing may be owner-only."""
    publish_fake(tmp_path)
    version = read_index(tmp_path).steps["gap"].version
    for path in [tmp_path / INDEX_FILE, *(tmp_path / "gap" / version).iterdir()]:
        assert path.stat().st_mode & 0o444 == 0o444, path
    assert (tmp_path / "gap" / version).stat().st_mode & 0o555 == 0o555


def test_empty_volume_has_an_empty_index(tmp_path: Path) -> None:
    assert read_index(tmp_path).steps == {}


def test_versions_are_pruned_but_never_the_current_one(tmp_path: Path) -> None:
    versions = [publish_fake(tmp_path, payload=bytes([i]), keep=2) for i in range(5)]
    assert list_versions(tmp_path, "gap") == versions[-2:]
    assert read_index(tmp_path).steps["gap"].version == versions[-1]
    publish_fake(tmp_path, "setup")
    assert set(read_index(tmp_path).steps) == {"setup", "gap"}
    assert list(read_index(tmp_path).steps) == ["setup", "gap"]  # the seed's order


def break_index(root: Path) -> str:
    (root / INDEX_FILE).write_text('{"steps": {"gap": ')
    return "index.json: not a valid Index file"


def remove_summary(root: Path) -> str:
    entry = read_index(root).steps["gap"]
    (root / "gap" / entry.version / SUMMARY_FILE).unlink()
    return f"{SUMMARY_FILE}: missing; republish the step with `python -m trainer export`"


def flip_model_byte(root: Path) -> str:
    path = root / "gap" / read_index(root).steps["gap"].version / MODEL_FILE
    path.write_bytes(b"onnz")
    return "model.onnx: sha256 does not match index.json; the file is corrupt"


def remove_model(root: Path) -> str:
    (root / "gap" / read_index(root).steps["gap"].version / MODEL_FILE).unlink()
    return "model.onnx: missing"


@pytest.mark.parametrize("damage", [break_index, remove_summary, flip_model_byte, remove_model])
def test_a_damaged_volume_names_the_file(tmp_path: Path, damage) -> None:
    publish_fake(tmp_path)
    expected = damage(tmp_path)
    with pytest.raises(VolumeError) as e:
        read_version(tmp_path, "gap", read_index(tmp_path).steps["gap"])
    assert expected in str(e.value)
    assert str(tmp_path) in str(e.value)


PUBLISHER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from tests.test_volume import publish_fake
    root, step = Path(sys.argv[1]), sys.argv[2]
    print("ready", flush=True)
    for i in range(int(sys.argv[3])):
        publish_fake(root, step, payload=os.urandom(50_000 + i), keep=2)
    """
)


def start_publisher(root: Path, step: str, count: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(root), step, str(count)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def assert_readable(root: Path) -> int:
    """How many steps are published; raises on a missing or partial file."""
    return sum(read_current(root, step) is not None for step in read_index(root).steps)


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_the_volume_readable(tmp_path: Path) -> None:
    rng = random.Random(0)
    publish_fake(tmp_path, "gap")
    for _ in range(15):
        proc = start_publisher(tmp_path, rng.choice(["gap", "setup"]), 1000)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert assert_readable(tmp_path) >= 1
    publish_fake(tmp_path, "gap")  # the next writer cleans what the killed ones left half-built
    assert list((tmp_path / ".staging").iterdir()) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{INDEX_FILE}")]


@pytest.mark.slow
def test_two_publishers_and_a_polling_reader(tmp_path: Path) -> None:
    publishers = [start_publisher(tmp_path, step, 15) for step in ("gap", "scheduler")]
    reads = 0
    while any(p.poll() is None for p in publishers):
        assert_readable(tmp_path)
        reads += 1
    assert all(p.wait(timeout=60) == 0 for p in publishers)
    assert reads > 10
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert set(index["steps"]) == {"gap", "scheduler"}
    assert (
        len(list_versions(tmp_path, "gap")) == 2 and len(list_versions(tmp_path, "scheduler")) == 2
    )


def test_the_volume_module_imports_no_torch() -> None:
    code = "import sys; sys.modules['torch'] = None; import volume; print('ok')"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ},
    )  # fmt: skip
    assert out.stdout.strip() == "ok", out.stderr
