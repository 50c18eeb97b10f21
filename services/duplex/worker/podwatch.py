"""Kubernetes mode: the worker loads exactly the models its own Pod's model set names.

The operator places models by writing the `duplex.dev/model-set` annotation (comma-separated
model ids) on worker Pods, and `duplex.dev/model-specs` (a JSON list of catalog entries) so a
worker can load models it was not built with (e.g. a Piper voice on a volume). The worker
watches its Pod, reconciles its ModelManager to the set, and reports what is really resident,
and errors, in its Redis record. Placement and idle eviction are the operator's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp

from duplex.kube import KubeApiError, KubeClient, sleep_backoff
from duplex.modelset import MODEL_SET, MODEL_SPECS, parse_model_set, parse_model_specs
from duplex.tasks import TaskSet
from duplex.worker.model_manager import ModelManager

# How long a start waits for the Pod's own account to be given its rights (see `start`).
_FORBIDDEN_GRACE_SECONDS = 20.0

log = logging.getLogger(__name__)


class PodModelSet:
    """Follows one Pod's model-set annotation and reconciles `manager` to it."""

    def __init__(
        self, client: KubeClient, namespace: str, pod_name: str, manager: ModelManager
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._pod = pod_name
        self._manager = manager
        self._wanted: tuple[str | None, str | None] | None = None
        self._applied: tuple[str | None, str | None] | None = None
        self._wake = asyncio.Event()
        self._tasks = TaskSet("pod-model-set")
        # Set once the first wanted set has been applied (loads finished or failed).
        self.synced = asyncio.Event()
        # The set being applied; reported in the Redis record so the operator can tell a
        # load error of this set from a stale one.
        self.applied_ids: list[str] = []

    @property
    def _pods_path(self) -> str:
        return f"/api/v1/namespaces/{self._namespace}/pods"

    async def start(self) -> None:
        # Reading the Pod once up front makes a wrong name, namespace or RBAC fail the start;
        # a refusal is asked again for a while, as the operator makes a Pod's own account
        # (its Role and RoleBinding) just after the Pod.
        deadline = time.monotonic() + _FORBIDDEN_GRACE_SECONDS
        attempt = 0
        while True:
            try:
                pod = await self._client.get(f"{self._pods_path}/{self._pod}")
                break
            except KubeApiError as exc:
                if exc.status != 403 or time.monotonic() > deadline:
                    raise
                await sleep_backoff(attempt, cap=2.0)
                attempt += 1
        self._observe(pod)
        version = str(pod["metadata"].get("resourceVersion", ""))
        self._tasks.spawn(self._apply_loop(), "apply")
        self._tasks.spawn(self._watch_loop(version), "watch")

    async def aclose(self) -> None:
        await self._tasks.aclose()

    def _observe(self, pod: dict[str, Any]) -> None:
        annotations = pod.get("metadata", {}).get("annotations") or {}
        wanted = (annotations.get(MODEL_SET), annotations.get(MODEL_SPECS))
        if wanted != self._wanted:
            self._wanted = wanted
            self._wake.set()

    async def _apply_loop(self) -> None:
        # Latest wins: changes that arrive during a slow load are applied once it finishes.
        while True:
            await self._wake.wait()
            self._wake.clear()
            wanted = self._wanted
            if wanted is None or wanted == self._applied:
                continue
            self._applied = wanted
            model_set, specs = wanted
            try:
                for entry in parse_model_specs(specs):
                    self._manager.catalog.define(entry.to_spec())
            except ValueError as exc:
                log.error("%s", exc)
            ids = parse_model_set(model_set)
            self.applied_ids = ids
            log.info("model set of pod %s: %s", self._pod, ", ".join(ids) or "(empty)")
            await self._manager.reconcile(ids)
            self.synced.set()

    async def _watch_loop(self, version: str | None) -> None:
        attempt = 0
        while True:
            try:
                if version is None:
                    pod = await self._client.get(f"{self._pods_path}/{self._pod}")
                    self._observe(pod)
                    version = str(pod["metadata"].get("resourceVersion", ""))
                async for event in self._client.watch(
                    self._pods_path,
                    resource_version=version,
                    field_selector=f"metadata.name={self._pod}",
                ):
                    obj = event.get("object") or {}
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._observe(obj)
                    elif event.get("type") == "DELETED":
                        # The kubelet stops this container; keep serving until it does.
                        log.warning("pod %s was deleted", self._pod)
                attempt = 0
            except KubeApiError as exc:
                if exc.status == 410:  # our resourceVersion is too old: read the Pod afresh
                    version = None
                    continue
                log.warning("watching pod %s failed: %s", self._pod, exc)
                await sleep_backoff(attempt)
                attempt += 1
            except (aiohttp.ClientError, OSError, TimeoutError, json.JSONDecodeError) as exc:
                log.warning("watching pod %s failed: %s", self._pod, exc)
                await sleep_backoff(attempt)
                attempt += 1
