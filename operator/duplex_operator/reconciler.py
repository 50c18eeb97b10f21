"""Observe the world, plan, apply: the operator's one reconcile loop.

Watch events (delivered by kopf) only wake the loop; every pass lists the TTSModels,
VoiceSessions and worker Pods and reads the workers' Redis records afresh, so a missed or
reordered event cannot leave anything wrong for longer than one resync period.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from duplex.discovery import EVENTS_CHANNEL, KEY_PREFIX, WorkerRecord
from duplex.kube import KubeApiError, KubeClient, sleep_backoff
from duplex_operator.config import OperatorConfig
from duplex_operator.planner import Event, Plan, Planner, World
from duplex_operator.resources import (
    API_VERSION,
    TTSMODELS,
    VOICESESSIONS,
    WORKER_SELECTOR,
    format_time,
    parse_model,
    parse_pod,
    parse_session,
)

log = logging.getLogger(__name__)

_KIND_API = {"TTSModel": API_VERSION, "VoiceSession": API_VERSION, "Pod": "v1"}


class Reconciler:
    def __init__(self, config: OperatorConfig, client: KubeClient) -> None:
        self.config = config
        self.client = client
        self.planner = Planner(config, started_at=time.time())
        self._redis = aioredis.from_url(config.redis)
        self._wake = asyncio.Event()
        self.passes = 0
        self._instance = socket.gethostname()

    @property
    def _ns(self) -> str:
        return self.config.namespace

    def _crd_path(self, plural: str, name: str | None = None) -> str:
        path = f"/apis/{API_VERSION}/namespaces/{self._ns}/{plural}"
        return f"{path}/{name}" if name else path

    @property
    def _pods_path(self) -> str:
        return f"/api/v1/namespaces/{self._ns}/pods"

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._follow_worker_events(), name="worker-events")
            await self._loop()

    async def _follow_worker_events(self) -> None:
        # Workers publish when their resident set changes: reconcile then rather than at the
        # next resync, so statuses follow loads and unloads within milliseconds.
        attempt = 0
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(EVENTS_CHANNEL)
                    attempt = 0
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self.wake()
            except (RedisError, OSError) as exc:
                log.warning("following worker events failed: %s", exc)
                await sleep_backoff(attempt)
                attempt += 1

    async def _loop(self) -> None:
        failures = 0
        while True:
            try:
                async with asyncio.timeout(self.config.resync_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass
            # Let a burst of watch events (e.g. kubectl apply -f dir/) land in one pass.
            await asyncio.sleep(0.02)
            self._wake.clear()
            try:
                plan = await self.reconcile_once()
                failures = 0
                if not plan.empty:
                    self._wake.set()  # confirm the result at once instead of after a resync
            except (KubeApiError, aiohttp.ClientError, OSError, RedisError, TimeoutError) as exc:
                failures += 1
                log.warning("reconcile pass failed (%d in a row): %s", failures, exc)
                await asyncio.sleep(min(5.0, 0.2 * 2**failures))

    async def observe(self) -> World:
        models, sessions, pods, records = await asyncio.gather(
            self.client.list(self._crd_path(TTSMODELS)),
            self.client.list(self._crd_path(VOICESESSIONS)),
            self.client.list(self._pods_path, label_selector=WORKER_SELECTOR),
            self.read_records(),
        )
        return World(
            models=[parse_model(o) for o in models.get("items", []) if _valid(o, "modelId")],
            sessions=[parse_session(o) for o in sessions.get("items", []) if _valid(o, "modelId")],
            pods=[parse_pod(o) for o in pods.get("items", [])],
            records=records,
            now=time.time(),
        )

    async def read_records(self) -> dict[str, WorkerRecord]:
        keys = [key async for key in self._redis.scan_iter(match=f"{KEY_PREFIX}*", count=500)]
        if not keys:
            return {}
        records: dict[str, WorkerRecord] = {}
        for raw in await self._redis.mget(keys):
            if raw is None:  # expired between SCAN and MGET
                continue
            try:
                record = WorkerRecord.from_json(raw)
            except (ValueError, TypeError) as exc:
                log.warning("ignoring a malformed worker record: %s", exc)
                continue
            records[record.name] = record
        return records

    async def reconcile_once(self) -> Plan:
        world = await self.observe()
        plan = self.planner.plan(world)
        await self.apply(plan)
        self.passes += 1
        return plan

    async def apply(self, plan: Plan) -> None:
        for pod in plan.create_pods:
            name = pod["metadata"]["name"]
            try:
                await self.client.create(self._pods_path, pod)
                log.info("created worker pod %s", name)
                await self.post_event(Event("Pod", name, "", "Normal", "Created", "worker pod"))
            except KubeApiError as exc:
                if exc.status != 409:  # 409: it exists (another pass or replica made it)
                    raise
        for name, patch in plan.patch_pods.items():
            await self._tolerate_gone(self.client.patch(f"{self._pods_path}/{name}", patch))
        for name in plan.delete_pods:
            log.info("deleting idle worker pod %s", name)
            await self._tolerate_gone(self.client.delete(f"{self._pods_path}/{name}"))
        for name, status in plan.model_status.items():
            await self._tolerate_gone(
                self.client.patch(f"{self._crd_path(TTSMODELS, name)}/status", {"status": status})
            )
        for name, status in plan.session_status.items():
            await self._tolerate_gone(
                self.client.patch(
                    f"{self._crd_path(VOICESESSIONS, name)}/status", {"status": status}
                )
            )
        for event in plan.events:
            await self.post_event(event)

    async def _tolerate_gone(self, call: Any) -> None:
        try:
            await call
        except KubeApiError as exc:
            if exc.status != 404:  # deleted since it was listed: the next pass sees that
                raise

    async def post_event(self, event: Event) -> None:
        log.info("%s %s/%s: %s", event.reason, event.kind, event.name, event.message)
        now = format_time(time.time())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{event.name}.", "namespace": self._ns},
            "involvedObject": {
                "apiVersion": _KIND_API[event.kind],
                "kind": event.kind,
                "name": event.name,
                "namespace": self._ns,
                **({"uid": event.uid} if event.uid else {}),
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": "duplex-operator"},
            "reportingComponent": "duplex-operator",
            "reportingInstance": self._instance,
        }
        try:
            await self.client.create(f"/api/v1/namespaces/{self._ns}/events", body)
        except KubeApiError as exc:  # events are best effort; never fail a pass for one
            log.warning("could not post event %s: %s", event.reason, exc)

    async def aclose(self) -> None:
        await self._redis.aclose()


def _valid(obj: dict[str, Any], key: str) -> bool:
    spec = obj.get("spec")
    return isinstance(spec, dict) and bool(spec.get(key))
