"""Run worker Pods as local processes, for an API server that has no nodes.

The operator's tests and `duplex bench operator` run against a real kube-apiserver without a
kubelet. This does the kubelet's part for worker Pods only: it starts a real `duplex worker`
process with the Pod's own arguments (ports moved to free loopback ports) and environment
(Secret references read, $(VAR) references filled in, as the kubelet does), with the Pod's Secret
volumes written to a directory of its own, marks the Pod Running with a loopback IP, and when
the Pod is deleted stops the process and removes the object, as a kubelet confirms a graceful
deletion.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp

from duplex.kube import KubeApiError, KubeClient, sleep_backoff
from duplex.modelset import WORKER_SELECTOR
from duplex.ports import free_ports
from duplex.tasks import TaskSet

log = logging.getLogger(__name__)

# Flags whose values belong to the node, not the Pod: replaced with loopback ones.
_NODE_FLAGS = {"--host", "--port", "--advertise", "--metrics-port", "--health-port"}
# The kubelet's $(VAR) references in env values; $$ escapes one.
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass
class LocalPod:
    name: str
    process: asyncio.subprocess.Process
    port: int
    log_file: IO[bytes]


class DevKubelet:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        kubeconfig: Path | Callable[[str], Awaitable[Path]],
        log_dir: Path,
        *,
        env: dict[str, str] | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        # Every worker's credentials, or where each Pod's ServiceAccount gets its own (as a
        # kubelet mounts a token of the Pod's account): called with the account's name.
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.env = env or {}
        self.pods: dict[str, LocalPod] = {}
        self.started: list[str] = []  # every Pod name ever started, in order
        self._tasks = TaskSet("dev-kubelet")
        self._lock = asyncio.Lock()

    @property
    def _pods_path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods"

    async def start(self) -> None:
        self._tasks.spawn(self._watch(), "watch")

    async def _watch(self) -> None:
        attempt = 0
        while True:
            try:
                listing = await self.client.list(self._pods_path, label_selector=WORKER_SELECTOR)
                for pod in listing.get("items", []):
                    await self._sync(pod)
                version = listing["metadata"]["resourceVersion"]
                async for event in self.client.watch(
                    self._pods_path, resource_version=version, label_selector=WORKER_SELECTOR
                ):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        await self._sync(event["object"])
                    elif event["type"] == "DELETED":
                        await self.stop_pod(event["object"]["metadata"]["name"])
                attempt = 0
            except (KubeApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("dev kubelet watch failed: %s", exc)
                await sleep_backoff(attempt)
                attempt += 1

    async def _sync(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        async with self._lock:
            if pod["metadata"].get("deletionTimestamp"):
                await self.stop_pod(name)
                with contextlib.suppress(KubeApiError):
                    await self.client.delete(f"{self._pods_path}/{name}", grace_seconds=0)
                return
            if name in self.pods and self.pods[name].process.returncode is None:
                return
            await self._run(pod)

    async def _run(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]
        port = free_ports(1)[0]
        args: list[str] = []
        raw = list(container.get("args") or [])
        i = 0
        while i < len(raw):
            if raw[i] in _NODE_FLAGS:
                i += 2
                continue
            args.append(raw[i])
            i += 1
        args += [
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            "0",
            *(["--health-port", str(free_ports(1)[0])] if "--health-port" in raw else []),
            "--pod-name",
            name,
            "--pod-namespace",
            self.namespace,
            "--kubeconfig",
            str(await self._kubeconfig_of(pod)),
        ]
        fields = {
            "metadata.name": name,
            "metadata.namespace": self.namespace,
            "metadata.uid": str(pod["metadata"].get("uid", "")),
            "status.podIP": "127.0.0.1",
        }
        pod_env = await self._resolve_env(container.get("env") or [], fields)
        pod_env.update(POD_NAME=name, POD_NAMESPACE=self.namespace, POD_IP="127.0.0.1")
        mounts = await self._write_secret_volumes(pod)
        for i, arg in enumerate(args):
            for mount_path, local in mounts.items():
                if arg == mount_path or arg.startswith(mount_path + "/"):
                    args[i] = str(local) + arg[len(mount_path) :]
        env = {**os.environ, **self.env, **pod_env}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = (self.log_dir / f"{name}.log").open("ab")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "duplex.cli",
            *args,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        self.pods[name] = LocalPod(name, process, port, log_file)
        self.started.append(name)
        log.info("started worker process %d for pod %s on port %d", process.pid, name, port)
        status = {
            "status": {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "hostIP": "127.0.0.1",
                "startTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        }
        with contextlib.suppress(KubeApiError):
            await self.client.patch(f"{self._pods_path}/{name}/status", status)

    async def _kubeconfig_of(self, pod: dict[str, Any]) -> Path:
        if isinstance(self.kubeconfig, Path):
            return self.kubeconfig
        return await self.kubeconfig(pod["spec"].get("serviceAccountName") or "default")

    async def _secret(self, name: str) -> dict[str, bytes]:
        secret = await self.client.get(f"/api/v1/namespaces/{self.namespace}/secrets/{name}")
        return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}

    async def _resolve_env(
        self, items: list[dict[str, Any]], fields: dict[str, str]
    ) -> dict[str, str]:
        """The container's variables as the kubelet sets them, in order."""
        env: dict[str, str] = {}
        for item in items:
            source = item.get("valueFrom") or {}
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                env[item["name"]] = (await self._secret(ref["name"]))[ref["key"]].decode()
            elif "fieldRef" in source:
                env[item["name"]] = fields[source["fieldRef"]["fieldPath"]]
            elif "value" in item:
                value = str(item["value"])
                env[item["name"]] = _REFERENCE.sub(
                    lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), value
                )
        return env

    async def _write_secret_volumes(self, pod: dict[str, Any]) -> dict[str, Path]:
        """Each Secret volume's files in a directory of the Pod's: mount path -> directory."""
        secrets = {
            v["name"]: v["secret"]["secretName"]
            for v in pod["spec"].get("volumes") or []
            if "secret" in v
        }
        mounts: dict[str, Path] = {}
        for mount in pod["spec"]["containers"][0].get("volumeMounts") or []:
            if mount["name"] not in secrets:
                continue
            local = self.log_dir / pod["metadata"]["name"] / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            for key, value in (await self._secret(secrets[mount["name"]])).items():
                (local / key).write_bytes(value)
            mounts[mount["mountPath"]] = local
        return mounts

    async def stop_pod(self, name: str, *, kill: bool = False) -> None:
        local = self.pods.pop(name, None)
        if local is None:
            return
        if local.process.returncode is None:
            if kill:
                local.process.kill()
            else:
                local.process.terminate()
            try:
                async with asyncio.timeout(10):
                    await local.process.wait()
            except TimeoutError:
                local.process.kill()
                await local.process.wait()
        local.log_file.close()

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    async def aclose(self) -> None:
        await self._tasks.aclose()
        for name in list(self.pods):
            await self.stop_pod(name)
