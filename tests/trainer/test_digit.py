"""`python -m trainer digit`: a published sample test digit as a PNG on standard output, read
from the model volume (so it works however the trainer got MNIST), and its errors."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.volume_fixtures import fake_metrics, fake_samples, fake_summary
from trainer.cli import main, sample_digit_png
from volume import publish

pytestmark = pytest.mark.slow  # runs the trainer's command in a process


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """gap published without samples (as before samples.json existed), scheduler with them."""
    publish(tmp_path, "gap", b"onnx", fake_summary("gap"), fake_metrics("gap"))
    publish(
        tmp_path, "scheduler", b"onnx", fake_summary("scheduler"), fake_metrics("scheduler"),
        samples=fake_samples(),
    )  # fmt: skip
    return tmp_path


def digit(
    volume: Path, *args: str, stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "trainer", "digit", "--out", str(volume), *args],
        cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE, timeout=120,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )  # fmt: skip


@pytest.mark.parametrize("label", [0, 3])
def test_the_png_is_the_samples_digit_dark_on_white_and_enlarged(volume: Path, label: int) -> None:
    (sample,) = [d for d in fake_samples().digits if d.label == label]
    image = Image.open(io.BytesIO(sample_digit_png(volume, label, scale=4)))
    assert (image.format, image.mode, image.size) == ("PNG", "L", (112, 112))
    small = image.resize((28, 28), Image.Resampling.NEAREST).tobytes()
    assert small == bytes(255 - v for v in sample.grey())  # MNIST's light ink, inverted


def test_the_command_writes_the_png_to_a_redirected_stdout(volume: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "digit", "--out", str(volume), "--label", "2"],
        cwd=ROOT, capture_output=True, timeout=120, env=os.environ | {"PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == sample_digit_png(volume, 2)


@pytest.mark.parametrize(
    ("label", "published", "code", "message"),
    [
        ("7", True, 2, "holds a sample digit 7"),  # fake_samples has 0-3 only
        ("7", False, 2, "holds a sample digit 7: train a step first"),
        ("10", True, 2, "invalid choice"),
    ],
)
def test_no_such_digit_is_a_clear_error(
    volume: Path,
    tmp_path: Path,
    capsysbinary: pytest.CaptureFixture[bytes],
    label: str,
    published: bool,
    code: int,
    message: str,
) -> None:
    out = volume if published else tmp_path / "empty"
    try:
        returned = main(["digit", "--out", str(out), "--label", label])
    except SystemExit as e:  # argparse's own errors
        returned = e.code  # type: ignore[assignment]
    captured = capsysbinary.readouterr()
    assert returned == code and captured.out == b""
    assert message in captured.err.decode()


def test_a_terminal_gets_told_to_redirect_instead_of_a_png(
    volume: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal:
        monkeypatch.setattr(sys, "stdout", terminal)
        with pytest.raises(SystemExit) as exited:
            main(["digit", "--out", str(volume)])
    os.close(leader)
    assert "redirect it to a file" in str(exited.value.code) and "add -T" in str(exited.value.code)
