"""The Helm chart on a real cluster: one release, from `helm install` to `helm uninstall`.

The tests run in file order on the same release: install, a model made resident, a spoken
conversation through the orchestrator's Service, a worker Pod deleted and recreated, TTL
eviction held off by a VoiceSession, an upgrade, and the uninstall.
"""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import redis.asyncio as aioredis

from duplex.clients.talk import talk_file
from duplex.discovery import KEY_PREFIX, WorkerRecord
from duplex.rpc.client import TtsClient
from tests.cluster.conftest import (
    ROOT,
    Cluster,
    Images,
    Obj,
    condition,
    delete_namespace,
    image_values,
    pod_ready,
    restricted_namespace,
    run,
    until,
)
from tests.conftest import Listener

pytestmark = pytest.mark.cluster

NAMESPACE = "duplex-helm"
RELEASE = "duplex"
WORKERS = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=worker"
SAMPLE = ROOT / "manifests" / "samples" / "ttsmodel-piper-joe.yaml"

# A node of this machine has two CPUs: the chart's requests are scaled down so that a rolling
# update (old and new orchestrator side by side) still fits next to a worker.
SMALL_NODE = [
    "workerPools.cpu.resources.requests.cpu=500m",
    "orchestrator.resources.requests.cpu=250m",
]
# The LiveKit server runs too (the orchestrator does not join it without a public URL).
LIVEKIT = [
    "livekit.enabled=true",
    "livekit.apiKey=devkey",
    "livekit.apiSecret=0123456789abcdef0123456789abcdef",
]


@pytest.fixture(scope="module")
def release(cluster: Cluster, images: Images) -> Iterator[str]:
    delete_namespace(cluster, NAMESPACE)
    restricted_namespace(cluster, NAMESPACE)
    values = [*image_values(images), *SMALL_NODE, *LIVEKIT]
    cluster.helm(
        "install",
        RELEASE,
        str(ROOT / "charts" / "duplex"),
        "--namespace",
        NAMESPACE,
        "--wait",
        "--timeout",
        "5m",
        *[arg for value in values for arg in ("--set", value)],
    )
    yield RELEASE
    subprocess.run(
        ["helm", "--kubeconfig", str(cluster.kubeconfig), "uninstall", RELEASE, "-n", NAMESPACE],
        capture_output=True,
        check=False,
        timeout=300,
    )
    cluster.kubectl("delete", "ttsmodels,voicesessions", "--all", "-n", NAMESPACE, "--wait")
    delete_namespace(cluster, NAMESPACE)


def ttsmodel(cluster: Cluster, name: str) -> Obj:
    return cluster.get(NAMESPACE, "ttsmodel", name)


async def worker_records(cluster: Cluster) -> dict[str, WorkerRecord]:
    url = cluster.service_url(NAMESPACE, f"{RELEASE}-redis", scheme="redis")
    redis = aioredis.from_url(url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{KEY_PREFIX}*")]
        raws = await redis.mget(keys) if keys else []
        records = [WorkerRecord.from_json(raw) for raw in raws if raw is not None]
        return {record.name: record for record in records}
    finally:
        await redis.aclose()


async def until_async(probe: Callable[[], Awaitable[bool]], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.5)


def workers(cluster: Cluster) -> list[Obj]:
    """The worker Pods that are not on their way out."""
    pods = cluster.pods(NAMESPACE, WORKERS)
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def pod(cluster: Cluster, name: str) -> Obj:
    return cluster.get(NAMESPACE, "pod", name)


def holder(cluster: Cluster, model: str) -> Obj:
    """The worker Pod the model is resident on (the only one, here)."""
    [name] = ttsmodel(cluster, model)["status"]["residentOn"]
    return pod(cluster, name)


def model_set(cluster: Cluster, name: str) -> list[str]:
    return str(pod(cluster, name)["metadata"]["annotations"]["duplex.dev/model-set"]).split(",")


def test_install_runs_every_pod_in_a_restricted_namespace(cluster: Cluster, release: str) -> None:
    namespace = cluster.get("", "namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = cluster.pods(NAMESPACE, f"app.kubernetes.io/instance={release}")
    components = {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods}
    assert {"operator", "orchestrator", "redis", "livekit"} <= components
    assert all(pod_ready(p) for p in pods), [p["metadata"]["name"] for p in pods]
    # The pool's minPods: the operator's worker Pod, admitted by the same policy.
    [worker] = until(
        lambda: [p for p in workers(cluster) if pod_ready(p)], "a worker Pod to be Ready", 120
    )
    for each in [*pods, worker]:
        for main in each["spec"]["containers"]:
            assert main["securityContext"]["readOnlyRootFilesystem"] is True
            assert main["securityContext"]["allowPrivilegeEscalation"] is False


async def test_applied_ttsmodel_is_resident_in_status_redis_and_the_orchestrator(
    cluster: Cluster, release: str
) -> None:
    cluster.kubectl("-n", NAMESPACE, "apply", "-f", str(SAMPLE))
    cluster.kubectl(
        "-n", NAMESPACE, "wait", "--for=condition=Resident", "ttsmodel/piper-joe", "--timeout=3m"
    )
    [worker] = workers(cluster)
    name = worker["metadata"]["name"]
    assert ttsmodel(cluster, "piper-joe")["status"]["residentOn"] == [name]
    records = await worker_records(cluster)
    assert "piper-joe" in records[name].resident_models
    url = cluster.service_url(NAMESPACE, f"{RELEASE}-orchestrator")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/api/models") as response:
            assert response.status == 401  # secure by default: it asks for its key
        key = cluster.api_key(NAMESPACE, f"{RELEASE}-orchestrator-auth")
        headers = {"Authorization": f"Bearer {key}"}
        async with http.get(f"{url}/api/models", headers=headers) as response:
            models = {m["model_id"]: m for m in (await response.json())["models"]}
    assert models["piper-joe"]["resident"] is True


async def test_spoken_question_gets_a_spoken_reply(
    cluster: Cluster, release: str, tmp_path: Path, whisper: Listener
) -> None:
    pod_ip = holder(cluster, "piper-joe")["status"]["podIP"]
    question = tmp_path / "question.wav"
    # The question is spoken by the cluster's own worker, straight to its Pod address.
    say = ["say", "What is your name?", "--out", str(question), "--model", "piper-joe"]
    await asyncio.to_thread(
        run, sys.executable, "-m", "duplex.cli", *say, "--worker", f"{pod_ip}:50051"
    )
    url = cluster.service_url(NAMESPACE, f"{RELEASE}-orchestrator").replace("http", "ws")
    key = cluster.api_key(NAMESPACE, f"{RELEASE}-orchestrator-auth")
    result = await talk_file(f"{url}/ws", question, timeout=60, verbose=False, api_key=key)
    assert "name" in result.transcript().lower(), result.events
    assert result.frames, result.events
    pcm = np.concatenate([f.samples() for f in result.frames]).astype(np.float32) / 32768
    heard = await whisper.hear(pcm)
    reply = set(result.reply().lower().replace(".", " ").replace(",", " ").split())
    assert len(reply & set(heard.replace(".", " ").replace(",", " ").split())) >= 2, (
        result.reply(),
        heard,
    )


async def test_deleted_worker_pod_is_recreated_and_the_model_resident_again(
    cluster: Cluster, release: str
) -> None:
    old = holder(cluster, "piper-joe")["metadata"]
    deleted_at = time.time()
    cluster.kubectl("-n", NAMESPACE, "delete", "pod", old["name"], "--wait=false")

    def recreated() -> Obj | None:
        # While the old Pod terminates its name is taken: the new one may get the next.
        ready = [p for p in workers(cluster) if pod_ready(p)]
        return ready[0] if ready and ready[0]["metadata"]["uid"] != old["uid"] else None

    new = until(recreated, "the operator to recreate the worker Pod", 120)["metadata"]["name"]

    def resident_on_new() -> bool:
        model = ttsmodel(cluster, "piper-joe")
        return condition(model, "Resident") and model["status"]["residentOn"] == [new]

    until(resident_on_new, f"piper-joe Resident on {new}", 120)

    async def loaded_again() -> bool:
        record = (await worker_records(cluster)).get(new)
        return (
            record is not None
            and record.started_at > deleted_at
            and "piper-joe" in record.resident_models
        )

    await until_async(loaded_again, "the new worker to report piper-joe resident", 60)


async def test_voice_session_holds_its_model_and_ttl_evicts_it_after(
    cluster: Cluster, release: str
) -> None:
    ttl = 3
    model = {
        "apiVersion": "duplex.dev/v1alpha1",
        "kind": "TTSModel",
        "metadata": {"name": "pico-en"},
        "spec": {
            "modelId": "pico-en",
            "family": "pico",
            "source": "package",
            "languages": ["en"],
            "resources": {"memoryMiB": 10},
            "minResident": 0,
            "ttlSeconds": ttl,
            "minResidencySeconds": 0,
        },
    }
    session = {
        "apiVersion": "duplex.dev/v1alpha1",
        "kind": "VoiceSession",
        "metadata": {"name": "held"},
        "spec": {"modelId": "pico-en", "language": "en", "room": "held"},
    }
    cluster.kubectl("-n", NAMESPACE, "apply", "-f", "-", input=json.dumps(model))
    cluster.kubectl("-n", NAMESPACE, "apply", "-f", "-", input=json.dumps(session))

    def bound() -> Obj | None:
        status = cluster.get(NAMESPACE, "voicesession", "held").get("status") or {}
        return status if status.get("phase") == "Bound" else None

    status = until(bound, "the VoiceSession to be Bound", 120)
    worker = status["worker"]
    assert worker in [p["metadata"]["name"] for p in workers(cluster)]
    pod_ip = pod(cluster, worker)["status"]["podIP"]
    assert status["workerAddr"] == f"{pod_ip}:50051"

    async def resident_on_worker() -> bool:
        async with TtsClient(f"{pod_ip}:50051") as client:
            return any(m.model_id == "pico-en" and m.is_loaded for m in await client.list_models())

    await until_async(resident_on_worker, "pico-en to load on the bound worker", 60)
    # Idle for well past its TTL, but the session holds it.
    await asyncio.sleep(ttl * 3)
    assert "pico-en" in model_set(cluster, worker)
    assert await resident_on_worker()

    cluster.kubectl("-n", NAMESPACE, "delete", "voicesession", "held", "--wait")
    until(
        lambda: "pico-en" not in model_set(cluster, worker),
        "the operator to take pico-en out of the Pod's model set",
        60,
    )

    async def unloaded() -> bool:
        return not await resident_on_worker()

    await until_async(unloaded, "the worker to unload pico-en", 60)
    assert "pico-en" not in (await worker_records(cluster))[worker].resident_models
    assert not condition(ttsmodel(cluster, "pico-en"), "Resident")


def test_upgrade_rolls_the_operator_and_orchestrator(
    cluster: Cluster, release: str, images: Images
) -> None:
    def uids(component: str) -> set[str]:
        pods = cluster.pods(NAMESPACE, f"app.kubernetes.io/component={component}")
        return {p["metadata"]["uid"] for p in pods}

    before = {c: uids(c) for c in ("operator", "orchestrator", "worker")}
    cluster.helm(
        "upgrade",
        RELEASE,
        str(ROOT / "charts" / "duplex"),
        "--namespace",
        NAMESPACE,
        "--reuse-values",
        "--set",
        "operator.podAnnotations.rollout=2",
        "--set",
        "orchestrator.podAnnotations.rollout=2",
        "--wait",
        "--timeout",
        "5m",
    )

    def replaced(component: str) -> bool:
        now = uids(component)
        return bool(now) and not now & before[component]

    for component in ("operator", "orchestrator"):
        until(
            functools.partial(replaced, component),
            f"the old {component} Pod to go",
            120,
        )
        pods = cluster.pods(NAMESPACE, f"app.kubernetes.io/component={component}")
        assert all(pod_ready(p) for p in pods), component
    # The worker Pods are the operator's: an upgrade leaves them, and their models, alone.
    assert uids("worker") == before["worker"]
    assert condition(ttsmodel(cluster, "piper-joe"), "Resident")


def test_uninstall_leaves_no_worker_pods(cluster: Cluster, release: str) -> None:
    assert cluster.pods(NAMESPACE, WORKERS)
    cluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "5m")
    assert cluster.pods(NAMESPACE, WORKERS) == []
    # The models are the user's: they stay for the next install.
    assert ttsmodel(cluster, "piper-joe")["spec"]["modelId"] == "piper-joe"
