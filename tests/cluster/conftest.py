"""The cluster tests: the chart, the manifests and the image on a real single-node Kubernetes.

The cluster is the one `tools/cluster up` starts on this machine (kubelet, containerd, CoreDNS,
kube-proxy). Its Pod and Service addresses exist only inside its network namespace, so these
tests run there:

    tools/cluster up && tools/cluster exec pytest -m cluster tests/cluster

Every test here carries the `cluster` marker. A run that neither asks for that marker nor runs
inside the cluster deselects them (the summary counts them as deselected); a run that asks
for them outside the cluster fails, it does not skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "tools" / "cluster"

Obj = dict[str, Any]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    asked = "cluster" in (config.option.markexpr or "") or bool(os.environ.get("DUPLEX_CLUSTER"))
    if asked:
        return
    deselected = [item for item in items if item.get_closest_marker("cluster")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("cluster")]


class CommandFailed(AssertionError):
    pass


def run(*argv: str | Path, input: str | None = None, timeout: float = 120) -> str:
    """A command's stdout; its stderr in the failure when it exits non-zero."""
    result = subprocess.run(
        [str(a) for a in argv],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        command = " ".join(str(a) for a in argv)
        raise CommandFailed(f"{command} exited {result.returncode}:\n{result.stderr}")
    return result.stdout


def until(condition: Callable[[], Any], what: str, timeout: float, interval: float = 0.5) -> Any:
    """Poll a condition of the cluster (kubectl has no watch for most of them) until truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 120) -> str:
        return run("kubectl", "--kubeconfig", self.kubeconfig, *args, input=input, timeout=timeout)

    def helm(self, *args: str, timeout: float = 600) -> str:
        return run("helm", "--kubeconfig", self.kubeconfig, *args, timeout=timeout)

    def get(self, namespace: str, kind: str, name: str = "", selector: str = "") -> Obj:
        args = ["-n", namespace, "get", kind, *([name] if name else []), "-o", "json"]
        if selector:
            args += ["-l", selector]
        body: Obj = json.loads(self.kubectl(*args))
        return body

    def api_key(self, namespace: str, secret: str) -> str:
        """The orchestrator's API key, from the Secret it reads its keys from."""
        import base64

        data = self.get(namespace, "secret", secret)["data"]
        return base64.b64decode(data["api-keys"]).decode().split(",")[0]

    def secret(self, namespace: str, name: str) -> dict[str, bytes]:
        """A Secret's values, decoded."""
        import base64

        data = self.get(namespace, "secret", name).get("data") or {}
        return {key: base64.b64decode(value) for key, value in data.items()}

    def pods(self, namespace: str, selector: str) -> list[Obj]:
        items: list[Obj] = self.get(namespace, "pods", selector=selector)["items"]
        return items

    def service_url(self, namespace: str, name: str, scheme: str = "http") -> str:
        """Its ClusterIP and first port: reachable here, inside the cluster's network."""
        service = self.get(namespace, "service", name)
        port = service["spec"]["ports"][0]["port"]
        return f"{scheme}://{service['spec']['clusterIP']}:{port}"


def release_redis_url(cluster: Cluster, namespace: str, release: str) -> str:
    """A release's Redis, with the password from the Secret the chart generated."""
    address = cluster.service_url(namespace, f"{release}-redis", scheme="redis")
    password = cluster.secret(namespace, f"{release}-redis")["password"].decode()
    return address.replace("redis://", f"redis://:{password}@") + "/0"


def orchestrator_tls(cluster: Cluster, namespace: str, release: str, directory: Path) -> Any:
    """What a release's orchestrator reaches its workers with (a duplex.rpc.security.ClientTls):
    its certificate and the CA, from its Secret, written to `directory`."""
    from duplex.rpc.security import ClientTls

    for key, value in cluster.secret(namespace, f"{release}-orchestrator-tls").items():
        (directory / key).write_bytes(value)
    return ClientTls(
        ca=str(directory / "ca.crt"),
        cert=str(directory / "tls.crt"),
        key=str(directory / "tls.key"),
        server_name=f"{release}-worker",
    )


@dataclass(frozen=True)
class Images:
    duplex: str
    redis: str
    livekit: str


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    state = os.environ.get("DUPLEX_CLUSTER")
    if not state:
        pytest.fail(
            "the cluster tests run inside the local cluster's network: "
            "tools/cluster up, then tools/cluster exec pytest -m cluster tests/cluster"
        )
    cluster = Cluster(Path(state) / "kubeconfig")
    cluster.kubectl("get", "--raw", "/readyz")
    return cluster


@pytest.fixture(scope="session")
def images(cluster: Cluster) -> Images:
    """The project's image and local stand-ins for the chart's Redis and LiveKit images.

    Built with Docker and imported into the cluster's containerd by `tools/cluster image`
    (cached: a no-op when nothing changed).
    """
    duplex, redis, livekit = run(
        CLUSTER, "image", "duplex", "redis", "livekit", timeout=1800
    ).split()
    return Images(duplex, redis, livekit)


def image_values(images: Images) -> list[str]:
    """`--set` values that run the chart on the cluster's own images, never pulling."""
    values: list[str] = []
    for key, ref in (
        ("image", images.duplex),
        ("redis.image", images.redis),
        ("livekit.image", images.livekit),
    ):
        repository, tag = ref.rsplit(":", 1)
        values += [
            f"{key}.repository={repository}",
            f"{key}.tag={tag}",
            f"{key}.pullPolicy=Never",
        ]
    return values


def restricted_namespace(cluster: Cluster, name: str) -> None:
    """A namespace that enforces the `restricted` Pod Security Standard."""
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": name,
                    "labels": {
                        "pod-security.kubernetes.io/enforce": "restricted",
                        "pod-security.kubernetes.io/enforce-version": "latest",
                    },
                },
            }
        ),
    )


def delete_namespace(cluster: Cluster, name: str) -> None:
    cluster.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait", timeout=300)


@contextmanager
def helm_release(
    cluster: Cluster, images: Images, namespace: str, release: str, values: list[str]
) -> Iterator[str]:
    """The chart installed (and waited for) into a fresh restricted namespace, with our
    images and `values`; uninstalled and the namespace deleted afterwards."""
    delete_namespace(cluster, namespace)
    restricted_namespace(cluster, namespace)
    settings = [*image_values(images), *values]
    cluster.helm(
        "install",
        release,
        str(ROOT / "charts" / "duplex"),
        "--namespace",
        namespace,
        "--wait",
        "--timeout",
        "5m",
        *[arg for value in settings for arg in ("--set", value)],
    )
    try:
        yield release
    finally:
        subprocess.run(
            [
                "helm",
                "--kubeconfig",
                str(cluster.kubeconfig),
                "uninstall",
                release,
                "-n",
                namespace,
            ],
            capture_output=True,
            check=False,
            timeout=300,
        )
        cluster.kubectl("delete", "ttsmodels,voicesessions", "--all", "-n", namespace, "--wait")
        delete_namespace(cluster, namespace)


def condition(obj: Obj, kind: str) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == kind and c["status"] == "True" for c in conditions)


def pod_ready(pod: Obj) -> bool:
    return pod["status"].get("phase") == "Running" and condition(pod, "Ready")
