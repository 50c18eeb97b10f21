"""`duplex bench operator --scale`: one reconcile pass over a large namespace.

Synthetic state on a real kube-apiserver and a real Redis: TTSModels, worker Pods holding them
(made as the operator makes them), the workers' Redis records, and VoiceSessions, each served
by the worker it is bound to. Nothing runs in the worker Pods (there is no kubelet): the records
say what the workers would. The operator's own reconciler runs in this process, so a pass is
timed (listing, Redis, planning, writing) and its API writes counted by the client.

Figures: a pass in which nothing changed (its time, and its writes: there should be none), then
passes after one change of each kind (a new VoiceSession, a TTSModel edited, a worker that lost
a model), with the writes each took: in proportion to what changed, never a rewrite of every
status. The first passes, which bind every session and write every status once, are reported
as setup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from duplex.bench.stats import Series, failure_lines, series_table
from duplex.discovery import WorkerRecord, session_id_for, worker_key
from duplex.errors import DuplexError
from duplex.kube import KubeClient
from duplex.testing.redis_server import RedisServer

NAMESPACE = "duplex-scale"
GROUP = "/apis/duplex.dev/v1alpha1/namespaces"
# The targets the bench checks (and a test at a smaller scale asserts).
PASS_SECONDS = 1.0


@dataclass(frozen=True)
class Scale:
    models: int = 200
    pods: int = 100
    sessions: int = 2000

    def models_of(self, pod: int) -> list[int]:
        """The models pod `pod` holds: an equal share, in order."""
        per = -(-self.models // self.pods)
        return [m for m in range(pod * per, (pod + 1) * per) if m < self.models]


def _model_id(index: int) -> str:
    return f"scale-{index:04d}"


@dataclass
class Pass:
    seconds: float
    writes: int
    by_kind: dict[str, int] = field(default_factory=dict)


class ScaleWorld:
    """The synthetic namespace, and the reconciler passes over it."""

    def __init__(self, client: KubeClient, redis_url: str, scale: Scale, namespace: str) -> None:
        # Imported here: only the bench needs the operator package.
        from duplex_operator.config import OperatorConfig, WorkerPool
        from duplex_operator.reconciler import Reconciler

        self.client = client
        self.scale = scale
        self.ns = namespace
        per_pod = -(-scale.sessions // scale.pods)
        pool = WorkerPool(
            name="cpu",
            max_pods=scale.pods,
            memory_mib=100 * len(scale.models_of(0)),
            max_sessions=per_pod + 4,
            max_sessions_per_pod=per_pod,
        )
        self.config = OperatorConfig(namespace=namespace, redis=redis_url, pools=[pool])
        self.pool = pool
        self.reconciler = Reconciler(self.config, client)
        self.redis = aioredis.from_url(redis_url)
        self.records: dict[str, WorkerRecord] = {}
        self.extra = 0  # sessions added by the changes
        self.started = time.time()

    def pod_name(self, index: int) -> str:
        return f"{self.config.worker_prefix}-cpu-{index}"

    async def build(self, progress: Callable[[str], None]) -> list[Pass]:
        """Create everything, then let passes bind and settle it (those passes returned)."""
        from duplex_operator.pods import worker_pod
        from duplex_operator.resources import parse_model

        await self.client.create("/api/v1/namespaces", {"metadata": {"name": self.ns}})
        progress(f"{self.scale.models} TTSModels ...")
        models = await _gather(
            self.client.create(f"{GROUP}/{self.ns}/ttsmodels", _model(i))
            for i in range(self.scale.models)
        )
        parsed = [parse_model(m) for m in models]
        progress(f"{self.scale.pods} worker Pods ...")
        added = time.time() - 3600
        pods = []
        for p in range(self.scale.pods):
            held = [parsed[m] for m in self.scale.models_of(p)]
            pods.append(
                worker_pod(
                    self.config,
                    self.pool,
                    self.pod_name(p),
                    held,
                    {m.model_id: added for m in held},
                )
            )
        await _gather(self.client.create(f"/api/v1/namespaces/{self.ns}/pods", p) for p in pods)
        progress(f"{self.scale.sessions} VoiceSessions ...")
        await _gather(
            self.client.create(
                f"{GROUP}/{self.ns}/voicesessions", _session(f"call-{i:05d}", self.model_of(i))
            )
            for i in range(self.scale.sessions)
        )
        await self.write_records({})
        setup = [await self.timed_pass()]  # binds every session, writes every status
        # The orchestrators move to the workers their sessions are bound to.
        await self.write_records(await self.bindings())
        setup.append(await self.timed_pass())  # Active, as the workers now say
        for _ in range(5):
            if setup[-1].writes == 0:
                break
            setup.append(await self.timed_pass())
        return setup

    def model_of(self, session: int) -> str:
        return _model_id(session % self.scale.models)

    async def bindings(self) -> dict[str, list[str]]:
        listing = await self.client.list(f"{GROUP}/{self.ns}/voicesessions")
        bound: dict[str, list[str]] = {}
        for obj in listing["items"]:
            worker = (obj.get("status") or {}).get("worker")
            if worker:
                bound.setdefault(worker, []).append(obj["metadata"]["name"])
        return bound

    async def write_records(self, bound: dict[str, list[str]]) -> None:
        # Last used when the bench began: a model's use is a change of its own (lastUsedTime).
        now = self.started
        for p in range(self.scale.pods):
            name = self.pod_name(p)
            held = [_model_id(m) for m in self.scale.models_of(p)]
            sessions = [session_id_for(vs, "tts") for vs in sorted(bound.get(name, []))]
            old = self.records.get(name)
            self.records[name] = WorkerRecord(
                name=name,
                addr=f"10.0.{p // 250}.{p % 250 + 1}:50051",
                models=held,
                resident_models=held,
                model_last_used={m: now for m in held},
                model_set=held,
                active_sessions=len(sessions),
                session_ids=sessions,
                max_sessions=self.pool.max_sessions,
                started_at=old.started_at if old else now,
            )
        async with self.redis.pipeline(transaction=False) as pipe:
            for record in self.records.values():
                pipe.set(worker_key(record.name), record.to_json())
            await pipe.execute()

    async def timed_pass(self) -> Pass:
        before = self.client.writes.copy()
        start = time.perf_counter()
        plan, _ = await self.reconciler.reconcile_once()
        seconds = time.perf_counter() - start
        writes = self.client.writes - before
        kinds = {
            "pods": len(plan.create_pods) + len(plan.patch_pods) + len(plan.delete_pods),
            "model status": len(plan.model_status),
            "session status": len(plan.session_status),
            "events": len(plan.events),
        }
        return Pass(seconds, sum(writes.values()), {k: v for k, v in kinds.items() if v})

    # -- one change of each kind ----------------------------------------------------------------

    async def new_session(self) -> None:
        self.extra += 1
        name = f"late-{self.extra:04d}"
        await self.client.create(
            f"{GROUP}/{self.ns}/voicesessions", _session(name, self.model_of(self.extra))
        )

    async def edit_model(self) -> None:
        self.extra += 1
        name = _model_id(self.extra % self.scale.models)
        await self.client.patch(
            f"{GROUP}/{self.ns}/ttsmodels/{name}",
            {"spec": {"description": f"edited {self.extra}"}},
        )

    async def worker_loses_a_model(self) -> None:
        # A worker reports one of its models gone (and back before the next change).
        self.extra += 1
        record = self.records[self.pod_name(self.extra % self.scale.pods)]
        lost = record.resident_models[0]
        record.resident_models = [m for m in record.resident_models if m != lost]
        await self.redis.set(worker_key(record.name), record.to_json())

    async def settle(self) -> None:
        """Orchestrators and workers catch up with the last change; passes until quiet."""
        await self.write_records(await self.bindings())
        for _ in range(5):
            if (await self.timed_pass()).writes == 0:
                return
        raise DuplexError("the namespace did not settle after a change")

    async def aclose(self) -> None:
        await self.reconciler.aclose()
        await self.redis.aclose()


def _model(index: int) -> dict[str, Any]:
    model_id = _model_id(index)
    return {
        "apiVersion": "duplex.dev/v1alpha1",
        "kind": "TTSModel",
        "metadata": {"name": model_id},
        "spec": {
            "modelId": model_id,
            "family": "pico",
            "resources": {"memoryMiB": 100},
            "minResident": 0,
            "ttlSeconds": 3600,
        },
    }


def _session(name: str, model_id: str) -> dict[str, Any]:
    return {
        "apiVersion": "duplex.dev/v1alpha1",
        "kind": "VoiceSession",
        "metadata": {"name": name},
        "spec": {"modelId": model_id, "room": name},
    }


async def _gather(calls: Any, width: int = 32) -> list[dict[str, Any]]:
    """Run API calls `width` at a time, in order."""
    pending: list[Awaitable[dict[str, Any]]] = list(calls)
    results: list[dict[str, Any]] = []
    for start in range(0, len(pending), width):
        results += await asyncio.gather(*pending[start : start + width])
    return results


@dataclass
class Figures:
    series: dict[str, Series] = field(default_factory=dict)
    details: dict[str, list[dict[str, int]]] = field(default_factory=dict)

    def record(self, label: str, result: Pass) -> None:
        self.series.setdefault(f"{label}: pass", Series(f"{label}: pass", "ms")).add(result.seconds)
        self.series.setdefault(f"{label}: API writes", Series(f"{label}: API writes", "n")).add(
            result.writes
        )
        self.details.setdefault(label, []).append(result.by_kind)


CHANGES: dict[str, str] = {
    "new_session": "a new VoiceSession",
    "edit_model": "a TTSModel edited",
    "worker_loses_a_model": "a worker lost a model",
}


async def measure(world: ScaleWorld, runs: int, progress: Callable[[str], None]) -> Figures:
    figures = Figures()
    for _ in range(runs):
        figures.record("nothing changed", await world.timed_pass())
    for method, label in CHANGES.items():
        progress(f"{label} ...")
        for _ in range(runs):
            await getattr(world, method)()
            figures.record(label, await world.timed_pass())
            await world.settle()
    return figures


@contextlib.asynccontextmanager
async def local_world(scale: Scale) -> AsyncIterator[ScaleWorld]:
    from duplex.testing.apiserver import KubeControlPlane

    plane = KubeControlPlane()
    api = await asyncio.to_thread(plane.start)
    try:
        redis_server = await asyncio.to_thread(RedisServer)
        try:
            async with api.client(user_agent="duplex-operator-bench") as client:
                world = ScaleWorld(client, redis_server.url, scale, NAMESPACE)
                try:
                    yield world
                finally:
                    await world.aclose()
        finally:
            await asyncio.to_thread(redis_server.stop)
    finally:
        await asyncio.to_thread(plane.stop)


def verdict(figures: Figures) -> list[str]:
    """What missed a target (empty: all met)."""
    missed = []
    for series in figures.series.values():
        if series.unit == "ms" and series.values and max(series.values) >= PASS_SECONDS:
            missed.append(f"{series.name}: a pass took {max(series.values):.2f} s")
    steady = figures.series["nothing changed: API writes"]
    if any(steady.values):
        missed.append(f"a pass with nothing changed wrote {max(steady.values):.0f} times")
    return missed


async def run_scale_bench(opts: Any) -> int:
    scale = Scale(opts.scale_models, opts.scale_pods, opts.scale_sessions)
    runs = max(1, opts.runs)

    def progress(message: str) -> None:
        print(message, flush=True)

    # Thousands of Bound and Active events in the setup passes: the table is what counts.
    logging.getLogger("duplex_operator").setLevel(logging.WARNING)
    print("starting etcd, kube-apiserver and redis ...", flush=True)
    async with local_world(scale) as world:
        setup = await world.build(progress)
        figures = await measure(world, runs, progress)
    print()
    for i, result in enumerate(setup, 1):
        print(f"setup pass {i}: {result.seconds:.2f} s, {result.writes} writes {result.by_kind}")
    print(f"\n{scale.models} TTSModels, {scale.pods} worker Pods, {scale.sessions} VoiceSessions")
    series = list(figures.series.values())
    print(series_table(series, "one reconcile pass (ms) and its API writes"))
    for label, kinds in figures.details.items():
        print(f"  {label}: writes by kind {_merge(kinds)}")
    lines = failure_lines(series)
    missed = verdict(figures)
    for line in missed:
        print(f"MISSED: {line}")
    if opts.plot:
        from duplex.bench.plot import plot_series

        plot_series(opts.plot, "duplex bench operator --scale: one reconcile pass", series)
    if opts.json:
        opts.json.write_text(
            json.dumps(
                {
                    "scale": scale.__dict__,
                    "setup": [r.__dict__ for r in setup],
                    "passes": [s.summary() for s in series],
                },
                indent=2,
            )
        )
    return 1 if lines or missed else 0


def _merge(kinds: Sequence[dict[str, int]]) -> dict[str, int]:
    """The largest count of each kind over the runs."""
    merged: dict[str, int] = {}
    for by_kind in kinds:
        for kind, count in by_kind.items():
            merged[kind] = max(merged.get(kind, 0), count)
    return merged
