"""`duplex bench operator`: from applying a TTSModel to the model resident on a worker.

Each run creates a TTSModel with minResident 1 and times two moments: the worker's Redis
record lists the model as resident (what orchestrators route by) and the TTSModel's Resident
condition turns True (what `kubectl wait` sees). The model is then deleted and the bench waits
for the worker to unload it before the next run. Runs of two kinds, each reported per model
(the default mixes Pico with the neural Piper voice):
- new Pod: every worker Pod is deleted first, so the apply includes creating a Pod, starting
  the worker and loading the model;
- existing Pod: the Pod from the runs before is there, so only the model loads.
A run that does not reach a state within `--timeout` is a failed run, counted and printed.

With `--cluster` it measures real Pods on the local Kubernetes of tools/cluster, and also a
worker Pod deleted under its models (duplex.bench.cluster). `--scale` times one reconcile pass
over a large synthetic namespace instead, and counts its API writes (duplex.bench.scale). With
`--kubeconfig` it measures a cluster where the operator already runs. Without either, it brings
up everything on this machine: etcd + kube-apiserver (from a source checkout's test
binaries), redis-server, `duplex operator`, and a stand-in kubelet that runs worker Pods as
local processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis.asyncio as aioredis
import yaml

from duplex.bench.stats import Series, failure_lines, ms, series_table
from duplex.discovery import KEY_PREFIX, WorkerRecord
from duplex.errors import DuplexError
from duplex.kube import KubeApiError, KubeClient
from duplex.localredis import RedisServer


@dataclass
class Target:
    client: KubeClient
    namespace: str
    redis: aioredis.Redis


@contextlib.asynccontextmanager
async def _local_cluster(workdir: Path) -> AsyncIterator[Target]:
    # Imported here: only this path needs the operator package and a source checkout.
    from duplex_operator.devcluster import KubeControlPlane
    from duplex_operator.devkubelet import DevKubelet

    plane = KubeControlPlane()
    api = await asyncio.to_thread(plane.start)
    try:
        redis_server = await asyncio.to_thread(RedisServer)
        try:
            redis_url = redis_server.url
            client = KubeClient.load(api.kubeconfig)
            namespace = "duplex-bench"
            await client.create("/api/v1/namespaces", {"metadata": {"name": namespace}})
            config = workdir / "operator.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "namespace": namespace,
                        "redis": redis_url,
                        "pools": [{"name": "cpu", "min_pods": 0, "max_pods": 1}],
                    }
                )
            )
            log = (workdir / "operator.log").open("ab")
            operator = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "duplex.cli",
                "operator",
                "--config",
                str(config),
                "--kubeconfig",
                str(api.kubeconfig),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            kubelet = DevKubelet(client, namespace, api.kubeconfig, workdir / "pods")
            await kubelet.start()
            redis = aioredis.from_url(redis_url)
            try:
                yield Target(client, namespace, redis)
            finally:
                await kubelet.aclose()
                operator.terminate()
                await operator.wait()
                log.close()
                await redis.aclose()
                await client.aclose()
        finally:
            await asyncio.to_thread(redis_server.stop)
    finally:
        await asyncio.to_thread(plane.stop)


async def _resident_anywhere(redis: aioredis.Redis, model_id: str) -> bool:
    keys = [k async for k in redis.scan_iter(match=f"{KEY_PREFIX}*")]
    for raw in await redis.mget(keys) if keys else []:
        if raw is not None and model_id in WorkerRecord.from_json(raw).resident_models:
            return True
    return False


async def _status_resident(target: Target, name: str) -> bool:
    obj = await target.client.get(
        f"/apis/duplex.dev/v1alpha1/namespaces/{target.namespace}/ttsmodels/{name}"
    )
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Resident" and c["status"] == "True" for c in conditions)


class Failed(Exception):
    """A run that did not reach the state it times."""


async def _until(probe: Callable[[], Awaitable[bool]], what: str, timeout: float) -> float:
    start = time.monotonic()
    while not await probe():
        if time.monotonic() - start > timeout:
            raise Failed(f"no {what} within {timeout:.0f} s")
        await asyncio.sleep(0.01)
    return time.monotonic()


def _model_body(name: str, model_id: str) -> dict[str, Any]:
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
    from duplex_operator.resources import WORKER_SELECTOR

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

    await _until(gone, "worker Pods deleted", timeout)


async def _one_run(target: Target, index: int, model_id: str, timeout: float) -> dict[str, float]:
    """Apply a TTSModel; time it resident in Redis and its Resident condition; delete it."""
    name = f"bench-{index}"
    path = f"/apis/duplex.dev/v1alpha1/namespaces/{target.namespace}/ttsmodels"
    start = time.monotonic()
    await target.client.create(path, _model_body(name, model_id))
    try:

        async def redis_probe() -> bool:
            return await _resident_anywhere(target.redis, model_id)

        async def status_probe() -> bool:
            return await _status_resident(target, name)

        async with asyncio.TaskGroup() as group:
            r = group.create_task(_until(redis_probe, f"{model_id} in Redis", timeout))
            s = group.create_task(_until(status_probe, f"{name} Resident", timeout))
    except* Failed as group:
        raise group.exceptions[0] from None
    finally:
        with contextlib.suppress(KubeApiError):
            await target.client.delete(f"{path}/{name}")

    async def gone() -> bool:
        return not await _resident_anywhere(target.redis, model_id)

    await _until(gone, f"{model_id} unloaded after its TTSModel was deleted", timeout)
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


async def _bench(
    target: Target, models: list[str], runs: int, cold: int, timeout: float
) -> Figures:
    figures = Figures()
    index = 0
    for i in range(cold):
        model_id = models[i % len(models)]
        try:
            await _no_worker_pods(target, timeout)
            result: dict[str, float] | str = await _one_run(target, index, model_id, timeout)
        except Failed as exc:
            result = str(exc)
        figures.record("new Pod", model_id, result)
        _progress(index, "new Pod", model_id, result)
        index += 1
    for i in range(runs):
        model_id = models[i % len(models)]
        try:
            result = await _one_run(target, index, model_id, timeout)
        except Failed as exc:
            result = str(exc)
        figures.record("existing Pod", model_id, result)
        _progress(index, "existing Pod", model_id, result)
        index += 1
    return figures


def _progress(index: int, kind: str, model_id: str, result: dict[str, float] | str) -> None:
    if isinstance(result, str):
        print(f"run {index:2d} ({kind}, {model_id}): FAILED: {result}", flush=True)
    else:
        print(
            f"run {index:2d} ({kind}, {model_id}): Redis {ms(result['redis'])} ms, "
            f"status {ms(result['status'])} ms",
            flush=True,
        )


async def run_operator_bench(opts: argparse.Namespace) -> int:
    if opts.runs < 1:
        raise DuplexError("--runs must be at least 1")
    if getattr(opts, "scale", False):
        from duplex.bench.scale import run_scale_bench

        return await run_scale_bench(opts)
    models = [m.strip() for m in opts.models.split(",") if m.strip()]
    async with contextlib.AsyncExitStack() as stack:
        if opts.cluster:
            # Real Pods on tools/cluster's Kubernetes (see duplex.bench.cluster).
            from duplex.bench.cluster import local_kubernetes

            target = await stack.enter_async_context(local_kubernetes(opts.timeout))
        elif opts.kubeconfig:
            if not opts.redis:
                raise DuplexError("--redis is needed with --kubeconfig (where workers register)")
            client = KubeClient.load(opts.kubeconfig)
            stack.push_async_callback(client.aclose)
            redis = aioredis.from_url(opts.redis)
            stack.push_async_callback(redis.aclose)
            target = Target(client, opts.namespace or client.namespace, redis)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="duplex-")))
            print("starting etcd, kube-apiserver, redis, the operator ...", flush=True)
            target = await stack.enter_async_context(_local_cluster(workdir))
        try:
            figures = await _bench(target, models, opts.runs, opts.cold_runs, opts.timeout)
            if opts.cluster:
                from duplex.bench.cluster import pod_deleted_runs

                await pod_deleted_runs(target, figures, models, opts.cold_runs, opts.timeout)
        except KubeApiError as exc:
            raise DuplexError(f"the API server refused the benchmark's TTSModel: {exc}") from exc
    series = list(figures.series.values())
    for s in series:
        s.unit = "ms"
    print()
    print(series_table(series, "apply TTSModel → resident (ms)"))
    lines = failure_lines(series)
    if lines:
        print("failed runs:", *lines, sep="\n")
    if opts.plot:
        from duplex.bench.plot import plot_series

        plot_series(opts.plot, "duplex bench operator: apply TTSModel → resident", series)
    if opts.json:
        opts.json.write_text(json.dumps({"operator": [s.summary() for s in series]}, indent=2))
    return 1 if lines else 0
