"""A volume that becomes unreadable under a running service: it keeps serving what it loaded,
logs the trouble once when it starts and once when it ends, and /readyz says what is wrong."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import volume
from service.models import ModelRegistry
from tests.conftest import ROOT
from tests.servers import serve
from tests.service.conftest import TRAINED, publish, random_model
from tests.service.test_api import DIGIT


def vanish(root: Path) -> Callable[[], None]:
    """The mount is gone: the folder is not there any more."""
    root.rename(root.with_name("away"))
    return lambda: root.with_name("away").rename(root)


def replace_by_empty_mount(root: Path) -> Callable[[], None]:
    """The mount is gone and an empty folder is in its place (a mount point left behind)."""
    undo = vanish(root)
    root.mkdir()
    return lambda: (root.rmdir(), undo())[-1]


def index_unreadable(root: Path) -> Callable[[], None]:
    """index.json cannot be read (here: something that is not a file is in its place)."""
    index = root / volume.INDEX_FILE
    index.rename(root / "index.saved")
    index.mkdir()
    return lambda: (index.rmdir(), (root / "index.saved").rename(index))[-1]


@pytest.mark.parametrize("damage", [vanish, replace_by_empty_mount, index_unreadable])
def test_the_registry_keeps_serving_and_logs_once_per_change(
    models_dir: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[Path], Callable[[], None]]
) -> None:
    registry = ModelRegistry(models_dir)
    registry.refresh()
    serving = {step: model.version for step, model in registry.models.items()}
    undo = damage(models_dir)
    with caplog.at_level(logging.INFO, logger="service.models"):
        for _ in range(5):  # five polls
            assert registry.refresh() == []
        assert {step: model.version for step, model in registry.models.items()} == serving
        (problem,) = registry.problems
        assert str(models_dir) in problem and "still serving what was loaded" in problem
        assert [r.levelno for r in caplog.records] == [logging.ERROR]  # once, not per poll
        undo()
        version = publish(models_dir, "gap", random_model(9))
        assert registry.refresh() == ["gap"] and registry.models["gap"].version == version
        assert registry.refresh() == []
    assert registry.problems == []
    assert [r.getMessage() for r in caplog.records[1:]] == [
        f"the model volume {models_dir} is readable again",
        f"step gap: serving version {version}",
    ]


def test_an_unreadable_version_is_tried_again_once_it_can_be_read(models_dir: Path) -> None:
    """Permissions are not damage: unlike a corrupt file, the version is loaded once readable."""
    registry = ModelRegistry(models_dir)
    registry.refresh()
    version = publish(models_dir, "gap", random_model(3))
    folder = models_dir / "gap" / version
    model = folder / volume.MODEL_FILE
    model.rename(folder / "saved.onnx")
    model.mkdir()  # reading it fails with an OSError, as permissions would
    assert registry.refresh() == []
    assert any(f"cannot read version {version}" in p for p in registry.problems)
    model.rmdir()
    (folder / "saved.onnx").rename(model)
    assert registry.refresh() == ["gap"] and registry.problems == []


# --- a real service, and a volume it has no permission to read ----------------------------


def unprivileged() -> list[str]:
    """A prefix that runs a command without the power to bypass file permissions.

    As root (CI runs as root) that is root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH,
    as in a container with cap_drop [ALL]; otherwise the user already has none.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")  # util-linux: on every Debian
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's permission bypass")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_service_whose_volume_loses_its_permissions(models_dir: Path, tmp_path: Path) -> None:
    env = os.environ | {
        "MODELS_DIR": str(models_dir),
        "POLL_SECONDS": "0.1",
        "PYTHONPATH": str(ROOT),
    }
    command = [*unprivileged(), sys.executable, "-m", "service", "--workers", "1"]
    log = tmp_path / "service.log"
    with serve(lambda port: [*command, "--port", str(port)], env, ROOT, log) as (client, _):
        assert client.get("/readyz").json()["problems"] == []
        mode = models_dir.stat().st_mode
        models_dir.chmod(0)
        try:
            wait_for(lambda: client.get("/readyz").json()["problems"], "the problem")
            time.sleep(1)  # ten more polls
            ready = client.get("/readyz")
            assert ready.status_code == 200  # what is loaded serves: stays in rotation
            (problem,) = ready.json()["problems"]
            assert "Permission denied" in problem and str(models_dir) in problem
            for step in TRAINED:
                answer = client.post(f"/predict/{step}", files={"file": ("d.png", DIGIT)})
                assert answer.status_code == 200, answer.text
        finally:
            models_dir.chmod(mode)
        version = publish(models_dir, "gap", random_model(11))
        wait_for(lambda: client.get("/readyz").json()["problems"] == [], "recovery")
        wait_for(lambda: client.get("/steps").json()[5]["version"] == version, "the new version")
    text = log.read_text()
    assert text.count("cannot read the index") == 1, text
    assert text.count("is readable again") == 1, text
