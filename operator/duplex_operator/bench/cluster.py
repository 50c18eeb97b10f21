"""`duplex bench operator --cluster`: the operator bench on real Pods of tools/cluster.

Run inside the local single-node cluster's network, from a source checkout:

    tools/cluster up && tools/cluster exec duplex bench operator --cluster

The chart is installed into a namespace of its own (`duplex-bench`, enforcing the `restricted`
Pod Security Standard) on the image `tools/cluster image` builds, with no standing worker Pod,
so that a "new Pod" run pays for scheduling, the container's start and the model's load. Besides
the operator bench's own runs, it times a worker Pod deleted under a resident model until the
model is resident again on the Pod the operator creates in its place. Everything is removed
after.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from urllib.parse import quote

import redis.asyncio as aioredis

from duplex.discovery import KEY_PREFIX, WorkerRecord
from duplex.errors import DuplexError
from duplex.kube import KubeApiError, KubeClient
from duplex_operator.bench.runs import (
    Failed,
    Figures,
    Target,
    model_body,
    progress,
    status_resident,
    until,
)

ROOT = Path(__file__).resolve().parents[3]
NAMESPACE = "duplex-bench"
RELEASE = "bench"


async def _run(*argv: str | Path, timeout: float) -> str:
    process = await asyncio.create_subprocess_exec(
        *(str(a) for a in argv),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        command = " ".join(str(a) for a in argv[:2])
        raise DuplexError(f"{command} took over {timeout:.0f} s") from None
    if process.returncode != 0:
        raise DuplexError(f"{' '.join(str(a) for a in argv)} failed:\n{err.decode()[-2000:]}")
    return out.decode()


def _chart_values(duplex: str, redis: str) -> list[str]:
    values = []
    for key, ref in (("image", duplex), ("redis.image", redis)):
        repository, tag = ref.rsplit(":", 1)
        values += [f"{key}.repository={repository}", f"{key}.tag={tag}", f"{key}.pullPolicy=Never"]
    # One worker Pod at most, and none standing: the "new Pod" runs start from no Pod.
    values += [
        "workerPools.cpu.minPods=0",
        "workerPools.cpu.maxPods=1",
        "workerPools.cpu.resources.requests.cpu=500m",
    ]
    return [arg for value in values for arg in ("--set", value)]


@contextlib.asynccontextmanager
async def local_kubernetes(timeout: float) -> AsyncIterator[Target]:
    state = os.environ.get("DUPLEX_CLUSTER")
    cluster = ROOT / "tools" / "cluster"
    if not state or not cluster.is_file():
        raise DuplexError(
            "--cluster runs inside the local cluster, from a source checkout: "
            "tools/cluster up, then tools/cluster exec duplex bench operator --cluster"
        )
    kubeconfig = Path(state) / "kubeconfig"
    print("building and importing the images (tools/cluster image) ...", flush=True)
    duplex, redis_image = (await _run(cluster, "image", "duplex", "redis", timeout=1800)).split()
    helm = ["helm", "--kubeconfig", str(kubeconfig)]
    client = KubeClient.load(kubeconfig)
    try:
        with contextlib.suppress(KubeApiError):
            await client.delete(f"/api/v1/namespaces/{NAMESPACE}")
        namespace = f"/api/v1/namespaces/{NAMESPACE}"
        await until(lambda: _gone(client, namespace), "the old namespace gone", timeout)
        labels = {"pod-security.kubernetes.io/enforce": "restricted"}
        await client.create(
            "/api/v1/namespaces", {"metadata": {"name": NAMESPACE, "labels": labels}}
        )
        print(f"helm install {RELEASE} into namespace {NAMESPACE} ...", flush=True)
        await _run(
            *helm,
            "install",
            RELEASE,
            ROOT / "charts" / "duplex",
            "--namespace",
            NAMESPACE,
            *_chart_values(duplex, redis_image),
            timeout=60,
        )
        # Not `helm install --wait`: the orchestrator is not Ready while no worker runs, and
        # none does until the first apply. The operator and Redis are what the bench needs.
        for name in (f"{RELEASE}-operator", f"{RELEASE}-redis"):
            deployment = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}"
            await until(partial(_available, client, deployment), f"{name} available", timeout)
        service = await client.get(f"/api/v1/namespaces/{NAMESPACE}/services/{RELEASE}-redis")
        port = service["spec"]["ports"][0]["port"]
        # The chart's Redis asks for the password it generated into the release's Secret.
        secret = await client.get(f"/api/v1/namespaces/{NAMESPACE}/secrets/{RELEASE}-redis")
        password = quote(base64.b64decode(secret["data"]["password"]).decode(), safe="")
        address = f"{service['spec']['clusterIP']}:{port}"
        redis = aioredis.from_url(f"redis://:{password}@{address}/0")
        try:
            yield Target(client, NAMESPACE, redis)
        finally:
            await redis.aclose()
            await _run(*helm, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", timeout=300)
            with contextlib.suppress(KubeApiError):
                await client.delete(f"/api/v1/namespaces/{NAMESPACE}")
    finally:
        await client.aclose()


async def _available(client: KubeClient, path: str) -> bool:
    status = (await client.get(path)).get("status") or {}
    return bool(status.get("availableReplicas"))


async def _gone(client: KubeClient, path: str) -> bool:
    try:
        await client.get(path)
    except KubeApiError as exc:
        if exc.status == 404:
            return True
        raise
    return False


async def _holder(target: Target, name: str) -> tuple[str, str] | None:
    """(Pod name, uid) of the Pod a Resident TTSModel names in residentOn."""
    if not await status_resident(target, name):
        return None
    path = f"/apis/duplex.dev/v1alpha1/namespaces/{target.namespace}/ttsmodels/{name}"
    resident_on = (await target.client.get(path)).get("status", {}).get("residentOn") or []
    if not resident_on:
        return None
    try:
        pod = await target.client.get(
            f"/api/v1/namespaces/{target.namespace}/pods/{resident_on[0]}"
        )
    except KubeApiError:
        return None
    return str(pod["metadata"]["name"]), str(pod["metadata"]["uid"])


async def _registered_since(redis: aioredis.Redis, model_id: str, since: float) -> bool:
    """A worker that started after `since` (wall clock) reports the model resident."""
    keys = [k async for k in redis.scan_iter(match=f"{KEY_PREFIX}*")]
    for raw in await redis.mget(keys) if keys else []:
        if raw is None:
            continue
        record = WorkerRecord.from_json(raw)
        if record.started_at > since and model_id in record.resident_models:
            return True
    return False


async def pod_deleted_runs(
    target: Target, figures: Figures, models: list[str], runs: int, timeout: float
) -> None:
    """All the models resident on the one worker Pod; delete it `runs` times and time each
    model resident again on the Pod the operator creates in its place."""
    path = f"/apis/duplex.dev/v1alpha1/namespaces/{target.namespace}/ttsmodels"
    names = {model_id: f"bench-held-{i}" for i, model_id in enumerate(models)}
    try:
        for model_id, name in names.items():
            await target.client.create(path, model_body(name, model_id))
        for name in names.values():

            async def placed(name: str = name) -> bool:
                return await _holder(target, name) is not None

            await until(placed, f"{name} Resident", timeout)
        for index in range(runs):
            try:
                results = await _one_pod_deleted(target, names, timeout)
            except Failed as exc:
                results = {model_id: str(exc) for model_id in names}
            for model_id, result in results.items():
                figures.record("Pod deleted", model_id, result)
                progress(index, "Pod deleted", model_id, result)
    finally:
        for name in names.values():
            with contextlib.suppress(KubeApiError):
                await target.client.delete(f"{path}/{name}")


async def _one_pod_deleted(
    target: Target, names: dict[str, str], timeout: float
) -> dict[str, dict[str, float] | str]:
    held = await _holder(target, next(iter(names.values())))
    if held is None:
        raise Failed("the models were not Resident before their Pod was deleted")
    pod, uid = held
    since = time.time()
    start = time.monotonic()
    await target.client.delete(f"/api/v1/namespaces/{target.namespace}/pods/{pod}")

    async def timed(model_id: str, name: str) -> dict[str, float] | str:
        async def redis_probe() -> bool:
            return await _registered_since(target.redis, model_id, since)

        async def status_probe() -> bool:
            now = await _holder(target, name)
            return now is not None and now[1] != uid

        failure = ""
        try:
            async with asyncio.TaskGroup() as group:
                r = group.create_task(until(redis_probe, f"{model_id} in Redis again", timeout))
                s = group.create_task(until(status_probe, f"{name} Resident again", timeout))
        except* Failed as failed:
            failure = str(failed.exceptions[0])
        if failure:
            return failure
        return {"redis": r.result() - start, "status": s.result() - start}

    async with asyncio.TaskGroup() as group:
        tasks = {m: group.create_task(timed(m, name)) for m, name in names.items()}
    return {model_id: task.result() for model_id, task in tasks.items()}
