"""`tilt ci` with the project's Tiltfile on the local cluster: the dev image built with Docker,
pushed to the cluster's registry, pulled by the kubelet, and every workload healthy.

The chart's Redis image cannot be pulled here, and the Tiltfile (made for users' clusters)
keeps the chart's default: the local stand-in is tagged under that name in the cluster's
containerd first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from duplex.testing.apiserver import locate_binaries
from tests.cluster.conftest import (
    ROOT,
    Cluster,
    Images,
    delete_namespace,
    restricted_namespace,
    run,
)

pytestmark = pytest.mark.cluster

NAMESPACE = "duplex-tilt"
CHART_REDIS = "docker.io/library/redis:7-alpine"


@pytest.fixture(scope="module")
def tilt_kubeconfig(
    cluster: Cluster, images: Images, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    delete_namespace(cluster, NAMESPACE)
    restricted_namespace(cluster, NAMESPACE)
    state = cluster.kubeconfig.parent
    run(
        "ctr",
        "--address",
        state / "containerd.sock",
        "--namespace",
        "k8s.io",
        "images",
        "tag",
        "--force",
        images.redis,
        CHART_REDIS,
    )
    # Tilt deploys into the current context's namespace.
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["contexts"][0]["context"]["namespace"] = NAMESPACE
    path = tmp_path_factory.mktemp("tilt") / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    yield path
    delete_namespace(cluster, NAMESPACE)


def test_tilt_ci_brings_every_workload_up(cluster: Cluster, tilt_kubeconfig: Path) -> None:
    tilt = locate_binaries(("tilt",))["tilt"]
    env = {**os.environ, "KUBECONFIG": str(tilt_kubeconfig)}
    assert env.get("DUPLEX_BUILD_NETWORK") == "host", "not run through tools/cluster exec"
    ci = subprocess.run(
        [str(tilt), "ci", "--timeout", "8m"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        assert ci.returncode == 0, ci.stdout[-6000:] + ci.stderr[-2000:]
        assert "All workloads are healthy" in ci.stdout + ci.stderr
        registry = f"localhost:{(cluster.kubeconfig.parent / 'registry-port').read_text().strip()}"
        # The operator's worker Pods run what Tilt built and pushed to the cluster's registry.
        [worker] = cluster.pods(NAMESPACE, "app.kubernetes.io/component=worker")
        image = worker["spec"]["containers"][0]["image"]
        assert image.startswith(f"{registry}/duplex-dev:tilt-"), image
    finally:
        subprocess.run(
            [str(tilt), "down"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        if shutil.which("ctr"):
            subprocess.run(
                [
                    "ctr",
                    "--address",
                    str(cluster.kubeconfig.parent / "containerd.sock"),
                    "--namespace",
                    "k8s.io",
                    "images",
                    "rm",
                    CHART_REDIS,
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
