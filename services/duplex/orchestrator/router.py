"""Which worker speaks a turn: discovery (static or Redis) and the routing rule.

Rule: filter by model availability and language → prefer workers where the model is resident
→ those reported to have room → least loaded, choosing at random among near-equal loads
(stale load reports would otherwise pile a burst of sessions onto one worker). If the model is
resident nowhere, the best worker is asked to load it and a resident fallback speaks meanwhile.
The router only orders the candidates: whether a worker has room is its own answer to
StartSession (see `tts_link`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from redis.exceptions import RedisError

from duplex.discovery import (
    EVENTS_CHANNEL,
    KEY_PREFIX,
    WorkerEvent,
    WorkerRecord,
    redis_client,
    worker_key,
)
from duplex.errors import UnknownModel
from duplex.rpc.client import TtsClient
from duplex.rpc.security import ClientTls
from duplex.tasks import TaskSet

log = logging.getLogger(__name__)


@dataclass
class WorkerView:
    name: str
    addr: str
    models: set[str] = field(default_factory=set)
    resident: set[str] = field(default_factory=set)
    loading: set[str] = field(default_factory=set)
    languages: dict[str, set[str]] = field(default_factory=dict)  # model → languages
    active_sessions: int = 0
    max_sessions: int = 1
    rtf: float = 0.0
    devices: dict[str, str] = field(default_factory=dict)  # resident model → cpu, cuda:0, ...
    failures: int = 0  # consecutive failures: the backoff doubles with each
    failed_until: float = 0.0

    @property
    def load(self) -> float:
        return self.active_sessions / max(1, self.max_sessions)


@dataclass(frozen=True)
class Route:
    worker: WorkerView
    model: str  # the model to speak with now (the wanted one, or a resident fallback)
    # When a fallback speaks: the worker to ask to load the wanted model meanwhile.
    load_on: WorkerView | None = None


class ClientPool:
    """One gRPC channel per worker address, shared by every session of this process.

    The process is one client to every worker (one `duplex-client` name), and owns the
    background calls that end sessions nobody waits for.
    """

    def __init__(
        self,
        client_id: str | None = None,
        *,
        tls: ClientTls | None = None,
        admin_token: str | None = None,
    ) -> None:
        self.client_id = client_id or f"orchestrator-{socket.gethostname()}-{os.getpid()}"
        self._tls = tls
        self._admin_token = admin_token
        self._clients: dict[str, TtsClient] = {}
        self._cleanup = TaskSet("session-cleanup")

    def get(self, addr: str) -> TtsClient:
        client = self._clients.get(addr)
        if client is None:
            client = self._clients[addr] = TtsClient(
                addr, self.client_id, tls=self._tls, admin_token=self._admin_token
            )
        return client

    def end_later(self, addr: str, session_id: str) -> None:
        """End a session in the background (gone or slow workers: their reaper ends it)."""
        self._cleanup.spawn(self._end(addr, session_id), f"end:{session_id}")

    async def _end(self, addr: str, session_id: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
            async with asyncio.timeout(3):
                await self.get(addr).end_session(session_id)

    async def aclose(self) -> None:
        await self._cleanup.aclose()
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


class Directory:
    """The local view of workers. Subclasses fill `_workers` and refresh it."""

    def __init__(self, pool: ClientPool) -> None:
        self.pool = pool
        self._workers: dict[str, WorkerView] = {}

    async def start(self) -> None:
        await self.refresh()

    async def refresh(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None

    def workers(self) -> list[WorkerView]:
        now = time.monotonic()
        return [w for w in self._workers.values() if w.failed_until <= now]

    @property
    def degraded(self) -> str | None:
        """Why the view may be stale (discovery unreachable), or None."""
        return None

    def mark_failed(self, name: str) -> None:
        """Leave a worker out for a while: 1 s after its first failure, doubling up to 30 s."""
        if worker := self._workers.get(name):
            worker.failures += 1
            worker.failed_until = time.monotonic() + min(30.0, 2.0 ** (worker.failures - 1))

    def mark_ok(self, name: str) -> None:
        if worker := self._workers.get(name):
            worker.failures = 0
            worker.failed_until = 0.0

    def _keep_backoff(self, view: WorkerView) -> WorkerView:
        old = self._workers.get(view.name)
        if old is not None:
            view.failures, view.failed_until = old.failures, old.failed_until
        return view

    async def _describe(self, name: str, addr: str) -> WorkerView:
        """Ask a worker directly what it serves (static discovery has no records)."""
        client = self.pool.get(addr)
        models = await client.list_models()
        caps = await client.capabilities()
        return WorkerView(
            name=name,
            addr=addr,
            models={m.model_id for m in models},
            resident={m.model_id for m in models if m.is_loaded},
            devices={m.model_id: m.metadata.get("device", "cpu") for m in models if m.is_loaded},
            loading={m.model_id for m in models if m.metadata.get("loading")},
            languages={m.model_id: set(m.languages) for m in models},
            active_sessions=int(caps.metrics.get("active_sessions", 0)),
            max_sessions=caps.capabilities.max_concurrent_sessions or 1,
            rtf=caps.metrics.get("rtf_p50", 0.0),
        )


class StaticDirectory(Directory):
    def __init__(self, pool: ClientPool, addresses: Sequence[str]) -> None:
        super().__init__(pool)
        self._addresses = list(addresses)

    async def refresh(self) -> None:
        now = time.monotonic()
        for addr in self._addresses:
            old = self._workers.get(addr)
            if old is not None and old.failed_until > now:
                continue  # backing off: asking it now would only wait on it
            try:
                async with asyncio.timeout(2):
                    view = await self._describe(addr, addr)
            except (grpc.aio.AioRpcError, TimeoutError) as exc:
                log.warning("worker %s unreachable: %s", addr, exc)
                if old is None:  # known from now on, so that it can back off
                    self._workers[addr] = WorkerView(addr, addr)
                self.mark_failed(addr)
                continue
            self._workers[addr] = self._keep_backoff(view)


class RedisDirectory(Directory):
    """A scan at start, then the events channel; records whose key expired are dropped.

    While Redis is unreachable the last view stays (workers keep serving) and the follower
    reconnects with backoff; a malformed record is logged and skipped, never fatal.
    """

    def __init__(self, pool: ClientPool, url: str) -> None:
        super().__init__(pool)
        self._redis = redis_client(url)
        self._tasks = TaskSet("redis-directory")
        self._outage: str | None = None

    @property
    def degraded(self) -> str | None:
        return self._outage

    async def start(self) -> None:
        await self.refresh()
        self._tasks.spawn(self._follow_events(), "events")

    async def refresh(self) -> None:
        try:
            names = [
                key.decode()[len(KEY_PREFIX) :]
                async for key in self._redis.scan_iter(f"{KEY_PREFIX}*")
            ]
            names = sorted(set(names) | set(self._workers))
            raws = await self._redis.mget([worker_key(n) for n in names]) if names else []
        except (RedisError, OSError) as exc:
            self._outage = f"Redis unreachable: {exc}"
            raise
        self._outage = None
        for name, raw in zip(names, raws, strict=True):
            if raw is None:
                self._workers.pop(name, None)  # expired: the worker is gone
                continue
            self._apply(name, raw)

    def _apply(self, name: str, raw: bytes | str) -> None:
        try:
            record = WorkerRecord.from_json(raw)
            langs = set(record.capabilities.get("languages", []))
            view = WorkerView(
                name=record.name,
                addr=record.addr,
                models=set(record.models),
                resident=set(record.resident_models),
                devices=dict(record.model_devices),
                loading=set(record.loading_models),
                languages={m: langs for m in record.models},
                active_sessions=int(record.active_sessions),
                max_sessions=max(1, int(record.max_sessions)),
                rtf=float(record.rtf_p50),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("skipping the malformed discovery record of %r: %s", name, exc)
            return
        self._workers[record.name] = self._keep_backoff(view)

    async def _follow_events(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self._follow_once()
            except (RedisError, OSError) as exc:
                self._outage = f"Redis unreachable: {exc}"
                log.warning("discovery events lost (%s); reconnecting in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(10.0, backoff * 2)
                continue
            backoff = 0.5

    async def _follow_once(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(EVENTS_CHANNEL)
            # What changed while nobody listened: read the records again.
            await self.refresh()
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                try:
                    event = WorkerEvent.from_json(message["data"])
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("ignoring malformed discovery event: %s", exc)
                    continue
                if event.type == "worker.down":
                    self._workers.pop(event.name, None)
                    continue
                raw = await self._redis.get(worker_key(event.name))
                if raw is not None:
                    self._apply(event.name, raw)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        await self._tasks.aclose()
        await self._redis.aclose()


class Router:
    def __init__(self, directory: Directory, rng: random.Random | None = None) -> None:
        self.directory = directory
        self._rng = rng or random.Random()

    async def refresh(self) -> None:
        """Load and residency change all the time: refresh before deciding."""
        try:
            await self.directory.refresh()
        except (RedisError, OSError) as exc:
            log.warning("discovery refresh failed, routing on the last view: %s", exc)

    async def route(self, model: str, language: str | None = None) -> Route:
        """The best place to speak `model` now (see `candidates`)."""
        return (await self.candidates(model, language))[0]

    async def candidates(
        self, model: str, language: str | None = None, exclude: frozenset[str] = frozenset()
    ) -> list[Route]:
        """Where a new session for `model` could go, best first.

        Workers with the model resident come first, those reported to have room before those
        reported full (reports lag: a full one may have room by now, and asking costs one
        call), least loaded first. If it is resident nowhere, resident fallbacks speak while
        the best worker loads it, then the workers that would load it while the caller waits.
        """
        await self.refresh()
        workers = [w for w in self.directory.workers() if w.name not in exclude]
        serving = [w for w in workers if model in w.models and _speaks(w, model, language)]
        if not serving:
            known = sorted({m for w in workers for m in w.models})
            raise UnknownModel(
                f"no worker serves model {model[:80]!r}"
                + (f" in {language[:40]!r}" if language else "")
                + (f"; available: {', '.join(known)}" if known else "; no workers are up")
            )
        resident = [w for w in serving if model in w.resident]
        if resident:
            # A copy on a GPU answers sooner: those first, then by room and load.
            ordered = self._ordered(resident)
            on_gpu = [
                w
                for w in ordered
                if w.devices.get(model, "cpu").startswith("cuda")
                and w.active_sessions < w.max_sessions
            ]
            return [Route(w, model) for w in on_gpu + [w for w in ordered if w not in on_gpu]]
        loaders = self._ordered(serving)
        target = loaders[0]
        fallbacks = [
            Route(w, m, load_on=target)
            for w in self._ordered(workers)
            for m in sorted(w.resident)
            if m != model and _speaks(w, m, language)
        ]
        return fallbacks + [Route(w, model) for w in loaders]

    def _ordered(self, workers: list[WorkerView]) -> list[WorkerView]:
        """Room first, then least loaded, choosing at random among near-equal loads."""
        jitter = {w.name: self._rng.random() * 0.1 for w in workers}
        return sorted(
            workers,
            key=lambda w: (w.active_sessions >= w.max_sessions, w.load + jitter[w.name]),
        )


def _speaks(worker: WorkerView, model: str, language: str | None) -> bool:
    if not language:
        return True
    langs = worker.languages.get(model, set())
    return not langs or language in langs or language.split("-")[0] in langs
