"""The operator against a real kube-apiserver, real Redis and real worker processes.

There is no kubelet: `DevKubelet` starts a real `duplex worker --kube` process for each worker
Pod the operator creates, with that Pod's arguments, as a kubelet would run its container. The
operators and the workers authenticate only through a credential plugin (an exec user), as
they would on EKS or GKE; the apiserver's audit log tells which process wrote what.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from duplex.modelset import MODEL_SET
from duplex.testing.apiserver import PLUGIN_USER, KubeApiServer
from tests.conftest import RedisServer
from tests.kube_cluster import (
    Cluster,
    cond_of,
    in_phase,
    model_spec,
    running_cluster,
    when_false,
    when_true,
    when_unknown,
)


@pytest.fixture
async def cluster(
    kube_apiserver: KubeApiServer,
    kube_namespace: str,
    redis_server: RedisServer,
    tmp_path: Path,
) -> AsyncIterator[Cluster]:
    async with running_cluster(
        kube_apiserver, kube_namespace, redis_server.url, tmp_path
    ) as running:
        yield running


async def test_models_are_placed_loaded_bound_and_evicted(cluster: Cluster) -> None:
    # A model kept resident: the operator creates a worker Pod for it.
    await cluster.apply("TTSModel", "pico-en", model_spec("pico-en", minResident=1))

    async def one_pod() -> dict[str, Any] | None:
        pods = await cluster.pods()
        return pods[0] if len(pods) == 1 else None

    pod = await cluster.eventually(one_pod, "a worker pod")
    name = pod["metadata"]["name"]
    assert name == "duplex-worker-cpu-0"
    assert pod["metadata"]["annotations"][MODEL_SET] == "pico-en"
    assert pod["metadata"]["labels"]["duplex.dev/pool"] == "cpu"
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("TTSModel", "pico-en")
    container = pod["spec"]["containers"][0]
    assert container["image"] == "duplex:test"
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "512Mi"}
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert container["args"][:2] == ["worker", "--kube"]
    assert "--test-models" in container["args"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"

    # The real worker process loads it and says so in Redis; the status follows.
    await cluster.eventually(lambda: cluster.resident_on(name, "pico-en"), "pico-en resident")
    resident = await cluster.eventually(
        lambda: when_true(cluster.condition("ttsmodels", "pico-en", "Resident")), "Resident=True"
    )
    assert resident["reason"] == "Loaded"
    status = (await cluster.get("ttsmodels", "pico-en"))["status"]
    assert status["residentOn"] == [name]
    assert status["observedGeneration"] == 1

    # A session for another model hot-loads it onto the same worker (it fits) and binds.
    await cluster.apply(
        "TTSModel",
        "pico-de",
        model_spec("pico-de", minResident=0, ttlSeconds=2, minResidencySeconds=1),
    )
    await cluster.apply("VoiceSession", "call-1", {"modelId": "pico-de", "room": "room-1"})
    session = await cluster.eventually(
        lambda: in_phase(cluster, "call-1", "Bound"), "the session to be Bound"
    )
    assert session["status"]["worker"] == name
    assert session["status"]["workerAddr"].startswith("127.0.0.1:")
    await cluster.eventually(lambda: cluster.resident_on(name, "pico-de"), "pico-de resident")
    await cluster.eventually(
        lambda: when_true(cluster.condition("voicesessions", "call-1", "Ready")), "session Ready"
    )
    assert len(await cluster.pods()) == 1

    # While the session is bound, its model stays even though it is idle past the TTL.
    await asyncio.sleep(3.5)
    assert await cluster.resident_on(name, "pico-de")
    pod = (await cluster.pods())[0]
    assert pod["metadata"]["annotations"][MODEL_SET] == "pico-en,pico-de"

    # The session ends; after the TTL the operator patches the model out, the worker unloads.
    await cluster.client.delete(cluster.path("voicesessions", "call-1"))

    async def unloaded() -> bool:
        return not await cluster.resident_on(name, "pico-de")

    await cluster.eventually(unloaded, "pico-de unloaded", timeout=30)
    pod = (await cluster.pods())[0]
    assert pod["metadata"]["annotations"][MODEL_SET] == "pico-en"
    assert await cluster.resident_on(name, "pico-en")
    evicted = await cluster.eventually(lambda: cluster.events("Evicted"), "an Evicted event")
    assert evicted[0]["involvedObject"]["name"] == "pico-de"
    resident = await cluster.eventually(
        lambda: when_false(cluster.condition("ttsmodels", "pico-de", "Resident")), "Resident=False"
    )

    # Only the plugin authenticated the operator and the worker: the operator's writes are the
    # plugin user's, and both processes ran the plugin (once each: its token lasts an hour).
    writes = cluster.writes()
    assert writes and {w["user"]["username"] for w in writes} == {PLUGIN_USER}
    calls = [json.loads(line)["caller"] for line in cluster.plugin_calls()]
    assert sorted(c[c.index("duplex.cli") + 1] for c in calls) == ["operator", "worker"]
    # kopf's watches logged in with the same credentials (its handlers ran on watch events).
    assert "Handler 'wake' succeeded" in cluster.operator.log.read_text()


async def test_a_model_the_worker_cannot_load_fails_with_the_workers_error(
    cluster: Cluster,
) -> None:
    await cluster.apply(
        "TTSModel",
        "broken",
        model_spec("broken", family="piper", source="/nonexistent/voice.onnx", minResident=1),
    )
    await cluster.apply("VoiceSession", "call-2", {"modelId": "broken", "room": "room-2"})
    ready = await cluster.eventually(
        lambda: when_false(cluster.condition("ttsmodels", "broken", "Ready")), "Ready=False"
    )
    assert ready["reason"] == "LoadFailed"
    assert "/nonexistent/voice.onnx" in ready["message"]
    assert "duplex-worker-cpu-0" in ready["message"]
    session = await cluster.eventually(
        lambda: in_phase(cluster, "call-2", "Failed"), "the session to fail"
    )
    assert "/nonexistent/voice.onnx" in session["status"]["conditions"][0]["message"]
    assert await cluster.events("LoadFailed")
    # The failed model is taken out of the set and is not retried for this generation.
    pod = (await cluster.pods())[0]
    await asyncio.sleep(1.5)
    pod = (await cluster.pods())[0]
    assert "broken" not in pod["metadata"]["annotations"].get(MODEL_SET, "")


async def test_restarting_the_operator_keeps_pods_and_statuses(cluster: Cluster) -> None:
    await cluster.apply("TTSModel", "pico-en", model_spec("pico-en", minResident=1))
    resident = await cluster.eventually(
        lambda: when_true(cluster.condition("ttsmodels", "pico-en", "Resident")), "Resident=True"
    )
    # Kill it mid-reconcile: right after a burst of changes it must react to.
    await cluster.apply("TTSModel", "pico-fr", model_spec("pico-fr", minResident=1))
    await cluster.apply("TTSModel", "pico-es", model_spec("pico-es", minResident=1))
    await asyncio.sleep(0.3)
    cluster.operator.kill()
    cluster.operator.start()
    for model in ("pico-fr", "pico-es"):
        await cluster.eventually(
            lambda model=model: when_true(cluster.condition("ttsmodels", model, "Resident")),
            f"{model} Resident",
        )
    pods = await cluster.pods()
    # 3 models x 10 MiB fit in one 100 MiB worker: still exactly one Pod, never a duplicate.
    assert [p["metadata"]["name"] for p in pods] == ["duplex-worker-cpu-0"]
    assert cluster.kubelet.started == ["duplex-worker-cpu-0"]
    again = await cluster.condition("ttsmodels", "pico-en", "Resident")
    assert again == resident  # not rewritten: same lastTransitionTime


async def test_placement_spreads_by_memory_and_gpu_models_go_to_gpu_pods(
    cluster: Cluster,
) -> None:
    # 60 MiB each in 100 MiB workers: the second copy of memory needs a second Pod.
    await cluster.apply(
        "TTSModel",
        "pico-en",
        {**model_spec("pico-en", minResident=1), "resources": {"memoryMiB": 60}},
    )
    await cluster.apply(
        "TTSModel",
        "pico-it",
        {**model_spec("pico-it", minResident=1), "resources": {"memoryMiB": 60}},
    )

    async def two_pods() -> list[dict[str, Any]] | None:
        pods = await cluster.pods()
        return pods if len(pods) == 2 else None

    pods = await cluster.eventually(two_pods, "two worker pods")
    sets = sorted(p["metadata"]["annotations"][MODEL_SET] for p in pods)
    assert sets == ["pico-en", "pico-it"]

    # A third does not fit anywhere and the pool is at its maximum: a clear condition.
    await cluster.apply(
        "TTSModel",
        "pico-de",
        {**model_spec("pico-de", minResident=1), "resources": {"memoryMiB": 60}},
    )
    ready = await cluster.eventually(
        lambda: when_false(cluster.condition("ttsmodels", "pico-de", "Ready")), "Ready=False"
    )
    assert ready["reason"] == "NoCapacity"
    assert "full" in ready["message"]

    # A GPU model gets a GPU Pod: one nvidia.com/gpu, the pool's selector and the toleration.
    await cluster.apply(
        "TTSModel",
        "pico-gb",
        {**model_spec("pico-gb", minResident=1), "resources": {"memoryMiB": 10, "gpu": True}},
    )

    async def gpu_pod() -> dict[str, Any] | None:
        for pod in await cluster.pods():
            if pod["metadata"]["labels"]["duplex.dev/pool"] == "gpu":
                return pod
        return None

    pod = await cluster.eventually(gpu_pod, "a GPU worker pod")
    spec = pod["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert pod["metadata"]["annotations"][MODEL_SET] == "pico-gb"


IDENTITY = re.compile(r"^duplex-operator/\S+ \((?P<identity>.+)\)$")


def writers(writes: list[dict[str, Any]]) -> set[str]:
    """The operator identities behind audited writes, leases left out (every candidate
    writes those)."""
    found = set()
    for write in writes:
        if (write.get("objectRef") or {}).get("resource") == "leases":
            continue
        match = IDENTITY.match(write["userAgent"])
        assert match is not None, write["userAgent"]
        found.add(match["identity"])
    return found


async def test_of_two_operators_one_acts_and_the_other_takes_over_within_15_s(
    kube_apiserver: KubeApiServer, kube_namespace: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    # The chart's lease timing (10 s lease, 7 s renew deadline, 2 s retry).
    async with running_cluster(
        kube_apiserver,
        kube_namespace,
        redis_server.url,
        tmp_path,
        operators=2,
        leader_election={},
    ) as cluster:
        holder = await cluster.eventually(cluster.lease_holder, "a lease holder", 30)
        await cluster.apply("TTSModel", "pico-en", model_spec("pico-en", minResident=1))
        await cluster.eventually(
            lambda: when_true(cluster.condition("ttsmodels", "pico-en", "Resident")), "Resident"
        )
        # Both ran all along; the one holding the lease made every write.
        assert writers(cluster.writes()) == {holder}
        [leader] = [o for o in cluster.operators if holder in o.log.read_text()]
        [standby] = [o for o in cluster.operators if o is not leader]

        killed_at = time.time()
        leader.kill()
        await cluster.apply("TTSModel", "pico-de", model_spec("pico-de", minResident=1))

        async def new_holder() -> str | None:
            now = await cluster.lease_holder()
            return now if now is not None and now != holder else None

        successor = await cluster.eventually(new_holder, "another lease holder", 30)
        takeover = time.time() - killed_at
        await cluster.eventually(
            lambda: when_true(cluster.condition("ttsmodels", "pico-de", "Resident")), "Resident"
        )
        acted = time.time() - killed_at
        assert successor in standby.log.read_text()
        assert takeover < 15, f"the standby took over {takeover:.1f} s after the leader died"
        print(f"takeover {takeover:.1f} s; the new model Resident {acted:.1f} s after the kill")
        assert writers(cluster.writes(since=killed_at + 0.5)) == {successor}
        assert writers(cluster.writes()) == {holder, successor}


async def test_a_pod_the_api_server_refuses_does_not_stall_the_rest(
    kube_apiserver: KubeApiServer, kube_namespace: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    # The GPU pool's Pods are invalid (requests above limits): every one is refused.
    pools = [
        {"name": "cpu", "max_pods": 1, "memory_mib": 100, "args": ["--test-models"]},
        {
            "name": "gpu",
            "gpu": True,
            "max_pods": 1,
            "memory_mib": 1000,
            "resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}},
        },
    ]
    async with running_cluster(
        kube_apiserver, kube_namespace, redis_server.url, tmp_path, pools=pools
    ) as cluster:
        gpu = {**model_spec("big", minResident=1), "resources": {"memoryMiB": 10, "gpu": True}}
        await cluster.apply("TTSModel", "big", gpu)
        await cluster.apply("TTSModel", "pico-en", model_spec("pico-en", minResident=1))
        ready = await cluster.eventually(
            lambda: when_false(cluster.condition("ttsmodels", "big", "Ready")), "big Ready=False"
        )
        assert ready["reason"] == "PodCreateFailed"
        assert "must be less than or equal to memory limit" in ready["message"]
        await cluster.eventually(
            lambda: when_true(cluster.condition("ttsmodels", "pico-en", "Resident")),
            "the CPU model Resident all the same",
        )
        [warning] = await cluster.eventually(
            lambda: cluster.events("PodCreateFailed"), "a PodCreateFailed event"
        )
        assert (warning["type"], warning["involvedObject"]["name"]) == ("Warning", "big")
        assert [p["metadata"]["name"] for p in await cluster.pods()] == ["duplex-worker-cpu-0"]


async def test_a_redis_outage_stops_only_what_needs_redis(
    kube_apiserver: KubeApiServer, kube_namespace: str, tmp_path: Path
) -> None:
    redis = RedisServer()
    try:
        async with running_cluster(kube_apiserver, kube_namespace, redis.url, tmp_path) as cluster:
            await cluster.apply("TTSModel", "pico-en", model_spec("pico-en", minResident=1))
            await cluster.eventually(
                lambda: when_true(cluster.condition("ttsmodels", "pico-en", "Resident")), "Resident"
            )
            redis.stop()
            unknown = await cluster.eventually(
                lambda: when_unknown(cluster.condition("ttsmodels", "pico-en", "Resident")),
                "Resident=Unknown",
            )
            assert unknown["reason"] == "RedisUnavailable"
            assert redis.url in unknown["message"]
            # maxDurationSeconds and Pod creation need no Redis.
            session = {"modelId": "pico-en", "room": "r", "maxDurationSeconds": 2}
            await cluster.apply("VoiceSession", "short", session)
            ended = await cluster.eventually(
                lambda: in_phase(cluster, "short", "Ended"), "the session Ended"
            )
            assert cond_of(ended, "Ready")["reason"] == "MaxDuration"
            spec = {**model_spec("big", minResident=1), "resources": {"memoryMiB": 95}}
            await cluster.apply("TTSModel", "big", spec)  # too big to join pico-en's Pod

            async def two_pods() -> bool:
                return len(await cluster.pods()) == 2

            await cluster.eventually(two_pods, "a second worker Pod")
            # Back: residency is known again.
            redis = RedisServer(port=redis.port)
            await cluster.eventually(
                lambda: when_true(cluster.condition("ttsmodels", "pico-en", "Resident")),
                "Resident again",
            )
    finally:
        redis.stop()


async def test_sessions_beyond_max_sessions_per_pod_scale_the_pool_out(
    kube_apiserver: KubeApiServer, kube_namespace: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    pool = {
        "name": "cpu",
        "max_pods": 2,
        "memory_mib": 100,
        "max_sessions": 2,
        "max_sessions_per_pod": 1,
        "args": ["--test-models"],
    }
    async with running_cluster(
        kube_apiserver, kube_namespace, redis_server.url, tmp_path, pools=[pool]
    ) as cluster:
        await cluster.apply("TTSModel", "pico-en", model_spec("pico-en", minResident=1))
        for name in ("first", "second"):
            await cluster.apply("VoiceSession", name, {"modelId": "pico-en", "room": name})
            await cluster.eventually(lambda name=name: in_phase(cluster, name, "Bound"), name)
        # Past its target the first Pod still takes the second session (the model is loaded
        # there), and the model goes to a second Pod for the next.
        holders = {
            (await cluster.get("voicesessions", n))["status"]["worker"] for n in ("first", "second")
        }
        assert holders == {"duplex-worker-cpu-0"}
        await cluster.eventually(
            lambda: cluster.resident_on("duplex-worker-cpu-1", "pico-en"), "a second copy"
        )
        await cluster.apply("VoiceSession", "third", {"modelId": "pico-en", "room": "third"})
        third = await cluster.eventually(lambda: in_phase(cluster, "third", "Bound"), "third")
        assert third["status"]["worker"] == "duplex-worker-cpu-1"
