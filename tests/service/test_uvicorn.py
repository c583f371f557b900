"""The service as users run it: a real uvicorn process on 127.0.0.1, on a real volume."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.servers import serve
from tests.service.conftest import publish, random_model
from tests.service.photos import encode, load_mnist
from tests.service.test_api import DIGIT, one_bit_bomb

pytestmark = pytest.mark.slow
LIMIT = 200_000  # MAX_UPLOAD_BYTES of the served process
PNG = {"content-type": "image/png"}


@contextlib.contextmanager
def uvicorn(models_dir: Path, log: Path) -> Iterator[httpx.Client]:
    """`uvicorn service.app:app` on a free port; a client for it once it answers."""
    env = os.environ | {
        "MODELS_DIR": str(models_dir),
        "POLL_SECONDS": "0.2",
        "MAX_UPLOAD_BYTES": str(LIMIT),
        "MAX_IMAGE_PIXELS": "1000000",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1"]
    with serve(lambda port: [*command, "--port", str(port)], env, ROOT, log) as (client, _):
        yield client


def wait_for(condition, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_empty_volume_then_publish_then_hot_swap(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    with uvicorn(models_dir, tmp_path / "uvicorn.log") as client:
        assert client.get("/readyz").status_code == 503
        answer = client.post("/predict/gap", files={"file": ("a.png", DIGIT)})
        assert answer.status_code == 503 and "not trained yet" in answer.json()["detail"]

        first = publish(models_dir, "gap")
        wait_for(lambda: client.get("/readyz").status_code == 200, "the first version")
        assert (
            client.post("/predict/gap", files={"file": ("a.png", DIGIT)}).json()["version"] == first
        )

        # Requests keep flowing while new versions are swapped in under them.
        statuses: list[int] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                reply = client.post(
                    "/predict/gap", content=DIGIT, headers={"content-type": "image/png"}
                )
                statuses.append(reply.status_code)

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            for seed in range(3):
                version = publish(models_dir, "gap", random_model(seed + 1))
                wait_for(lambda v=version: client.get("/steps").json()[5]["version"] == v, "swap")
        finally:
            stop.set()
            worker.join(timeout=30)
        assert statuses and set(statuses) == {200}
        assert (
            f'mnist_predictions_total{{step="gap"}} {len(statuses) + 1}.0'
            in client.get("/metrics").text
        )
    assert "step gap: serving version" in (tmp_path / "uvicorn.log").read_text()


def test_rollback_under_load_fails_no_request(tmp_path: Path) -> None:
    """`python -m trainer rollback` while clients post, one pinned to the newest version with
    `?version=`: the service follows within POLL_SECONDS and every request is answered."""
    models_dir = tmp_path / "models"
    first = publish(models_dir, "gap", random_model(1))
    second = publish(models_dir, "gap", random_model(2))
    with uvicorn(models_dir, tmp_path / "uvicorn.log") as client:
        answered: dict[str, list[tuple[int, str]]] = {"": [], f"?version={second}": []}
        stop = threading.Event()

        def hammer(query: str) -> None:
            while not stop.is_set():
                reply = client.post(f"/predict/gap{query}", content=DIGIT, headers=PNG)
                answered[query].append((reply.status_code, reply.json().get("version", reply.text)))

        workers = [threading.Thread(target=hammer, args=(q,)) for q in answered]
        for worker in workers:
            worker.start()
        try:
            # One rollback, by the real CLI (a second would only re-import torch: CI has 2 cores).
            rollback = subprocess.run(
                [sys.executable, "-m", "trainer", "rollback", "gap", first, "--out", str(models_dir)],
                cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)}, capture_output=True,
                text=True, timeout=120,
            )  # fmt: skip
            assert rollback.returncode == 0, rollback.stderr
            wait_for(lambda: client.get("/steps/gap").json()["serving"] == first, "the rollback")
            time.sleep(0.5)  # requests on the version rolled back to
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=30)
    current, pinned = answered.values()
    assert current and pinned and {code for code, _ in current + pinned} == {200}, answered
    # The current version changed under the unpinned client, once, and never under the pinned one.
    versions = [version for _, version in current]
    assert versions[0] == second and versions[-1] == first, versions[:3]
    assert versions == sorted(versions, key=lambda v: v == first)
    assert {version for _, version in pinned} == {second}
    assert "loaded pinned version" not in (tmp_path / "uvicorn.log").read_text()  # held


def test_limits_hold_in_a_real_server(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    publish(models_dir, "gap")

    def endless() -> Iterator[bytes]:
        """A chunked upload with no Content-Length that would never end: counted as it comes."""
        for _ in range(10_000):
            yield b"\0" * 65536

    with uvicorn(models_dir, tmp_path / "uvicorn.log") as client:
        streamed = client.post(
            "/predict/gap", content=endless(), headers={"content-type": "image/png"}
        )
        assert streamed.status_code == 413, streamed.text
        declared = client.post(
            "/predict/gap",
            content=b"\0" * (LIMIT + 1),
            headers=PNG,
        )
        assert declared.status_code == 413
        bomb = client.post("/predict/gap", files={"file": ("b.png", one_bit_bomb(1200))})
        assert bomb.status_code == 413 and "pixels" in bomb.json()["detail"]
        assert client.post("/predict/gap", files={"file": ("a.png", DIGIT)}).status_code == 200


def test_a_volume_filled_by_the_real_trainer(tmp_path: Path, mnist_dir: Path) -> None:
    """`python -m trainer run` (one epoch on a subset), then every endpoint on what it wrote."""
    models_dir = tmp_path / "models"
    trainer = subprocess.run(
        [sys.executable, "-m", "trainer", "run", "--steps", "gap", "--epochs", "1",
         "--limit", "2000", "--data-dir", str(mnist_dir), "--out", str(models_dir)],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert trainer.returncode == 0, trainer.stderr[-3000:]

    digit = encode(Image.fromarray(load_mnist(mnist_dir)[0][0]), "PNG")
    with uvicorn(models_dir, tmp_path / "uvicorn.log") as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["steps"] == ["gap"]
        steps = client.get("/steps").json()
        assert [s["slug"] for s in steps if s["trained"]] == ["gap"]
        assert steps[5]["params"] == 9490
        summary = client.get("/steps/gap/summary").json()
        assert summary["total_params"] == 9490 and summary["layers"][0]["name"] == "Conv2d-1"
        assert "Total params: 9,490" in client.get("/steps/6/summary?format=text").text
        metrics = client.get("/steps/gap/metrics").json()
        assert len(metrics["epochs"]) == 1 and metrics["best_epoch"] == 1
        for step in ("gap", "6", "best"):
            answer = client.post(f"/predict/{step}", files={"file": ("d.png", digit, "image/png")})
            assert answer.status_code == 200, answer.text
            assert answer.json()["step"] == "gap"
            assert sum(answer.json()["probabilities"]) == pytest.approx(1)
        assert (
            client.post("/predict/scheduler", files={"file": ("d.png", digit)}).status_code == 503
        )
        assert client.post("/predict/nope", files={"file": ("d.png", digit)}).status_code == 404
        assert 'mnist_predictions_total{step="gap"} 3.0' in client.get("/metrics").text
        assert client.get("/openapi.json").status_code == 200


def test_python_m_service_runs_a_worker_per_core_on_one_port(tmp_path: Path) -> None:
    """`python -m service --workers 2`, the image's command: two uvicorn processes on
    SO_REUSEPORT sockets of one port; new connections reach both; /metrics adds up both; SIGTERM
    stops both gracefully and the launcher ends by it, as uvicorn does."""
    models_dir = tmp_path / "models"
    publish(models_dir, "gap")
    env = os.environ | {"MODELS_DIR": str(models_dir), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--workers", "2"]
    command += ["--timeout-graceful-shutdown", "5"]
    log = tmp_path / "service.log"
    with serve(lambda port: [*command, "--port", str(port)], env, ROOT, log) as (client, process):
        requests = 30
        for _ in range(requests):  # each on a new connection: the kernel picks a socket
            answer = client.post(
                "/predict/gap", files={"file": ("a.png", DIGIT)}, headers={"connection": "close"}
            )
            assert answer.status_code == 200, answer.text
        assert f'mnist_predictions_total{{step="gap"}} {requests}.0' in client.get("/metrics").text
        workers = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and f"PPid:\t{process.pid}\n" in (p / "status").read_text()
        ]
        assert len(workers) == 2
        environ = (Path("/proc") / str(workers[0]) / "environ").read_bytes().split(b"\0")
        folder = Path(
            next(v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
            .split(b"=", 1)[1]
            .decode()
        )
        # Each worker that counted a prediction keeps its counts in a file of its own.
        assert {f"counter_{pid}.db" for pid in workers} <= {p.name for p in folder.iterdir()}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == -signal.SIGTERM
    assert log.read_text().count("Finished server process") == 2, log.read_text()
    assert not folder.exists()  # the launcher cleans up after its workers


@pytest.mark.parametrize(
    ("cpu_max", "cap"),
    [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000\n", 1), (None, None)],
    ids=["no quota", "1.5 CPUs", "half a CPU", "no cgroup v2"],
)
def test_the_default_worker_count_follows_a_containers_cpu_quota(
    tmp_path: Path, cpu_max: str | None, cap: int | None
) -> None:
    from service.settings import cpu_count

    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    cores = len(os.sched_getaffinity(0))
    assert cpu_count(path) == (min(cores, cap) if cap else cores)
