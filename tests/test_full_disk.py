"""A full disk: publishing into a volume that runs out of space fails with one clear error
naming the volume and the space needed, the last published version keeps serving, and nothing
half-written is left behind. The volume is a real 1 MiB tmpfs (mounting needs root: CI runs as
root, and there a failure to mount fails the test instead of skipping it)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.servers import serve
from tests.service.conftest import publish, random_model
from tests.service.test_api import DIGIT
from tests.test_volume import publish_fake
from volume import STAGING_DIR, VolumeError, list_versions, read_current


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "volume"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        message = f"cannot mount a tmpfs here ({result.stderr.strip()}): run as root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(volume: Path, leave: int) -> Path:
    """Fill the volume up to `leave` free bytes with one file; return it."""
    filler = volume / "filler"
    free = os.statvfs(volume).f_bavail * os.statvfs(volume).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def test_publishing_into_a_full_volume_fails_clearly_and_keeps_the_last_version(
    small_volume: Path,
) -> None:
    first = publish_fake(small_volume, payload=b"first model")
    filler = fill(small_volume, leave=50_000)
    with pytest.raises(VolumeError) as error:
        publish_fake(small_volume, payload=os.urandom(300_000))
    message = str(error.value)
    assert f"no space left on the model volume {small_volume}" in message
    assert "publishing gap needs about 30" in message and "bytes are free" in message
    current = read_current(small_volume, "gap")
    assert current is not None and current.version == first
    assert current.model_bytes == b"first model"
    assert list_versions(small_volume, "gap") == [first]  # nothing of the attempt
    assert list((small_volume / STAGING_DIR).iterdir()) == []
    filler.unlink()
    second = publish_fake(small_volume, payload=os.urandom(300_000))
    assert list_versions(small_volume, "gap") == [first, second]


def test_what_a_killed_writer_left_in_staging_is_cleaned_before_it_takes_the_space(
    small_volume: Path,
) -> None:
    publish_fake(small_volume)
    leftover = small_volume / STAGING_DIR / "gap-killed"
    leftover.mkdir()
    (leftover / "model.onnx").write_bytes(os.urandom(400_000))  # half of a killed publish
    fill(small_volume, leave=100_000)
    version = publish_fake(small_volume, payload=os.urandom(300_000))  # fits once it is gone
    assert list((small_volume / STAGING_DIR).iterdir()) == []
    assert read_current(small_volume, "gap").version == version  # type: ignore[union-attr]


@pytest.mark.slow
def test_the_trainer_on_a_full_volume_says_so_in_one_line_while_the_service_serves(
    small_volume: Path, mnist_dir: Path, tmp_path: Path
) -> None:
    served = publish(small_volume, "gap", random_model(1))
    env = os.environ | {"MODELS_DIR": str(small_volume), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "service"]
    log = tmp_path / "service.log"
    with serve(lambda port: [*command, "--port", str(port)], env, ROOT, log) as (client, _):
        filler = fill(small_volume, leave=20_000)
        trainer = subprocess.run(
            [sys.executable, "-m", "trainer", "run", "--steps", "gap", "--epochs", "1",
             "--limit", "200", "--quiet", "--data-dir", str(mnist_dir), "--out", str(small_volume)],
            cwd=ROOT, env=env | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert trainer.returncode == 2, trainer.stderr[-3000:]
        assert "Traceback" not in trainer.stderr
        (line,) = [x for x in trainer.stderr.splitlines() if x.startswith("error:")]
        assert f"no space left on the model volume {small_volume}" in line
        assert "needs about" in line and "--keep" in line
        answer = client.post("/predict/gap", files={"file": ("d.png", DIGIT)})
        assert answer.status_code == 200 and answer.json()["version"] == served
        filler.unlink()
    assert list((small_volume / STAGING_DIR).iterdir()) == []
    assert not list(small_volume.glob("checkpoints/*"))  # no partial file
