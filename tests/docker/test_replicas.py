"""docker-compose.replicas.yml and docker/nginx.conf: their contract read as text and YAML,
validated by a real Compose; and the load report of tests/docker/load.py on made-up runs.

The real-engine proof (replicas killed and restarted and new versions published under load)
is tests/docker/e2e.sh's phase 5b, kept out of CI as the rest of it is.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from service.settings import Settings
from tests.conftest import ROOT
from tests.docker.dockerfile import COMPOSE_FILE, SERVICE_DOCKERFILE, parse_dockerfile
from tests.docker.load import Publish, analyse
from tests.docker.test_compose import compose_config, load, mounts

REPLICAS_FILE = ROOT / "docker-compose.replicas.yml"
NGINX_CONF = ROOT / "docker" / "nginx.conf"


def replicas() -> dict[str, Any]:
    found: dict[str, Any] = load(REPLICAS_FILE)["services"]
    return found


def nginx(directive: str) -> list[str]:
    """The arguments of every `directive ...;` in nginx.conf, comments left out."""
    text = re.sub(r"#.*", "", NGINX_CONF.read_text())
    return [m.strip() for m in re.findall(rf"(?m)^\s*{directive}\s+([^;]*);", text)]


def test_the_file_adds_replicas_and_nginx_only() -> None:
    assert set(replicas()) == {"replica", "lb"}
    assert "volumes" not in load(REPLICAS_FILE), "it uses docker-compose.yml's `models` volume"


def test_a_replica_is_the_service_less_its_port() -> None:
    """Compose cannot remove `ports` in an override, so `replica` repeats `service`: equal."""
    service = load(COMPOSE_FILE)["services"]["service"]
    replica = replicas()["replica"]
    assert {k: v for k, v in replica.items() if k != "deploy"} == {
        k: v for k, v in service.items() if k != "ports"
    }
    assert "ports" not in replica
    assert mounts(replica) == {"/models": ("models", "ro")}
    assert replica["deploy"]["replicas"] >= 2


def test_nginx_is_a_pinned_image_and_the_one_published_port() -> None:
    lb = replicas()["lb"]
    assert re.fullmatch(r"\$\{NGINX_IMAGE:-nginx:\d+\.\d+\.\d+(-alpine)?\}", lb["image"])
    (port,) = lb["ports"]
    (service_port,) = load(COMPOSE_FILE)["services"]["service"]["ports"]
    host, _, container = port.rpartition(":")
    assert host == service_port.rpartition(":")[0], "the same loopback default and port knob"
    assert nginx("listen") == [container]
    assert mounts(lb) == {"/etc/nginx/nginx.conf": ("./docker/nginx.conf", "ro")}
    assert lb["depends_on"] == {"replica": {"condition": "service_healthy"}}
    assert lb["read_only"] is True and lb["tmpfs"] == ["/tmp"]
    assert lb["stop_signal"] == "SIGQUIT"  # nginx's graceful stop


def test_nginx_finds_every_replica_and_retries_the_next() -> None:
    (variable,) = [v.split() for v in nginx("set")]
    cmd = parse_dockerfile(SERVICE_DOCKERFILE).final.exec_form("CMD")
    assert variable == ["$replicas", f"http://replica:{cmd[cmd.index('--port') + 1]}"]
    assert nginx("proxy_pass") == ["$replicas"], "through a variable: re-resolved, no reload"
    assert nginx("resolver") == ["127.0.0.11 valid=1s ipv6=off"]  # Docker's embedded DNS
    (retry,) = nginx("proxy_next_upstream")
    assert set(retry.split()) == {"error", "timeout", "non_idempotent"}
    assert int(nginx("proxy_next_upstream_tries")[0]) >= 2
    assert nginx("proxy_connect_timeout") == ["1s"]
    assert nginx("add_header") == ["X-Replica $upstream_addr always"]


def test_nginx_writes_only_under_tmp_and_lets_the_service_answer_413() -> None:
    assert nginx("pid") == ["/tmp/nginx.pid"]
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert all(p.startswith("/tmp/") for p in nginx(f"{kind}_temp_path")), kind
    assert not nginx("user"), "each image's own unprivileged user"
    (limit,) = nginx("client_max_body_size")
    assert limit.endswith("m") and int(limit[:-1]) << 20 > Settings().max_upload_bytes


def test_compose_validates_the_replicas_on_top_of_the_base() -> None:
    config = compose_config(files=(COMPOSE_FILE, REPLICAS_FILE))
    assert {"service", "replica", "lb", "trainer"} <= set(config["services"])
    replica, lb = config["services"]["replica"], config["services"]["lb"]
    assert "ports" not in replica
    (volume,) = replica["volumes"]
    if isinstance(volume, dict):  # Compose v2
        assert (volume["source"], volume.get("read_only")) == ("models", True)
    else:
        assert volume == "models:/models:ro"
    (port,) = lb["ports"]
    if isinstance(port, dict):
        assert (port["host_ip"], str(port["published"]), port["target"]) == (
            "127.0.0.1",
            "8000",
            8080,
        )
    else:
        assert port.startswith("127.0.0.1:8000:8080")


# --- tests/docker/load.py's verdict on made-up runs ----------------------------------------

T0 = 1_000_000.0
POLL = 2.0


def answer(sent: float, replica: str, version: str, kind: str = "predict") -> dict[str, Any]:
    probabilities = [0.1] * 10 if version == "v1" else [0.0] * 9 + [1.0]
    return {
        "kind": kind,
        "sent": T0 + sent,
        "done": T0 + sent + 0.01,
        "status": 200,
        "replica": replica,
        "version": version,
        "probabilities": probabilities,
    }


def run_of(swap_after: dict[str, float], length: float = 10.0) -> list[dict[str, Any]]:
    """Each replica answers every 0.1 s, the old version until `swap_after` it, then the new."""
    records = []
    for replica, swap in swap_after.items():
        for tenth in range(int(length * 10)):
            sent = tenth / 10
            records.append(answer(sent, replica, "v1" if sent < 5 + swap else "v2"))
    return sorted(records, key=lambda r: r["sent"])


PUBLISH = Publish(at=T0 + 5, version="v2", replicas=2)


def test_a_clean_run_passes() -> None:
    lines, problems = analyse(run_of({"a": 1.0, "b": 1.9}), [PUBLISH], POLL, 0.5)
    assert problems == []
    assert lines[0].startswith("requests: 200 in 9.9 s") and "failed: 0" in lines[0]
    assert any("replica b: last old answer to a request sent at +1.80 s" in x for x in lines)
    assert "answered after nginx retried another replica: 0" in lines


def test_retries_are_counted() -> None:
    records = run_of({"a": 1.0, "b": 1.0})
    records[7]["tries"] = 2
    lines, problems = analyse(records, [PUBLISH], POLL, 0.5)
    assert problems == [] and "answered after nginx retried another replica: 1" in lines


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda r: r[3].update(status=502, error="bad gateway"), "failed: predict"),
        (lambda r: r[3].update(status=None, error="ConnectError"), "ConnectError"),
        (lambda r: r[-1].update(probabilities=[1.0] + [0.0] * 9), "other probabilities"),
    ],
)
def test_a_failed_request_or_a_wrong_answer_fails_the_run(change: Any, problem: str) -> None:
    records = run_of({"a": 1.0, "b": 1.0})
    change(records)
    _, problems = analyse(records, [PUBLISH], POLL, 0.5)
    assert any(problem in p for p in problems), problems


def test_a_replica_late_to_swap_fails_the_run() -> None:
    _, problems = analyse(run_of({"a": 1.0, "b": 3.0}), [PUBLISH], POLL, 0.5)
    assert len(problems) == 1 and "replica b answered the old version" in problems[0]


def test_a_replica_that_never_answers_the_new_version_fails_the_run() -> None:
    _, problems = analyse(run_of({"a": 1.0}), [PUBLISH], POLL, 0.5)
    assert problems == ["publish 1: 1 replicas answered v2, 2 were up"]


def test_publish_times_are_read_as_the_index_writes_them() -> None:
    from tests.docker.load import parse_publish

    at = datetime(2026, 12, 1, 10, 0, 0, 250000, tzinfo=UTC)
    assert parse_publish(f"{at.isoformat()},v9,3") == Publish(at.timestamp(), "v9", 3)
