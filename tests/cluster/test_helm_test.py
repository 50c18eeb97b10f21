"""`helm test` on a real cluster, in a namespace that enforces the restricted Pod Security
Standard: the chart's test Pod asks the orchestrator for its models and has a typed turn
spoken back by a worker.

While no model is resident the test fails and its Pod's log says why; once a TTSModel is
resident it passes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.cluster.conftest import (
    ROOT,
    Cluster,
    Images,
    helm_release,
)

pytestmark = pytest.mark.cluster

NAMESPACE = "duplex-helm-test"
RELEASE = "duplex"
SAMPLE = ROOT / "manifests" / "samples" / "ttsmodel-piper-joe.yaml"
# A node of this machine has two CPUs (as in test_helm.py).
SMALL_NODE = [
    "workerPools.cpu.resources.requests.cpu=500m",
    "orchestrator.resources.requests.cpu=250m",
]


@pytest.fixture(scope="module")
def release(cluster: Cluster, images: Images) -> Iterator[str]:
    with helm_release(cluster, images, NAMESPACE, RELEASE, [*SMALL_NODE]) as name:
        yield name


def helm_test(cluster: Cluster) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "helm",
            "--kubeconfig",
            str(cluster.kubeconfig),
            "test",
            RELEASE,
            "-n",
            NAMESPACE,
            "--logs",
            "--timeout",
            "5m",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


def check_pod(cluster: Cluster) -> dict[str, object]:
    pod: dict[str, object] = cluster.get(NAMESPACE, "pod", f"{RELEASE}-test")
    return pod


def test_helm_test_fails_and_says_why_while_no_model_is_resident(
    cluster: Cluster, release: str
) -> None:
    result = helm_test(cluster)
    assert result.returncode != 0, result.stdout
    log = cluster.kubectl("logs", "-n", NAMESPACE, f"{RELEASE}-test")
    assert "FAILED: no model is resident on any worker" in log, log
    # It was admitted by the restricted policy and ran: its failure is the check's own.
    assert check_pod(cluster)["status"]["phase"] == "Failed"  # type: ignore[index]


def test_helm_test_passes_once_a_model_is_resident(cluster: Cluster, release: str) -> None:
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(SAMPLE))
    cluster.kubectl(
        "wait",
        "-n",
        NAMESPACE,
        "--for=condition=Resident",
        "ttsmodel/piper-joe",
        "--timeout=10m",
        timeout=660,
    )
    result = helm_test(cluster)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Phase:          Succeeded" in result.stdout
    assert "turn with piper-joe:" in result.stdout and "\nOK" in result.stdout, result.stdout
    pod = check_pod(cluster)
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True  # type: ignore[index]
    print(result.stdout)
