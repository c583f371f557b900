"""`python -m trainer rollback`, and a new run that tests worse than the version served: kept
beside it, not made current, unless `--promote`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.volume_fixtures import fake_metrics, fake_summary
from trainer.cli import main
from volume import list_versions, publish, read_index

ENV = os.environ | {"PYTHONPATH": str(ROOT)}


def publish_fake(root: Path, step: str, accuracy: float, payload: bytes) -> str:
    return publish(root, step, payload, fake_summary(step), fake_metrics(step, accuracy))


@pytest.fixture
def volume(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "models"
    return root, [publish_fake(root, "gap", 98.0 + i, f"onnx {i}".encode()) for i in range(3)]


# (arguments after `rollback`, the index of the version made current, or the error's words)
ROLLBACKS = [
    (["gap"], 1, None),
    (["6"], 1, None),
    (["gap", "{0}"], 0, None),
    (["gap", "{2}"], 2, None),  # the current one: nothing changes
    (["gap", "20260101T000000.000000Z-00000000"], None, "no kept version"),
    (["gap", "../gap"], None, "no kept version"),
    (["setup"], None, "not published"),
    (["nope"], None, "unknown step"),
]


@pytest.mark.parametrize(("args", "current", "error"), ROLLBACKS)
def test_rollback(
    volume: tuple[Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    current: int | None,
    error: str | None,
) -> None:
    root, versions = volume
    code = main(["rollback", *(a.format(*versions) for a in args), "--out", str(root)])
    said = capsys.readouterr().err
    if error is None:
        assert code == 0, said
        assert read_index(root).steps["gap"].version == versions[current]
        assert f"{versions[current]} is current (was {versions[2]})" in said
    else:
        assert code == 2 and said.startswith("error:") and error in said, said
        assert read_index(root).steps["gap"].version == versions[2]
        if "no kept version" in error:
            assert all(v in said for v in versions)  # it names what can be asked for


@pytest.mark.slow
def test_a_worse_run_is_kept_not_served_unless_promoted(mnist_dir: Path, tmp_path: Path) -> None:
    """A real one-epoch run against a served version that tests 100 %: it cannot beat it."""
    root = tmp_path / "models"
    served = publish_fake(root, "gap", 100.0, b"the better model")
    command = [sys.executable, "-m", "trainer", "run", "--steps", "gap", "--epochs", "1"]
    command += ["--limit", "300", "--quiet", "--device", "cpu", "--data-dir", str(mnist_dir)]
    command += ["--out", str(root)]

    def run(*extra: str) -> str:
        done = subprocess.run(
            [*command, *extra], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stderr

    said = run()
    kept = list_versions(root, "gap")[-1]
    assert kept != served and read_index(root).steps["gap"].version == served
    assert f"gap {kept} is kept but NOT current: it tests worse" in said
    assert f"100.00% of {served}" in said and f"trainer rollback gap {kept}" in said

    said = run("--promote")
    promoted = list_versions(root, "gap")[-1]
    assert read_index(root).steps["gap"].version == promoted not in (served, kept)
    assert "promoted although it tests worse" in said
    assert served in list_versions(root, "gap")  # kept for a rollback
