"""The operator in a test: its processes, worker Pods run as local processes, and probes.

A real kube-apiserver (tests/conftest.py), real Redis, `duplex operator` processes and, for
each worker Pod they create, a real `duplex worker --kube` process started by DevKubelet.
Operators and workers authenticate only through a credential plugin (an exec user).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
import yaml

from duplex.discovery import WorkerRecord, worker_key
from duplex.kube import KubeClient
from duplex.modelset import WORKER_SELECTOR
from duplex.testing.apiserver import KubeApiServer
from duplex.testing.kubelet import DevKubelet
from duplex_operator.resources import parse_time
from tests.kubeconfigs import exec_kubeconfig

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
        api: KubeApiServer,
        client: KubeClient,
        namespace: str,
        redis_url: str,
        operators: list[OperatorProcess],
        kubelet: DevKubelet,
        calls: Path,
    ) -> None:
        self.api = api
        self.calls = calls
        self.client = client
        self.ns = namespace
        self.redis = aioredis.from_url(redis_url)
        self.operators = operators
        self.kubelet = kubelet

    @property
    def operator(self) -> OperatorProcess:
        return self.operators[0]

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

    async def lease_holder(self) -> str | None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self.ns}/leases/duplex-operator"
        answer = await self.client.request_raw("GET", path)
        if answer.status != 200:
            return None
        holder = (answer.json().get("spec") or {}).get("holderIdentity")
        return str(holder) if holder else None

    def plugin_calls(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    def writes(self, *, since: float = 0.0) -> list[dict[str, Any]]:
        """The operators' writes in this namespace (from the apiserver's audit log)."""
        return [
            event
            for event in self.api.writes()
            if event.get("userAgent", "").startswith("duplex-operator/")
            and (event.get("objectRef") or {}).get("namespace") == self.ns
            and (parse_time(event["stageTimestamp"]) or 0.0) >= since
        ]

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
                operators = "\n".join(f"--- operator\n{o.tail()}" for o in self.operators)
                raise AssertionError(f"timed out waiting for {what}\n{operators}\n{logs}")
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


# A short lease keeps a restarted operator's wait short; the takeover test uses the default.
FAST_LEASE = {"lease_seconds": 3, "renew_seconds": 2, "retry_seconds": 0.5}


def _write_config(path: Path, namespace: str, redis_url: str, **overrides: Any) -> Path:
    config: dict[str, Any] = {
        "namespace": namespace,
        "redis": redis_url,
        "resync_seconds": 0.5,
        "leader_election": FAST_LEASE,
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
        **overrides,
    }
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.asynccontextmanager
async def running_cluster(
    api: KubeApiServer,
    namespace: str,
    redis_url: str,
    directory: Path,
    *,
    operators: int = 1,
    **config: Any,
) -> AsyncIterator[Cluster]:
    """Operators and their worker Pods' processes, all with a plugin-only kubeconfig."""
    kubeconfig, calls = exec_kubeconfig(api, directory)
    path = _write_config(directory / "operator.yaml", namespace, redis_url, **config)
    processes = [
        OperatorProcess(path, kubeconfig, directory / f"operator-{i}.log") for i in range(operators)
    ]
    client = KubeClient.load(api.kubeconfig)
    kubelet = DevKubelet(
        client, namespace, kubeconfig, directory / "pods", env={"PYTHONUNBUFFERED": "1"}
    )
    cluster = Cluster(api, client, namespace, redis_url, processes, kubelet, calls)
    try:
        for process in processes:
            process.start()
        await kubelet.start()
        yield cluster
    finally:
        for process in processes:
            process.stop()
        await kubelet.aclose()
        await cluster.redis.aclose()
        await client.aclose()


def model_spec(model_id: str, family: str = "pico", **extra: Any) -> dict[str, Any]:
    return {
        "modelId": model_id,
        "family": family,
        "resources": {"memoryMiB": 10},
        **extra,
    }


async def when_true(probe: Awaitable[dict[str, Any] | None]) -> dict[str, Any] | None:
    cond = await probe
    return cond if cond is not None and cond["status"] == "True" else None


async def when_false(probe: Awaitable[dict[str, Any] | None]) -> dict[str, Any] | None:
    cond = await probe
    return cond if cond is not None and cond["status"] == "False" else None


async def in_phase(cluster: Cluster, name: str, phase: str) -> dict[str, Any] | None:
    obj = await cluster.get("voicesessions", name)
    return obj if (obj.get("status") or {}).get("phase") == phase else None


def cond_of(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    [found] = [c for c in obj["status"]["conditions"] if c["type"] == kind]
    return dict(found)


async def when_unknown(probe: Awaitable[dict[str, Any] | None]) -> dict[str, Any] | None:
    cond = await probe
    return cond if cond is not None and cond["status"] == "Unknown" else None
