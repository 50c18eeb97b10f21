"""The operator against a real kube-apiserver, real Redis and real worker processes.

There is no kubelet: `DevKubelet` starts a real `duplex worker --kube` process for each worker
Pod the operator creates, with that Pod's arguments, as a kubelet would run its container.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
import yaml

from duplex.discovery import WorkerRecord, worker_key
from duplex.kube import KubeClient
from duplex_operator.devcluster import KubeApiServer
from duplex_operator.devkubelet import DevKubelet
from duplex_operator.resources import MODEL_SET, WORKER_SELECTOR
from tests.conftest import RedisServer

T = TypeVar("T")

GROUP_PATH = "/apis/duplex.dev/v1alpha1/namespaces"


class OperatorProcess:
    """`duplex operator` as its own process, so a test can kill it like a crashed pod."""

    def __init__(self, config: Path, kubeconfig: Path, log: Path) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "duplex.cli",
            "operator",
            "--config",
            str(config),
            "--kubeconfig",
            str(kubeconfig),
        ]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


class Cluster:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        redis_url: str,
        operator: OperatorProcess,
        kubelet: DevKubelet,
    ) -> None:
        self.client = client
        self.ns = namespace
        self.redis = aioredis.from_url(redis_url)
        self.operator = operator
        self.kubelet = kubelet

    def path(self, plural: str, name: str | None = None) -> str:
        base = f"{GROUP_PATH}/{self.ns}/{plural}"
        return f"{base}/{name}" if name else base

    async def apply(self, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        obj = {
            "apiVersion": "duplex.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": name},
            "spec": spec,
        }
        return await self.client.create_object(obj, namespace=self.ns)

    async def get(self, plural: str, name: str) -> dict[str, Any]:
        return await self.client.get(self.path(plural, name))

    async def pods(self) -> list[dict[str, Any]]:
        listing = await self.client.list(
            f"/api/v1/namespaces/{self.ns}/pods", label_selector=WORKER_SELECTOR
        )
        items: list[dict[str, Any]] = listing["items"]
        return items

    async def record(self, worker: str) -> WorkerRecord | None:
        raw = await self.redis.get(worker_key(worker))
        return WorkerRecord.from_json(raw) if raw else None

    async def events(self, reason: str) -> list[dict[str, Any]]:
        listing = await self.client.list(f"/api/v1/namespaces/{self.ns}/events")
        return [e for e in listing["items"] if e.get("reason") == reason]

    async def eventually(
        self, probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 60.0
    ) -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = await probe()
            if value:
                return value
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {name}\n{self.kubelet.log_tail(name)}" for name in self.kubelet.started
                )
                raise AssertionError(
                    f"timed out waiting for {what}\n--- operator\n{self.operator.tail()}\n{logs}"
                )
            await asyncio.sleep(0.2)

    async def condition(self, plural: str, name: str, kind: str) -> dict[str, Any] | None:
        obj = await self.get(plural, name)
        for cond in (obj.get("status") or {}).get("conditions") or []:
            if cond["type"] == kind:
                return dict(cond)
        return None

    async def resident_on(self, worker: str, model_id: str) -> bool:
        record = await self.record(worker)
        return record is not None and model_id in record.resident_models


def _write_config(path: Path, namespace: str, redis_url: str) -> Path:
    config = {
        "namespace": namespace,
        "redis": redis_url,
        "resync_seconds": 0.5,
        "pools": [
            {
                "name": "cpu",
                "min_pods": 0,
                "max_pods": 2,
                "memory_mib": 100,
                "image": "duplex:test",
                "resources": {
                    "requests": {"cpu": "500m", "memory": "512Mi"},
                    "limits": {"memory": "1Gi"},
                },
                "args": ["--test-models"],
            },
            {
                "name": "gpu",
                "gpu": True,
                "min_pods": 0,
                "max_pods": 1,
                "memory_mib": 8000,
                "node_selector": {"nvidia.com/gpu.present": "true"},
            },
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def operator_config(tmp_path: Path, kube_namespace: str, redis_server: RedisServer) -> Path:
    return _write_config(tmp_path / "operator.yaml", kube_namespace, redis_server.url)


@pytest.fixture
def operator_process(
    operator_config: Path, kube_apiserver: KubeApiServer, tmp_path: Path
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(operator_config, kube_apiserver.kubeconfig, tmp_path / "op.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def cluster(
    kube_apiserver: KubeApiServer,
    kube_namespace: str,
    redis_server: RedisServer,
    operator_process: OperatorProcess,
    tmp_path: Path,
) -> AsyncIterator[Cluster]:
    client = KubeClient.load(kube_apiserver.kubeconfig)
    kubelet = DevKubelet(
        client,
        kube_namespace,
        kube_apiserver.kubeconfig,
        tmp_path / "pods",
        env={"PYTHONUNBUFFERED": "1"},
    )
    await kubelet.start()
    cluster = Cluster(client, kube_namespace, redis_server.url, operator_process, kubelet)
    try:
        yield cluster
    finally:
        await kubelet.aclose()
        await cluster.redis.aclose()
        await client.aclose()


def big(model_id: str) -> dict[str, Any]:
    return {**model_spec(model_id, minResident=1), "resources": {"memoryMiB": 60}}


def model_spec(model_id: str, family: str = "pico", **extra: Any) -> dict[str, Any]:
    return {
        "modelId": model_id,
        "family": family,
        "resources": {"memoryMiB": 10},
        **extra,
    }


async def test_models_are_placed_loaded_bound_and_evicted(cluster: Cluster) -> None:
    # A model kept resident: the operator creates a worker Pod for it.
    await cluster.apply("TTSModel", "pico-en", model_spec("pico-en", minResident=1))

    async def one_pod() -> dict[str, Any] | None:
        pods = await cluster.pods()
        return pods[0] if len(pods) == 1 else None

    pod = await cluster.eventually(one_pod, "a worker pod")
    name = pod["metadata"]["name"]
    assert name == "duplex-worker-cpu-0"
    assert pod["metadata"]["annotations"][MODEL_SET] == "pico-en"
    assert pod["metadata"]["labels"]["duplex.dev/pool"] == "cpu"
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("TTSModel", "pico-en")
    container = pod["spec"]["containers"][0]
    assert container["image"] == "duplex:test"
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "512Mi"}
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert container["args"][:2] == ["worker", "--kube"]
    assert "--test-models" in container["args"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"

    # The real worker process loads it and says so in Redis; the status follows.
    await cluster.eventually(lambda: cluster.resident_on(name, "pico-en"), "pico-en resident")
    resident = await cluster.eventually(
        lambda: _true(cluster.condition("ttsmodels", "pico-en", "Resident")), "Resident=True"
    )
    assert resident["reason"] == "Loaded"
    status = (await cluster.get("ttsmodels", "pico-en"))["status"]
    assert status["residentOn"] == [name]
    assert status["observedGeneration"] == 1

    # A session for another model hot-loads it onto the same worker (it fits) and binds.
    await cluster.apply(
        "TTSModel",
        "pico-de",
        model_spec("pico-de", minResident=0, ttlSeconds=2, minResidencySeconds=1),
    )
    await cluster.apply("VoiceSession", "call-1", {"modelId": "pico-de", "room": "room-1"})
    session = await cluster.eventually(
        lambda: _phase(cluster, "call-1", "Bound"), "the session to be Bound"
    )
    assert session["status"]["worker"] == name
    assert session["status"]["workerAddr"].startswith("127.0.0.1:")
    await cluster.eventually(lambda: cluster.resident_on(name, "pico-de"), "pico-de resident")
    await cluster.eventually(
        lambda: _true(cluster.condition("voicesessions", "call-1", "Ready")), "session Ready"
    )
    assert len(await cluster.pods()) == 1

    # While the session is bound, its model stays even though it is idle past the TTL.
    await asyncio.sleep(3.5)
    assert await cluster.resident_on(name, "pico-de")
    pod = (await cluster.pods())[0]
    assert pod["metadata"]["annotations"][MODEL_SET] == "pico-en,pico-de"

    # The session ends; after the TTL the operator patches the model out, the worker unloads.
    await cluster.client.delete(cluster.path("voicesessions", "call-1"))

    async def unloaded() -> bool:
        return not await cluster.resident_on(name, "pico-de")

    await cluster.eventually(unloaded, "pico-de unloaded", timeout=30)
    pod = (await cluster.pods())[0]
    assert pod["metadata"]["annotations"][MODEL_SET] == "pico-en"
    assert await cluster.resident_on(name, "pico-en")
    evicted = await cluster.eventually(lambda: cluster.events("Evicted"), "an Evicted event")
    assert evicted[0]["involvedObject"]["name"] == "pico-de"
    resident = await cluster.eventually(
        lambda: _false(cluster.condition("ttsmodels", "pico-de", "Resident")), "Resident=False"
    )


async def test_a_model_the_worker_cannot_load_fails_with_the_workers_error(
    cluster: Cluster,
) -> None:
    await cluster.apply(
        "TTSModel",
        "broken",
        model_spec("broken", family="piper", source="/nonexistent/voice.onnx", minResident=1),
    )
    await cluster.apply("VoiceSession", "call-2", {"modelId": "broken", "room": "room-2"})
    ready = await cluster.eventually(
        lambda: _false(cluster.condition("ttsmodels", "broken", "Ready")), "Ready=False"
    )
    assert ready["reason"] == "LoadFailed"
    assert "/nonexistent/voice.onnx" in ready["message"]
    assert "duplex-worker-cpu-0" in ready["message"]
    session = await cluster.eventually(
        lambda: _phase(cluster, "call-2", "Failed"), "the session to fail"
    )
    assert "/nonexistent/voice.onnx" in session["status"]["conditions"][0]["message"]
    assert await cluster.events("LoadFailed")
    # The failed model is taken out of the set and is not retried for this generation.
    pod = (await cluster.pods())[0]
    await asyncio.sleep(1.5)
    pod = (await cluster.pods())[0]
    assert "broken" not in pod["metadata"]["annotations"].get(MODEL_SET, "")


async def test_restarting_the_operator_keeps_pods_and_statuses(cluster: Cluster) -> None:
    await cluster.apply("TTSModel", "pico-en", model_spec("pico-en", minResident=1))
    resident = await cluster.eventually(
        lambda: _true(cluster.condition("ttsmodels", "pico-en", "Resident")), "Resident=True"
    )
    # Kill it mid-reconcile: right after a burst of changes it must react to.
    await cluster.apply("TTSModel", "pico-fr", model_spec("pico-fr", minResident=1))
    await cluster.apply("TTSModel", "pico-es", model_spec("pico-es", minResident=1))
    await asyncio.sleep(0.3)
    cluster.operator.kill()
    cluster.operator.start()
    for model in ("pico-fr", "pico-es"):
        await cluster.eventually(
            lambda model=model: _true(cluster.condition("ttsmodels", model, "Resident")),
            f"{model} Resident",
        )
    pods = await cluster.pods()
    # 3 models x 10 MiB fit in one 100 MiB worker: still exactly one Pod, never a duplicate.
    assert [p["metadata"]["name"] for p in pods] == ["duplex-worker-cpu-0"]
    assert cluster.kubelet.started == ["duplex-worker-cpu-0"]
    again = await cluster.condition("ttsmodels", "pico-en", "Resident")
    assert again == resident  # not rewritten: same lastTransitionTime


async def test_placement_spreads_by_memory_and_gpu_models_go_to_gpu_pods(
    cluster: Cluster,
) -> None:
    # 60 MiB each in 100 MiB workers: the second copy of memory needs a second Pod.
    await cluster.apply(
        "TTSModel",
        "pico-en",
        {**model_spec("pico-en", minResident=1), "resources": {"memoryMiB": 60}},
    )
    await cluster.apply(
        "TTSModel",
        "pico-it",
        {**model_spec("pico-it", minResident=1), "resources": {"memoryMiB": 60}},
    )

    async def two_pods() -> list[dict[str, Any]] | None:
        pods = await cluster.pods()
        return pods if len(pods) == 2 else None

    pods = await cluster.eventually(two_pods, "two worker pods")
    sets = sorted(p["metadata"]["annotations"][MODEL_SET] for p in pods)
    assert sets == ["pico-en", "pico-it"]

    # A third does not fit anywhere and the pool is at its maximum: a clear condition.
    await cluster.apply(
        "TTSModel",
        "pico-de",
        {**model_spec("pico-de", minResident=1), "resources": {"memoryMiB": 60}},
    )
    ready = await cluster.eventually(
        lambda: _false(cluster.condition("ttsmodels", "pico-de", "Ready")), "Ready=False"
    )
    assert ready["reason"] == "NoCapacity"
    assert "full" in ready["message"]

    # A GPU model gets a GPU Pod: one nvidia.com/gpu, the pool's selector and the toleration.
    await cluster.apply(
        "TTSModel",
        "pico-gb",
        {**model_spec("pico-gb", minResident=1), "resources": {"memoryMiB": 10, "gpu": True}},
    )

    async def gpu_pod() -> dict[str, Any] | None:
        for pod in await cluster.pods():
            if pod["metadata"]["labels"]["duplex.dev/pool"] == "gpu":
                return pod
        return None

    pod = await cluster.eventually(gpu_pod, "a GPU worker pod")
    spec = pod["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert pod["metadata"]["annotations"][MODEL_SET] == "pico-gb"


async def _true(probe: Awaitable[dict[str, Any] | None]) -> dict[str, Any] | None:
    cond = await probe
    return cond if cond is not None and cond["status"] == "True" else None


async def _false(probe: Awaitable[dict[str, Any] | None]) -> dict[str, Any] | None:
    cond = await probe
    return cond if cond is not None and cond["status"] == "False" else None


async def _phase(cluster: Cluster, name: str, phase: str) -> dict[str, Any] | None:
    obj = await cluster.get("voicesessions", name)
    return obj if (obj.get("status") or {}).get("phase") == phase else None
