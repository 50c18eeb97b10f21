"""Observe the world, plan, apply: the operator's one reconcile loop.

Watch events (delivered by kopf) only wake the loop; every pass lists the TTSModels,
VoiceSessions and worker Pods and reads the workers' Redis records afresh, so a missed or
reordered event cannot leave anything wrong for longer than one resync period.

Nothing on one object stalls the rest: an object that cannot be read gets an InvalidSpec
condition, a write the API server refuses becomes a Warning event on that object (and, for a
Pod it would not create, a condition on the models that needed it), and the pass goes on. A
Redis outage leaves out only what needs Redis (residency, eviction, scale-in); sessions are
still bound and ended, Pods still created, and the TTSModels' Resident condition says why it
is Unknown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from duplex.discovery import EVENTS_CHANNEL, KEY_PREFIX, WorkerRecord
from duplex.kube import KubeApiError, KubeClient, sleep_backoff
from duplex.modelset import WORKER_SELECTOR
from duplex_operator.config import OperatorConfig, redacted
from duplex_operator.metrics import OperatorMetrics
from duplex_operator.planner import Event, Plan, Planner, World
from duplex_operator.pods import own_account, owned_by, worker_account
from duplex_operator.resources import (
    API_VERSION,
    POOL_LABEL,
    TTSMODELS,
    VOICESESSIONS,
    InvalidObject,
    TtsModel,
    VoiceSession,
    format_time,
    parse_model,
    parse_or_invalid,
    parse_pod,
    parse_session,
)

log = logging.getLogger(__name__)

_KIND_API = {"TTSModel": API_VERSION, "VoiceSession": API_VERSION, "Pod": "v1"}
# The same warning about the same object is posted again only after this long.
_REPEAT_WARNING_SECONDS = 300.0


class LeadershipLost(Exception):
    """The operator is no longer the leader: the pass stops before its next write."""


class Reconciler:
    def __init__(
        self,
        config: OperatorConfig,
        client: KubeClient,
        *,
        instance: str = "duplex-operator",
        may_write: Callable[[], bool] = lambda: True,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else OperatorMetrics()
        self.client = client
        self.planner = Planner(config, started_at=time.time())
        # Short timeouts: an unreachable Redis must not hold up what needs no Redis.
        self._redis = aioredis.from_url(config.redis, socket_timeout=2, socket_connect_timeout=2)
        # The events channel is quiet for minutes at a time: no read timeout on its connection.
        self._events = aioredis.from_url(
            config.redis, socket_connect_timeout=2, health_check_interval=30
        )
        self._wake = asyncio.Event()
        self._may_write = may_write
        self._instance = instance
        self._warned: dict[tuple[str, str, str, str], float] = {}
        self._redis_down = False
        self.passes = 0
        self.last_plan: Plan | None = None

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

    def restart(self) -> None:
        """Forget what was learnt in memory (a new leadership term starts from the cluster)."""
        self.planner = Planner(self.config, started_at=time.time())
        self._warned.clear()

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
                async with self._events.pubsub() as pubsub:
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
            started = time.monotonic()
            try:
                plan, refused = await self.reconcile_once()
                failures = 0
                self.metrics.pass_done(time.monotonic() - started, refused)
                if not plan.empty and not refused:
                    self._wake.set()  # confirm the result at once instead of after a resync
            except (KubeApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                # Listing failed (the API server is away): nothing was planned, try again.
                failures += 1
                self.metrics.pass_failed()
                log.warning("reconcile pass failed (%d in a row): %s", failures, exc)
                await asyncio.sleep(min(5.0, 0.2 * 2**failures))

    async def observe(self) -> World:
        (models, sessions, pods), (records, redis_error) = await asyncio.gather(
            asyncio.gather(
                self.client.list(self._crd_path(TTSMODELS)),
                self.client.list(self._crd_path(VOICESESSIONS)),
                self.client.list(self._pods_path, label_selector=WORKER_SELECTOR),
            ),
            self._read_records(),
        )
        invalid: list[InvalidObject] = []
        parsed_models: list[TtsModel] = []
        for obj in models.get("items", []):
            model = parse_or_invalid("TTSModel", obj, parse_model)
            if isinstance(model, InvalidObject):
                invalid.append(model)
            else:
                parsed_models.append(model)
        parsed_sessions: list[VoiceSession] = []
        for obj in sessions.get("items", []):
            session = parse_or_invalid("VoiceSession", obj, parse_session)
            if isinstance(session, InvalidObject):
                invalid.append(session)
            else:
                parsed_sessions.append(session)
        return World(
            models=parsed_models,
            sessions=parsed_sessions,
            pods=[parse_pod(o) for o in pods.get("items", [])],
            records=records,
            now=time.time(),
            redis_error=redis_error,
            invalid=invalid,
        )

    async def _read_records(self) -> tuple[dict[str, WorkerRecord], str | None]:
        try:
            records = await self.read_records()
        except (RedisError, OSError) as exc:
            if not self._redis_down:
                log.warning("worker records unavailable, going on without them: %s", exc)
            self._redis_down = True
            return {}, f"Redis at {redacted(self.config.redis)} is unavailable ({exc})"
        if self._redis_down:
            log.info("worker records available again")
        self._redis_down = False
        return records, None

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

    async def reconcile_once(self) -> tuple[Plan, int]:
        """One pass: the plan and how many of its writes the API server refused."""
        world = await self.observe()
        plan = self.planner.plan(world)
        refused = await self.apply(plan)
        self.passes += 1
        self.last_plan = plan
        return plan, refused

    async def apply(self, plan: Plan) -> int:
        refused = 0
        for pod in plan.create_pods:
            meta = pod["metadata"]
            name, pool = meta["name"], meta["labels"][POOL_LABEL]
            error = await self._create_pod(pod)
            if error is None:
                log.info("created worker pod %s", name)
                self.planner.pod_created(pool)
                await self.post_event(Event("Pod", name, "", "Normal", "Created", "worker pod"))
            else:
                refused += 1
                self.planner.pod_create_failed(pool, error.message, time.time())
                log.warning("creating worker pod %s failed: %s", name, error)
        for name, patch in plan.patch_pods.items():
            error = await self._write(self.client.patch(f"{self._pods_path}/{name}", patch))
            refused += await self._refused("Pod", name, "UpdateFailed", error)
        for name in plan.delete_pods:
            log.info("deleting idle worker pod %s", name)
            error = await self._write(self.client.delete(f"{self._pods_path}/{name}"))
            refused += await self._refused("Pod", name, "DeleteFailed", error)
        for kind, plural, statuses in (
            ("TTSModel", TTSMODELS, plan.model_status),
            ("VoiceSession", VOICESESSIONS, plan.session_status),
        ):
            for name, status in statuses.items():
                path = f"{self._crd_path(plural, name)}/status"
                error = await self._write(self.client.patch(path, {"status": status}))
                refused += await self._refused(kind, name, "StatusUpdateFailed", error)
        for event in plan.events:
            await self.post_event(event)
        return refused

    async def _create_pod(self, pod: dict[str, Any]) -> KubeApiError | None:
        """Create a worker Pod, and first its own account when it runs as one: the account's
        ServiceAccount must exist for the Pod to be admitted; its Role and RoleBinding, and the
        owner reference that deletes all three with the Pod, follow once the Pod exists."""
        if not own_account(pod):
            return await self._write(self.client.create(self._pods_path, pod), conflict_ok=True)
        account, role, binding = worker_account(pod)
        name = pod["metadata"]["name"]
        accounts = f"/api/v1/namespaces/{self._ns}/serviceaccounts"
        rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{self._ns}"
        error = await self._write(self.client.create(accounts, account), conflict_ok=True)
        if error is not None:
            return error
        if not self._may_write():
            raise LeadershipLost("leadership lost during a pass")
        try:
            created = await self.client.create(self._pods_path, pod)
        except KubeApiError as exc:
            if exc.status != 409:
                return exc
            created = await self.client.get(f"{self._pods_path}/{name}")
        owner = owned_by(created)
        for path, body in ((f"{rbac}/roles", role), (f"{rbac}/rolebindings", binding)):
            body = {**body, "metadata": {**body["metadata"], **owner["metadata"]}}
            try:
                await self.client.create(path, body)
            except KubeApiError as exc:
                if exc.status != 409:
                    return exc
                # Left by an earlier Pod of that name whose creation stopped half way: taken
                # over by this one.
                error = await self._write(self.client.patch(f"{path}/{name}", owner))
                if error is not None:
                    return error
        return await self._write(self.client.patch(f"{accounts}/{name}", owner))

    async def _write(
        self, call: Awaitable[dict[str, Any]], *, conflict_ok: bool = False
    ) -> KubeApiError | None:
        """Make one write; the API server's refusal comes back, it is not raised.

        404 (deleted since it was listed) and, for a create, 409 (it exists) are what the next
        pass sees anyway: not refusals.
        """
        if not self._may_write():
            if asyncio.iscoroutine(call):
                call.close()
            raise LeadershipLost("leadership lost during a pass")
        try:
            await call
        except KubeApiError as exc:
            if exc.status == 404 or (conflict_ok and exc.status == 409):
                return None
            return exc
        return None

    async def _refused(self, kind: str, name: str, reason: str, error: KubeApiError | None) -> int:
        if error is None:
            return 0
        log.warning("%s %s: %s", kind, name, error)
        await self.post_event(Event(kind, name, "", "Warning", reason, str(error)))
        return 1

    async def post_event(self, event: Event) -> None:
        now_mono = time.monotonic()
        if event.type == "Warning":
            key = (event.kind, event.name, event.reason, event.message)
            if now_mono - self._warned.get(key, -_REPEAT_WARNING_SECONDS) < _REPEAT_WARNING_SECONDS:
                return
            self._warned[key] = now_mono
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
            "reportingInstance": self._instance[:128],
        }
        if not self._may_write():
            raise LeadershipLost("leadership lost during a pass")
        try:
            await self.client.create(f"/api/v1/namespaces/{self._ns}/events", body)
        except KubeApiError as exc:  # events are best effort; never fail a pass for one
            log.warning("could not post event %s: %s", event.reason, exc)

    async def aclose(self) -> None:
        await self._events.aclose()
        await self._redis.aclose()
