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
worker Pod deleted under its models (`bench.cluster`). `--scale` times one reconcile pass over a
large synthetic namespace instead, and counts its API writes (`bench.scale`). With
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
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as aioredis
import yaml

from duplex.bench.stats import failure_lines, series_table
from duplex.errors import DuplexError
from duplex.kube import KubeApiError, KubeClient
from duplex.testing.redis_server import RedisServer
from duplex_operator.bench.runs import Target, run_bench


@contextlib.asynccontextmanager
async def _local_cluster(workdir: Path) -> AsyncIterator[Target]:
    # Imported here: only this path needs the operator package and a source checkout.
    from duplex.testing.apiserver import KubeControlPlane
    from duplex.testing.kubelet import DevKubelet

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


async def run_operator_bench(opts: argparse.Namespace) -> int:
    if opts.runs < 1:
        raise DuplexError("--runs must be at least 1")
    if getattr(opts, "scale", False):
        from duplex_operator.bench.scale import run_scale_bench

        return await run_scale_bench(opts)
    models = [m.strip() for m in opts.models.split(",") if m.strip()]
    async with contextlib.AsyncExitStack() as stack:
        if opts.cluster:
            # Real Pods on tools/cluster's Kubernetes (see duplex_operator.bench.cluster).
            from duplex_operator.bench.cluster import local_kubernetes

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
            figures = await run_bench(target, models, opts.runs, opts.cold_runs, opts.timeout)
            if opts.cluster:
                from duplex_operator.bench.cluster import pod_deleted_runs

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
