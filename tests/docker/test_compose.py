"""docker-compose.yml: validated by a real Compose implementation, and its contract read as YAML."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.docker.dockerfile import (
    COMPOSE_FILE,
    E2E_COMPOSE_FILE,
    SERVICE_DOCKERFILE,
    TRAINER_DOCKERFILE,
    parse_dockerfile,
)

TRAINERS = ("trainer", "trainer-cpu")


def load(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, Any]:
    found: dict[str, Any] = load()["services"]
    return found


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """target -> (source, mode) of a service's short-syntax volumes."""
    found = {}
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        found[target] = (source, mode[0] if mode else "rw")
    return found


def test_services_and_named_volumes() -> None:
    data = load()
    assert set(data["services"]) == {"trainer", "trainer-cpu", "service"}
    assert set(data["volumes"]) == {"models", "mnist-cache"}
    assert "version" not in data, "the Compose Specification has no version"


@pytest.mark.parametrize("name", TRAINERS)
def test_trainers_write_the_model_volume_and_the_mnist_cache(name: str) -> None:
    trainer = services()[name]
    assert mounts(trainer) == {"/models": ("models", "rw"), "/cache/mnist": ("mnist-cache", "rw")}
    env = parse_dockerfile(TRAINER_DOCKERFILE).final.env
    assert trainer["environment"]["MODELS_DIR"] == env["MODELS_DIR"] == "/models"
    assert trainer["environment"]["MNIST_CACHE"] == env["MNIST_CACHE"] == "/cache/mnist"
    assert trainer["build"] == {"context": ".", "dockerfile": "docker/trainer.Dockerfile"}
    assert "command" not in trainer, "the image's default command trains every step"
    assert trainer["restart"] == "no"


def test_trainer_reserves_every_gpu() -> None:
    devices = services()["trainer"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_cpu_trainer_is_the_same_without_the_gpu_in_a_profile() -> None:
    trainer, cpu = services()["trainer"], services()["trainer-cpu"]
    assert "deploy" not in cpu
    assert cpu["profiles"] == ["cpu"]
    assert "profiles" not in trainer
    same = {k: v for k, v in trainer.items() if k != "deploy"}
    assert {k: v for k, v in cpu.items() if k != "profiles"} == same


def test_service_reads_the_model_volume_read_only() -> None:
    service = services()["service"]
    assert mounts(service) == {"/models": ("models", "ro")}
    assert service["environment"]["MODELS_DIR"] == "/models"
    assert service["build"] == {"context": ".", "dockerfile": "docker/service.Dockerfile"}
    assert service.get("read_only") is True


def test_service_starts_without_the_trainer() -> None:
    """No depends_on: it is live on an empty volume and picks models up as they are published."""
    assert "depends_on" not in services()["service"]


def test_service_port_is_published_on_loopback_by_default() -> None:
    (port,) = services()["service"]["ports"]
    found = re.fullmatch(r"(\$\{[^}]+\}):(\$\{[^}]+\}):(\d+)", port)
    assert found, port
    host_ip, host_port, container_port = found.groups()
    assert host_ip == "${SERVICE_BIND:-127.0.0.1}"
    assert host_port == "${SERVICE_PORT:-8000}"
    cmd = parse_dockerfile(SERVICE_DOCKERFILE).final.exec_form("CMD")
    assert container_port == cmd[cmd.index("--port") + 1] == "8000"


def test_service_restart_policy_and_healthcheck() -> None:
    service = services()["service"]
    assert service["restart"] == "unless-stopped"
    check = service["healthcheck"]
    assert check["test"][0] == "CMD"
    assert "http://127.0.0.1:8000/healthz" in " ".join(check["test"])  # liveness, not /readyz
    for key in ("interval", "timeout", "retries", "start_period"):
        assert key in check
    # Compose's graceful stop outlasts uvicorn's own.
    cmd = parse_dockerfile(SERVICE_DOCKERFILE).final.exec_form("CMD")
    graceful = int(cmd[cmd.index("--timeout-graceful-shutdown") + 1])
    assert int(service["stop_grace_period"].rstrip("s")) > graceful


def test_e2e_override_changes_only_the_trainers_command_and_network() -> None:
    """What the docs' commands run under the e2e: the trainers' default command on a subset,
    with no network; the service as users run it."""
    override = load(E2E_COMPOSE_FILE)["services"]
    assert set(override) == set(TRAINERS)
    for name in TRAINERS:
        assert set(override[name]) == {"network_mode", "command"}
        assert override[name]["network_mode"] == "none"
        assert override[name]["command"][:3] == ["run", "--steps", "gap,scheduler"]


# --- a real Compose implementation ----------------------------------------------------------


def compose_command() -> list[str]:
    """Debian's docker-compose (1.29), else the Compose v2 plugin; skip if neither is here."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    message = "no Compose implementation here (apt-get install docker-compose)"
    if os.environ.get("REQUIRE_DOCKER_TOOLS"):
        pytest.fail(message)
    pytest.skip(message)


def compose_config(*args: str, files: tuple[Path, ...] = (COMPOSE_FILE,)) -> dict[str, Any]:
    command = compose_command()
    for f in files:
        command += ["-f", str(f)]
    # No engine is needed to validate: point Compose at a socket where none listens.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SERVICE_", "TRAINER_", "COMPOSE_", "E2E_"))
    }
    env |= {"DOCKER_HOST": "unix:///nonexistent/docker.sock", "E2E_MNIST_DIR": "/tmp"}
    result = subprocess.run(
        [*command, *args, "config"], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict)
    return config


def test_compose_validates_the_file() -> None:
    config = compose_config()
    assert set(config["services"]) >= {"trainer", "service"}
    service = config["services"]["service"]
    # Normalised by Compose: the loopback binding, the read-only mount, the GPU reservation.
    ports = service["ports"]
    port = ports[0]
    if isinstance(port, dict):  # Compose v2's long syntax
        assert (port["host_ip"], str(port["published"]), port["target"]) == (
            "127.0.0.1",
            "8000",
            8000,
        )
    else:  # 1.29
        assert port.startswith("127.0.0.1:8000:8000")
    (volume,) = service["volumes"]
    if isinstance(volume, dict):
        assert (volume["source"], volume["target"], volume.get("read_only")) == (
            "models",
            "/models",
            True,
        )
    else:
        assert volume == "models:/models:ro"
    devices = config["services"]["trainer"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_compose_validates_the_cpu_profile_and_the_e2e_override() -> None:
    config = compose_config("--profile", "cpu", files=(COMPOSE_FILE, E2E_COMPOSE_FILE))
    cpu = config["services"]["trainer-cpu"]
    assert "deploy" not in cpu
    assert cpu["network_mode"] == "none"
    assert cpu["image"] == config["services"]["trainer"]["image"]


def test_compose_builds_from_the_repo_root() -> None:
    config = compose_config()
    for name, dockerfile in (("trainer", TRAINER_DOCKERFILE), ("service", SERVICE_DOCKERFILE)):
        build = config["services"][name]["build"]
        assert Path(build["context"]).resolve() == ROOT.resolve()
        assert (Path(build["context"]) / build["dockerfile"]).resolve() == dockerfile.resolve()


# --- the docs' Docker commands ----------------------------------------------------------------

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCKER_PAGE = ROOT / "docs" / "docker.md"
# Where the e2e runs them (tests/docker/e2e.sh, and the replicas phase it sources).
E2E_SCRIPTS = [ROOT / "tests" / "docker" / "e2e.sh", ROOT / "tests" / "docker" / "replicas.sh"]
DOCKER_COMMAND = re.compile(
    r"^(?:[A-Z_]+=\S+ )*(?:docker(?:-compose)? |make (?:images|docker-e2e))"
)


def bash_lines(path: Path) -> list[str]:
    """Every line of the ```bash blocks of a Markdown file, continuations joined, no comments."""
    text = path.read_text().replace("\\\n", " ")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(re.sub(r"\s+", " ", line))
    return lines


def docker_commands(path: Path) -> list[str]:
    """The Docker commands of a Markdown file: its bash blocks' lines and its inline code that
    start with docker, docker-compose, `make images` or `make docker-e2e` (a bare tool name,
    like `docker compose`, is no command)."""
    inline = re.findall(
        r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    )
    found = [c for c in bash_lines(path) + inline if DOCKER_COMMAND.match(c)]
    return [c for c in found if c not in ("docker compose", "docker-compose")]


def as_the_e2e_runs_it(command: str) -> str:
    """The e2e serves on a free port, not 8000: its commands say "$URL/..." instead."""
    return re.sub(r"http://127\.0\.0\.1:8000(\S*)", r'"$URL\1"', command)


def readme_compose_commands() -> list[str]:
    return [c for path in DOCS for c in docker_commands(path) if "compose" in c.split()[:3]]


def test_readme_compose_commands_name_real_services_and_profiles() -> None:
    commands = readme_compose_commands()
    assert any(c.startswith("docker compose up trainer") for c in commands)
    assert "docker compose up -d service" in commands
    for command in commands:
        words = command.split()
        verbs = {"up", "run", "build", "ps", "down", "logs", "stop", "rm", "config"}
        verb = next((w for w in words if w in verbs), None)
        assert verb, command
        before, after = words[: words.index(verb)], words[words.index(verb) + 1 :]
        # The services of the files the command names with -f (docker-compose.yml by default);
        # after the verb, -f is another option (`logs -f`: follow).
        files = [before[i + 1] for i, w in enumerate(before[:-1]) if w == "-f"] or [COMPOSE_FILE]
        known = {k: v for f in files for k, v in load(ROOT / f)["services"].items()}
        named = [w for w in after if w in known]
        if verb in {"up", "run"}:
            assert named, f"{command!r} names no service of docker-compose.yml"
        for name in named:
            for profile in known[name].get("profiles", []):
                assert f"--profile {profile}" in command, f"{command!r} lacks --profile {profile}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_the_e2e_runs_every_docker_command_of_the_docs_as_written(doc: Path) -> None:
    """Each Docker command of README.md and docs/*.md appears verbatim in the e2e, which runs
    it on a real engine with Compose v2 and with docker-compose 1.29 (`make docker-e2e`)."""
    e2e = "\n".join(p.read_text() for p in E2E_SCRIPTS)
    missing = [c for c in docker_commands(doc) if as_the_e2e_runs_it(c) not in e2e]
    assert not missing, f"{doc.name}: not run by tests/docker/e2e.sh as written: {missing}"


def test_the_docker_page_is_a_path_from_nothing_to_predict_that_the_e2e_runs_whole() -> None:
    """docs/docker.md: every line of its bash blocks is run by the e2e (a bare `NAME=value`
    line sets a variable the e2e sets itself), and the path goes from building the images to
    a prediction of a model trained in the container."""
    e2e = "\n".join(p.read_text() for p in E2E_SCRIPTS)
    lines = bash_lines(DOCKER_PAGE)
    missing = [
        line
        for line in lines
        if not re.fullmatch(r"[A-Z_]+=\S+", line) and as_the_e2e_runs_it(line) not in e2e
    ]
    assert not missing, f"docs/docker.md: not run by tests/docker/e2e.sh as written: {missing}"
    path = [
        "make images OFFLINE=1",
        "docker compose up -d service",
        "docker compose --profile cpu up trainer-cpu",
        "docker compose --profile cpu run --rm -T --no-deps trainer-cpu digit > digit.png",
        "curl -F file=@digit.png http://127.0.0.1:8000/predict/scheduler",
    ]
    assert [p for p in path if p not in lines] == []
    # Build, train, take a digit, predict: in the order a newcomer types them (the service may
    # start at any time).
    order = [lines.index(p) for p in path if p != "docker compose up -d service"]
    assert order == sorted(order)


def test_make_images_tags_what_compose_runs() -> None:
    """docker/build-images.sh reads its default tags from docker-compose.yml, as Compose does."""
    result = subprocess.run(
        ["bash", "-c", 'eval "$(grep "^default_image()" docker/build-images.sh)"; '
         "default_image TRAINER_IMAGE; default_image SERVICE_IMAGE"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    config = compose_config()["services"]
    assert result.stdout.split() == [config["trainer"]["image"], config["service"]["image"]]
    assert result.stdout.split() == ["mnist-steps-trainer:latest", "mnist-steps-service:latest"]


# --- hardening and limits (issue 16) ---------------------------------------------------------

SOAK_PEAK_MB = 245  # bench/soak.py's peak RSS of the service (README "Reliability")


def megabytes(size: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)b?", size.lower()).groups()  # type: ignore[union-attr]
    return float(number) * {"": 1 / 2**20, "k": 1 / 1024, "m": 1, "g": 1024}[unit]


def test_service_has_no_capabilities_and_cannot_gain_privileges() -> None:
    service = services()["service"]
    assert service["cap_drop"] == ["ALL"]
    assert "cap_add" not in service and not service.get("privileged")
    assert "no-new-privileges:true" in service["security_opt"]
    assert service.get("read_only") is True


def test_service_limits_fit_the_soak_and_the_settings() -> None:
    """The memory limit holds, for each worker (`python -m service` runs one per core of the
    container's `cpus`), the soak's peak plus every upload its MAX_REQUESTS can hold at once
    (each body twice, its chunks then joined); open files hold MAX_CONNECTIONS sockets."""
    from service.settings import Settings

    service, settings = services()["service"], Settings()
    workers = math.ceil(float(service["cpus"]))
    uploads_mb = settings.max_requests * 2 * settings.max_upload_bytes / 2**20
    assert megabytes(str(service["mem_limit"])) >= workers * (SOAK_PEAK_MB + uploads_mb)
    assert float(service["cpus"]) >= 1
    assert int(service["pids_limit"]) >= 100  # uvicorn, 40 pool threads, onnxruntime's
    assert int(service["ulimits"]["nofile"]) > settings.max_connections + 100


@pytest.mark.parametrize("name", TRAINERS)
def test_trainers_run_as_the_images_non_root_user(name: str) -> None:
    trainer = services()[name]
    assert "user" not in trainer and not trainer.get("privileged") and "cap_add" not in trainer
    user = parse_dockerfile(TRAINER_DOCKERFILE).final.last("USER")
    assert user is not None and user.args.split(":")[0] not in {"0", "root"}


def test_compose_keeps_the_hardening_and_limits() -> None:
    service = compose_config()["services"]["service"]
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert megabytes(str(service["mem_limit"])) >= 2048  # 1.29 prints "2g", v2 bytes
    assert str(service["ulimits"]["nofile"]) in ("4096", "{'soft': 4096, 'hard': 4096}")


# --- API keys: a secret file layered on, never a literal ------------------------------------

KEYS_FILE = ROOT / "docker-compose.api-keys.yml"


def test_the_api_keys_file_adds_a_secret_to_the_service_only() -> None:
    override = load(KEYS_FILE)
    assert set(override["services"]) == {"service"}
    service = override["services"]["service"]
    assert service["secrets"] == ["api_keys"]
    assert service["environment"] == {"API_KEYS_FILE": "/run/secrets/api_keys"}
    assert override["secrets"] == {"api_keys": {"file": "${SERVICE_API_KEYS_FILE:-./api-keys.txt}"}}
    assert "API_KEYS" not in services()["service"]["environment"]  # off by default
    assert "/api-keys.txt" in (ROOT / ".gitignore").read_text().splitlines()


def test_compose_validates_the_api_keys_on_top_of_the_base() -> None:
    config = compose_config(files=(COMPOSE_FILE, KEYS_FILE))
    service = config["services"]["service"]
    assert service["environment"]["API_KEYS_FILE"] == "/run/secrets/api_keys"
    assert service["environment"]["MODELS_DIR"] == "/models"  # the base's, kept
    (mounted,) = service["secrets"]
    assert (mounted if isinstance(mounted, str) else mounted["source"]) == "api_keys"
    assert Path(config["secrets"]["api_keys"]["file"]) == ROOT / "api-keys.txt"
