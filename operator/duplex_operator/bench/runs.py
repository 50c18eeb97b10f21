"""The runs of `duplex bench operator`, wherever its cluster comes from (`bench.operator` brings
one up or finds one; `bench.cluster` adds the runs only a real cluster can do)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import redis.asyncio as aioredis

from duplex.bench.stats import Series, ms
from duplex.discovery import KEY_PREFIX, WorkerRecord
from duplex.kube import KubeApiError, KubeClient


@dataclass
class Target:
    client: KubeClient
    namespace: str
    redis: aioredis.Redis


async def _resident_anywhere(redis: aioredis.Redis, model_id: str) -> bool:
    keys = [k async for k in redis.scan_iter(match=f"{KEY_PREFIX}*")]
    for raw in await redis.mget(keys) if keys else []:
        if raw is not None and model_id in WorkerRecord.from_json(raw).resident_models:
            return True
    return False


async def status_resident(target: Target, name: str) -> bool:
    obj = await target.client.get(
        f"/apis/duplex.dev/v1alpha1/namespaces/{target.namespace}/ttsmodels/{name}"
    )
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Resident" and c["status"] == "True" for c in conditions)


class Failed(Exception):
    """A run that did not reach the state it times."""


async def until(probe: Callable[[], Awaitable[bool]], what: str, timeout: float) -> float:
    start = time.monotonic()
    while not await probe():
        if time.monotonic() - start > timeout:
            raise Failed(f"no {what} within {timeout:.0f} s")
        await asyncio.sleep(0.01)
    return time.monotonic()


def model_body(name: str, model_id: str) -> dict[str, Any]:
    from duplex.worker.catalog import Catalog

    spec = Catalog.default().get(model_id)
    return {
        "apiVersion": "duplex.dev/v1alpha1",
        "kind": "TTSModel",
        "metadata": {"name": name},
        "spec": {
            "modelId": model_id,
            "family": spec.family,
            "minResident": 1,
            "resources": {"memoryMiB": spec.memory_mib},
        },
    }


async def _worker_pods(target: Target) -> list[str]:
    from duplex.modelset import WORKER_SELECTOR

    pods = await target.client.get(
        f"/api/v1/namespaces/{target.namespace}/pods?labelSelector={quote(WORKER_SELECTOR)}"
    )
    return [p["metadata"]["name"] for p in pods.get("items", [])]


async def _no_worker_pods(target: Target, timeout: float) -> None:
    """Delete every worker Pod and wait until they are gone: the next apply needs a new one."""
    for name in await _worker_pods(target):
        with contextlib.suppress(KubeApiError):
            await target.client.delete(f"/api/v1/namespaces/{target.namespace}/pods/{name}")

    async def gone() -> bool:
        return not await _worker_pods(target)

    await until(gone, "worker Pods deleted", timeout)


async def one_run(target: Target, index: int, model_id: str, timeout: float) -> dict[str, float]:
    """Apply a TTSModel; time it resident in Redis and its Resident condition; delete it."""
    name = f"bench-{index}"
    path = f"/apis/duplex.dev/v1alpha1/namespaces/{target.namespace}/ttsmodels"
    start = time.monotonic()
    await target.client.create(path, model_body(name, model_id))
    try:

        async def redis_probe() -> bool:
            return await _resident_anywhere(target.redis, model_id)

        async def status_probe() -> bool:
            return await status_resident(target, name)

        async with asyncio.TaskGroup() as group:
            r = group.create_task(until(redis_probe, f"{model_id} in Redis", timeout))
            s = group.create_task(until(status_probe, f"{name} Resident", timeout))
    except* Failed as group:
        raise group.exceptions[0] from None
    finally:
        with contextlib.suppress(KubeApiError):
            await target.client.delete(f"{path}/{name}")

    async def gone() -> bool:
        return not await _resident_anywhere(target.redis, model_id)

    await until(gone, f"{model_id} unloaded after its TTSModel was deleted", timeout)
    return {"redis": r.result() - start, "status": s.result() - start}


@dataclass
class Figures:
    """One Series per (what the apply found, model, moment timed)."""

    series: dict[str, Series] = field(default_factory=dict)

    def get(self, name: str) -> Series:
        return self.series.setdefault(name, Series(name))

    def record(self, kind: str, model_id: str, result: dict[str, float] | str) -> None:
        for moment, label in (("redis", "resident in Redis"), ("status", "Resident condition")):
            series = self.get(f"{kind}, {model_id}: {label}")
            if isinstance(result, str):
                series.fail(result)
            else:
                series.add(result[moment])


async def run_bench(
    target: Target, models: list[str], runs: int, cold: int, timeout: float
) -> Figures:
    figures = Figures()
    index = 0
    for i in range(cold):
        model_id = models[i % len(models)]
        try:
            await _no_worker_pods(target, timeout)
            result: dict[str, float] | str = await one_run(target, index, model_id, timeout)
        except Failed as exc:
            result = str(exc)
        figures.record("new Pod", model_id, result)
        progress(index, "new Pod", model_id, result)
        index += 1
    for i in range(runs):
        model_id = models[i % len(models)]
        try:
            result = await one_run(target, index, model_id, timeout)
        except Failed as exc:
            result = str(exc)
        figures.record("existing Pod", model_id, result)
        progress(index, "existing Pod", model_id, result)
        index += 1
    return figures


def progress(index: int, kind: str, model_id: str, result: dict[str, float] | str) -> None:
    if isinstance(result, str):
        print(f"run {index:2d} ({kind}, {model_id}): FAILED: {result}", flush=True)
    else:
        print(
            f"run {index:2d} ({kind}, {model_id}): Redis {ms(result['redis'])} ms, "
            f"status {ms(result['status'])} ms",
            flush=True,
        )
