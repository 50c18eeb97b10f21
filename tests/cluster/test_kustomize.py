"""`kubectl apply -k manifests/` on a real cluster installs a system that serves a model.

An overlay only points the images at the cluster's own (nothing can be pulled here): the
objects are those of manifests/, in its namespace `duplex`, which enforces the `restricted`
Pod Security Standard.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.cluster.conftest import ROOT, Cluster, Images, pod_ready, until

pytestmark = pytest.mark.cluster

MANIFESTS = ROOT / "manifests"
NAMESPACE = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["namespace"]


@pytest.fixture(scope="module")
def overlay(cluster: Cluster, images: Images, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("overlay")
    repository, tag = images.duplex.rsplit(":", 1)
    redis_repository, redis_tag = images.redis.rsplit(":", 1)
    worker_image = {"name": "DUPLEX_OPERATOR_WORKER_IMAGE", "value": images.duplex}
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(MANIFESTS, directory)],
        "images": [
            {"name": "duplex", "newName": repository, "newTag": tag},
            {"name": "redis", "newName": redis_repository, "newTag": redis_tag},
        ],
        # The worker image is in the operator's config file; its override variable wins.
        "patches": [
            {
                "target": {"kind": "Deployment", "name": "duplex-operator"},
                "patch": json.dumps(
                    [
                        {
                            "op": "add",
                            "path": "/spec/template/spec/containers/0/env/-",
                            "value": worker_image,
                        }
                    ]
                ),
            }
        ],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return directory


@pytest.fixture(scope="module")
def installed(cluster: Cluster, overlay: Path) -> Iterator[str]:
    cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait", timeout=300)
    # What manifests/kustomization.yaml asks for first: the Secrets of random values that the
    # chart generates and plain files cannot.
    cluster.kubectl("create", "namespace", NAMESPACE)
    for name, values in (
        ("duplex-orchestrator-auth", {"api-keys": 20, "token-secret": 32}),
        ("duplex-redis", {"password": 24}),
        ("duplex-worker-admin", {"token": 24}),
    ):
        literals = [f"--from-literal={k}={secrets.token_hex(n)}" for k, n in values.items()]
        cluster.kubectl("-n", NAMESPACE, "create", "secret", "generic", name, *literals)
    cluster.kubectl("apply", "-k", str(overlay))
    yield NAMESPACE
    cluster.kubectl("delete", "-k", str(overlay), "--ignore-not-found", "--wait", timeout=300)


async def test_apply_k_installs_a_system_that_serves_a_model(
    cluster: Cluster, installed: str
) -> None:
    namespace = cluster.get("", "namespace", installed)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    cluster.kubectl(
        "-n", installed, "rollout", "status", "deployment/duplex-operator", "--timeout=3m"
    )
    cluster.kubectl("-n", installed, "rollout", "status", "deployment/duplex-redis", "--timeout=3m")
    cluster.kubectl(
        "-n", installed, "apply", "-f", str(MANIFESTS / "samples" / "ttsmodel-piper-joe.yaml")
    )
    cluster.kubectl(
        "-n", installed, "wait", "--for=condition=Resident", "ttsmodel/piper-joe", "--timeout=3m"
    )
    # Ready once it has found the worker in Redis.
    cluster.kubectl(
        "-n", installed, "rollout", "status", "deployment/duplex-orchestrator", "--timeout=3m"
    )
    [worker] = until(
        lambda: cluster.pods(installed, "app.kubernetes.io/component=worker"),
        "the operator's worker Pod",
        60,
    )
    assert pod_ready(worker)
    # It serves TLS with the certificate the manifests' Job made, which ran to its end.
    [job] = cluster.get(installed, "jobs", selector="app.kubernetes.io/component=certificates")[
        "items"
    ]
    assert job["status"].get("succeeded") == 1
    [volume] = [v for v in worker["spec"]["volumes"] if v["name"] == "tls"]
    assert cluster.secret(installed, volume["secret"]["secretName"])["tls.crt"]
    assert (
        worker["spec"]["containers"][0]["image"]
        == cluster.get(installed, "deployment", "duplex-operator")["spec"]["template"]["spec"][
            "containers"
        ][0]["image"]
    )
    url = cluster.service_url(installed, "duplex-orchestrator")
    key = cluster.api_key(installed, "duplex-orchestrator-auth")
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/api/models", headers={"Authorization": f"Bearer {key}"}) as response,
    ):
        models = {m["model_id"]: m for m in (await response.json())["models"]}
    assert models["piper-joe"]["resident"] is True
