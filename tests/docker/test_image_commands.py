"""The exact commands the images run (ENTRYPOINT + CMD, read from the Dockerfiles), executed
directly on this machine against a temporary model volume: the trainer's fills it (on a tiny
subset), the service's serves it. Only what a container changes is changed here: the volume's
path, the MNIST folder (the image downloads it), and the service's address (in a container it
listens on 0.0.0.0:8000; here on a free port of 127.0.0.1)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.docker.dockerfile import SERVICE_DOCKERFILE, TRAINER_DOCKERFILE, parse_dockerfile
from tests.servers import serve
from volume import STEP_SLUGS, read_index, read_version

pytestmark = pytest.mark.slow
LIMIT = "100"  # images per split: one epoch each; the time goes into export (~4 s a step)
VENV_BIN = Path(sys.executable).parent


def executable(name: str) -> str | None:
    """A command of the image, as this environment has it: the venv's, else PATH's."""
    if name == "python":
        return sys.executable
    beside = VENV_BIN / name
    return str(beside) if beside.exists() else shutil.which(name)


def image_env(path: Path, **overrides: str) -> dict[str, str]:
    """This environment plus the final stage's ENV (without PATH), plus the overrides."""
    env = {k: v for k, v in parse_dockerfile(path).final.env.items() if k != "PATH"}
    return os.environ | env | {"PYTHONPATH": str(ROOT)} | overrides


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> tuple[Path, str]:
    """The trainer image's command, run into an empty volume; the volume and the log."""
    argv = parse_dockerfile(TRAINER_DOCKERFILE).argv
    assert argv == [
        "python",
        "-m",
        "trainer",
        "run",
        "--steps",
        "all",
        "--device",
        "auto",
        "--resume",
    ]
    volume = tmp_path_factory.mktemp("models")
    env = image_env(
        TRAINER_DOCKERFILE,
        MODELS_DIR=str(volume),
        MNIST_CACHE=str(tmp_path_factory.mktemp("mnist-cache")),
        MNIST_DIR=str(mnist_dir),
    )
    command = [executable(argv[0]) or argv[0], *argv[1:], "--epochs", "1", "--limit", LIMIT]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return volume, result.stderr


def test_trainer_command_fills_the_volume_with_every_step(trained: tuple[Path, str]) -> None:
    volume, log = trained
    index = read_index(volume)
    assert list(index.steps) == list(STEP_SLUGS)
    for slug, entry in index.steps.items():
        version = read_version(volume, slug, entry)
        assert version.metrics.provenance.limit == int(LIMIT)
        assert len(version.metrics.epochs) == 1
    # It says which device it trains on: the GPU when there is one, else the CPU.
    assert "device: cuda" in log or "device: cpu (no CUDA GPU found" in log, log[:2000]


def service_argv(port: int) -> list[str]:
    """The service image's ENTRYPOINT + CMD, listening on 127.0.0.1:port instead of 0.0.0.0:8000.

    The entrypoint (dumb-init, an init for PID 1) is used when this environment has it; it is a
    container's concern, so without it the CMD runs alone.
    """
    final = parse_dockerfile(SERVICE_DOCKERFILE).final
    entrypoint, cmd = final.exec_form("ENTRYPOINT"), final.exec_form("CMD")
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    cmd[cmd.index("--port") + 1] = str(port)
    found = executable(cmd[0])
    assert found, f"{cmd[0]} is not installed"
    cmd[0] = found
    init = executable(entrypoint[0]) if entrypoint else None
    return [init, *entrypoint[1:], *cmd] if init else cmd


@contextlib.contextmanager
def service(volume: Path, log: Path) -> Iterator[tuple[httpx.Client, subprocess.Popen[bytes]]]:
    env = image_env(SERVICE_DOCKERFILE, MODELS_DIR=str(volume), POLL_SECONDS="0.2")
    with serve(service_argv, env, log.parent, log) as running:
        yield running


def digit_png(mnist_dir: Path) -> bytes:
    """The first MNIST test digit as a PNG, dark ink on white, 4x enlarged."""
    import gzip
    import io

    from PIL import Image

    raw = gzip.decompress((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    image = Image.frombytes("L", (28, 28), raw[16 : 16 + 784]).point(lambda v: 255 - v)
    buffer = io.BytesIO()
    image.resize((112, 112)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_service_command_serves_the_volume(
    trained: tuple[Path, str], mnist_dir: Path, tmp_path: Path
) -> None:
    volume, _ = trained
    with service(volume, tmp_path / "service.log") as (client, process):
        assert client.get("/readyz").status_code == 200
        png = {"file": ("digit.png", digit_png(mnist_dir), "image/png")}
        for step in ("gap", "scheduler"):
            answer = client.post(f"/predict/{step}", files=png)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["step"] == step and body["digit"] in range(10)
            assert abs(sum(body["probabilities"]) - 1) < 1e-3
        summary = client.get("/steps/gap/summary")
        assert summary.status_code == 200 and summary.json()["total_params"] == 9490
        # `docker stop` sends SIGTERM: the command shuts down gracefully. uvicorn re-raises the
        # signal once it has finished (so the status says SIGTERM), or exits with 0.
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=25) in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    log = (tmp_path / "service.log").read_text()
    assert "Waiting for application shutdown" in log and "Finished server process" in log, log


def test_service_command_starts_on_an_empty_volume(tmp_path: Path) -> None:
    """Before the trainer has published anything: live, not ready."""
    volume = tmp_path / "models"
    volume.mkdir()
    with service(volume, tmp_path / "service.log") as (client, _):
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
