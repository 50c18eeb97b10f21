"""Keeps this worker's discovery record in Redis fresh while it runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from redis.exceptions import RedisError

from duplex.discovery import EVENTS_CHANNEL, WorkerEvent, WorkerRecord, redis_client, worker_key
from duplex.errors import WorkerUnavailable
from duplex.tasks import TaskSet

log = logging.getLogger(__name__)


class RedisRegistration:
    """Writes the record every heartbeat (TTL ≈ 3 heartbeats) and at once on any change.

    A Redis outage is logged and retried at the next heartbeat; it never stops synthesis.
    """

    def __init__(
        self, url: str, snapshot: Callable[[], WorkerRecord], heartbeat_seconds: float = 1.0
    ) -> None:
        self._redis = redis_client(url)
        self._snapshot = snapshot
        self._interval = heartbeat_seconds
        self._ttl_ms = int(heartbeat_seconds * 3000)
        self._changed = asyncio.Event()
        self._published: tuple[str, ...] | None = None
        self._tasks = TaskSet("registration")
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._closing = False
        self._name = snapshot().name

    async def start(self) -> None:
        # Fail loudly at start if Redis is unreachable or misconfigured.
        try:
            await self._write()
        except (RedisError, OSError) as exc:
            where = self._redis.connection_pool.connection_kwargs
            raise WorkerUnavailable(
                f"discovery: Redis at {where.get('host', '?')}:{where.get('port', '?')} "
                f"did not take this worker's record: {type(exc).__name__}: {exc}"
            ) from exc
        self._heartbeat_task = self._tasks.spawn(self._heartbeat(), "heartbeat")

    def changed(self) -> None:
        self._changed.set()

    async def _write(self) -> None:
        record = self._snapshot()
        await self._redis.set(worker_key(record.name), record.to_json(), px=self._ttl_ms)
        resident = tuple(record.resident_models)
        if resident != self._published:
            kind = "worker.up" if self._published is None else "worker.updated"
            await self._redis.publish(
                EVENTS_CHANNEL, WorkerEvent(kind, record.name, resident).to_json()
            )
            self._published = resident

    async def _heartbeat(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._interval):
                    await self._changed.wait()
            except TimeoutError:
                pass
            if self._closing:
                return
            self._changed.clear()
            try:
                await self._write()
            except (RedisError, OSError) as exc:
                log.warning("discovery heartbeat failed: %s", exc)

    async def aclose(self) -> None:
        # Let the heartbeat finish its current command instead of cancelling it mid-reply,
        # which would leave an unread response on the shared connection.
        self._closing = True
        self._changed.set()
        if self._heartbeat_task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.shield(self._heartbeat_task)
        await self._tasks.aclose()
        if self._heartbeat_task is None:  # never registered: nothing to take back
            await self._redis.aclose()
            return
        try:
            await self._redis.delete(worker_key(self._name))
            await self._redis.publish(
                EVENTS_CHANNEL, WorkerEvent("worker.down", self._name).to_json()
            )
        except (RedisError, OSError) as exc:
            log.warning("could not deregister from discovery: %s", exc)
        finally:
            await self._redis.aclose()
