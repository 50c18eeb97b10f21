"""`duplex bench operator`: from applying a TTSModel to the model resident on a worker.

Each run creates a TTSModel with minResident 1 and times two moments: the worker's Redis
record lists the model as resident (what orchestrators route by) and the TTSModel's Resident
condition turns True (what `kubectl wait` sees). The model is then deleted and the bench waits
for the worker to unload it before the next run. The first run has no worker Pod yet, so it
includes creating the Pod and starting the worker; it is reported apart from the rest.

With `--kubeconfig` it measures a cluster where the operator already runs. Without, it brings
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import yaml

from duplex.bench.stats import ms, p50_p95, table
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


async def _until(probe: Callable[[], Awaitable[bool]], what: str, timeout: float) -> float:
    start = time.monotonic()
    while not await probe():
        if time.monotonic() - start > timeout:
            raise DuplexError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic()


async def _one_run(target: Target, index: int, model_id: str, timeout: float) -> dict[str, float]:
    name = f"bench-{index}"
    path = f"/apis/duplex.dev/v1alpha1/namespaces/{target.namespace}/ttsmodels"
    body: dict[str, Any] = {
        "apiVersion": "duplex.dev/v1alpha1",
        "kind": "TTSModel",
        "metadata": {"name": name},
        "spec": {
            "modelId": model_id,
            "family": "pico",
            "minResident": 1,
            "resources": {"memoryMiB": 10},
        },
    }
    start = time.monotonic()
    await target.client.create(path, body)
    redis_at = status_at = 0.0

    async def redis_probe() -> bool:
        return await _resident_anywhere(target.redis, model_id)

    async def status_probe() -> bool:
        return await _status_resident(target, name)

    async with asyncio.TaskGroup() as group:
        r = group.create_task(_until(redis_probe, f"{model_id} in Redis", timeout))
        s = group.create_task(_until(status_probe, f"{name} Resident", timeout))
    redis_at, status_at = r.result(), s.result()
    await target.client.delete(f"{path}/{name}")

    async def gone() -> bool:
        return not await _resident_anywhere(target.redis, model_id)

    await _until(gone, f"{model_id} unloaded", timeout)
    return {"redis": redis_at - start, "status": status_at - start}


async def run_operator_bench(opts: argparse.Namespace) -> int:
    if opts.runs < 1:
        raise DuplexError("--runs must be at least 1")
    models = [m.strip() for m in opts.models.split(",") if m.strip()]
    async with contextlib.AsyncExitStack() as stack:
        if opts.kubeconfig:
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
        results = []
        for index in range(opts.runs + 1):
            try:
                result = await _one_run(target, index, models[index % len(models)], opts.timeout)
            except KubeApiError as exc:
                raise DuplexError(
                    f"the API server refused the benchmark's TTSModel: {exc}"
                ) from exc
            results.append(result)
            kind = "new worker" if index == 0 else "existing worker"
            print(
                f"run {index:2d} ({kind}): Redis {ms(result['redis'])} ms, "
                f"status {ms(result['status'])} ms",
                flush=True,
            )
    cold, warm = results[0], results[1:]
    summary = {
        "first_apply_new_worker": cold,
        "redis": p50_p95([r["redis"] for r in warm]),
        "status": p50_p95([r["status"] for r in warm]),
    }
    rows = [
        ["resident in Redis", ms(summary["redis"]["p50"]), ms(summary["redis"]["p95"])],
        ["Resident condition", ms(summary["status"]["p50"]), ms(summary["status"]["p95"])],
        ["first apply, new Pod (Redis)", ms(cold["redis"]), "—"],
        ["first apply, new Pod (status)", ms(cold["status"]), "—"],
    ]
    print()
    print(f"apply TTSModel → resident, {len(warm)} runs on an existing worker (ms)")
    print(table(["", "p50", "p95"], rows))
    if opts.json:
        opts.json.write_text(json.dumps(summary, indent=2))
    return 0
