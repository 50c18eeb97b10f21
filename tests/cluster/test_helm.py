"""The Helm chart on a real cluster: one release, from `helm install` to `helm uninstall`.

The tests run in file order on the same release: install, what it protects by default (Redis's
password, mutual TLS and an admin token on the workers, the workers' RBAC, NetworkPolicies), a
model made resident, a spoken conversation through the orchestrator's Service (over TLS to the
worker), a worker Pod deleted and recreated, TTL eviction held off by a VoiceSession, an
upgrade that keeps every generated secret, and the uninstall.

The cluster enforces NetworkPolicies (kube-network-policies, as in kind): a Pod of no
component of the release reaches the orchestrator's page and nothing else of it, while every
flow the release needs goes on working in the other tests.
"""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.exceptions import AuthenticationError, ResponseError

from duplex.audio.wav import write_wav
from duplex.clients.talk import talk_file
from duplex.discovery import KEY_PREFIX, WorkerRecord
from duplex.rpc.client import TtsClient
from duplex.rpc.security import ClientTls
from tests.cluster.conftest import (
    ROOT,
    Cluster,
    Images,
    Obj,
    condition,
    helm_release,
    orchestrator_tls,
    pod_ready,
    release_redis_url,
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
    with helm_release(cluster, images, NAMESPACE, RELEASE, [*SMALL_NODE, *LIVEKIT]) as name:
        yield name


def ttsmodel(cluster: Cluster, name: str) -> Obj:
    return cluster.get(NAMESPACE, "ttsmodel", name)


def redis_url(cluster: Cluster, password: bool = True) -> str:
    """The release's Redis, with the password from its Secret (or none)."""
    if password:
        return release_redis_url(cluster, NAMESPACE, RELEASE)
    return cluster.service_url(NAMESPACE, f"{RELEASE}-redis", scheme="redis") + "/0"


async def worker_records(cluster: Cluster) -> dict[str, WorkerRecord]:
    redis = aioredis.from_url(redis_url(cluster))
    try:
        keys = [k async for k in redis.scan_iter(match=f"{KEY_PREFIX}*")]
        raws = await redis.mget(keys) if keys else []
        records = [WorkerRecord.from_json(raw) for raw in raws if raw is not None]
        return {record.name: record for record in records}
    finally:
        await redis.aclose()


@pytest.fixture(scope="module")
def tls(cluster: Cluster, release: str, tmp_path_factory: pytest.TempPathFactory) -> ClientTls:
    """What the orchestrator reaches workers with: its certificate, from its Secret."""
    found: ClientTls = orchestrator_tls(
        cluster, NAMESPACE, RELEASE, tmp_path_factory.mktemp("orchestrator-tls")
    )
    return found


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
    # `helm install --wait` waited for the chart's own workloads...
    chart_pods = [
        p
        for p in cluster.pods(NAMESPACE, f"app.kubernetes.io/instance={release}")
        if p["metadata"]["labels"]["app.kubernetes.io/component"] != "worker"
    ]
    components = {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in chart_pods}
    assert components == {"operator", "orchestrator", "redis", "livekit"}
    assert all(pod_ready(p) for p in chart_pods), [p["metadata"]["name"] for p in chart_pods]
    # ... but not for the worker Pod, which the operator creates afterwards (the pool's
    # minPods), admitted by the same policy.
    [worker] = until(
        lambda: [p for p in workers(cluster) if pod_ready(p)], "a worker Pod to be Ready", 180
    )
    for each in [*chart_pods, worker]:
        for main in each["spec"]["containers"]:
            assert main["securityContext"]["readOnlyRootFilesystem"] is True
            assert main["securityContext"]["allowPrivilegeEscalation"] is False
    # The certificates hook ran before them and was removed, with its account, once it succeeded.
    for kind in ("job", "serviceaccount", "role"):
        listing = cluster.get(NAMESPACE, kind, selector="app.kubernetes.io/component=certificates")
        assert listing["items"] == [], kind


def can(cluster: Cluster, account: str, verb: str, what: str, namespace: str = NAMESPACE) -> bool:
    """`kubectl auth can-i` as a ServiceAccount of the release."""
    who = f"--as=system:serviceaccount:{NAMESPACE}:{account}"
    kubectl = ["kubectl", "--kubeconfig", str(cluster.kubeconfig), "auth", "can-i"]
    result = subprocess.run(
        [*kubectl, verb, what, "-n", namespace, who],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout.strip() in {"yes", "no"}, result.stdout + result.stderr
    return result.stdout.strip() == "yes"


async def test_redis_asks_for_its_password_which_no_command_line_shows(
    cluster: Cluster, release: str
) -> None:
    async with aioredis.from_url(redis_url(cluster, password=False)) as stranger:
        with pytest.raises((AuthenticationError, ResponseError), match=r"NOAUTH|authenticated"):
            await stranger.ping()
    async with aioredis.from_url(redis_url(cluster)) as client:
        assert await client.ping()
    password = cluster.secret(NAMESPACE, f"{RELEASE}-redis")["password"].decode()
    [server] = cluster.pods(NAMESPACE, "app.kubernetes.io/component=redis")
    cmdline = cluster.kubectl(
        "-n", NAMESPACE, "exec", server["metadata"]["name"], "--", "cat", "/proc/1/cmdline"
    )
    assert cmdline.startswith("redis-server") and password not in cmdline
    # Neither does any object of the release but its Secret.
    for kind in ("configmaps", "deployments", "pods", "networkpolicies", "roles"):
        assert password not in cluster.kubectl("-n", NAMESPACE, "get", kind, "-o", "json"), kind


async def test_workers_serve_mutual_tls_and_admin_rpcs_to_the_token_holder(
    cluster: Cluster, release: str, tls: ClientTls
) -> None:
    [worker] = [p for p in workers(cluster) if pod_ready(p)]
    pod_ip = worker["status"]["podIP"]
    address = f"{pod_ip}:50051"
    async with TtsClient(address, tls=tls) as client:
        assert await client.list_models()
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await client.load_model("pico-en")
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    token = cluster.secret(NAMESPACE, f"{RELEASE}-worker-admin")["token"].decode()
    async with TtsClient(address, tls=tls, admin_token=token) as admin:
        # An admin is let in; a model outside the Pod's set is still the operator's to place.
        with pytest.raises(grpc.aio.AioRpcError) as outside:
            await admin.load_model("pico-en")
        assert outside.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    for stranger in (None, ClientTls(ca=tls.ca, server_name=tls.server_name)):
        async with TtsClient(address, tls=stranger) as client:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.list_models()
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # The kubelet's probes: gRPC health in plain text on a port of its own.
    [main] = worker["spec"]["containers"]
    health = main["readinessProbe"]["grpc"]["port"]
    assert health != 50051 and main["livenessProbe"]["grpc"]["port"] == health
    async with grpc.aio.insecure_channel(f"{pod_ip}:{health}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_each_worker_reads_its_own_pod_alone_and_policies_are_in_place(
    cluster: Cluster, release: str
) -> None:
    [worker] = [p["metadata"]["name"] for p in workers(cluster)]
    [orchestrator] = [
        p["metadata"]["name"]
        for p in cluster.pods(NAMESPACE, "app.kubernetes.io/component=orchestrator")
    ]
    # The worker runs as an account of its own, named after its Pod, which may read that Pod.
    account = worker
    assert pod(cluster, worker)["spec"]["serviceAccountName"] == account
    assert can(cluster, account, "get", f"pod/{worker}")
    assert can(cluster, account, "watch", f"pod/{worker}")
    sibling = worker.rsplit("-", 1)[0] + "-" + str(int(worker.rsplit("-", 1)[1]) + 1)
    assert not can(cluster, account, "get", f"pod/{sibling}")
    assert not can(cluster, account, "get", f"pod/{orchestrator}")
    assert not can(cluster, account, "list", "pods")
    assert not can(cluster, account, "get", "secrets")
    assert not can(cluster, account, "get", f"pod/{worker}", namespace="default")
    # What they let through, and what not: test_other_pods_reach_the_page_and_nothing_else.
    policies = cluster.get(NAMESPACE, "networkpolicies")["items"]
    assert sorted(p["metadata"]["name"] for p in policies) == [
        f"{RELEASE}-{name}" for name in ("operator", "orchestrator", "redis", "worker")
    ]


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
    cluster: Cluster, release: str, tls: ClientTls, tmp_path: Path, whisper: Listener
) -> None:
    pod_ip = holder(cluster, "piper-joe")["status"]["podIP"]
    question = tmp_path / "question.wav"
    # The question is spoken by the cluster's own worker, straight to its Pod address, over
    # mutual TLS with the orchestrator's certificate.
    async with TtsClient(f"{pod_ip}:50051", tls=tls) as client:
        await client.start_session("question", "piper-joe", {"pacing": "none"})
        spoken = [f.frame async for f in client.say("question", "What is your name?") if f.frame]
        await client.end_session("question")
    write_wav(question, spoken)
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


# Run in a Pod of no component of the release: which of its ports can a stranger connect to?
PROBE = """
import json, socket, sys
result = {}
for name, host, port in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), timeout=3).close()
        result[name] = "connected"
    except OSError as exc:
        result[name] = type(exc).__name__
print(json.dumps(result))
"""


def test_other_pods_reach_the_page_and_nothing_else(
    cluster: Cluster, release: str, images: Images
) -> None:
    [worker] = workers(cluster)
    targets = [
        ("orchestrator", f"{RELEASE}-orchestrator", 8080),
        ("redis", f"{RELEASE}-redis", 6379),
        ("worker", worker["status"]["podIP"], 50051),
    ]
    restricted = {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    stranger = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "stranger", "namespace": NAMESPACE, "labels": {"app": "stranger"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "probe",
                    "image": images.duplex,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", PROBE, json.dumps(targets)],
                    "securityContext": restricted,
                }
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(stranger))
    try:
        until(
            lambda: pod(cluster, "stranger")["status"].get("phase") in ("Succeeded", "Failed"),
            "the probe Pod to finish",
            120,
        )
        logs = cluster.kubectl("-n", NAMESPACE, "logs", "stranger")
    finally:
        cluster.kubectl("-n", NAMESPACE, "delete", "pod", "stranger", "--wait=false")
    result = json.loads(logs.strip().splitlines()[-1])
    # The page is open to anyone (it asks for a key itself); Redis and the workers' gRPC are
    # dropped for a Pod that is not the operator, an orchestrator or a worker of the release.
    assert result == {
        "orchestrator": "connected",
        "redis": "TimeoutError",
        "worker": "TimeoutError",
    }


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
    cluster: Cluster, release: str, tls: ClientTls
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
        async with TtsClient(f"{pod_ip}:50051", tls=tls) as client:
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
    generated = [
        f"{RELEASE}-{name}"
        for name in ("redis", "orchestrator-auth", "worker-admin", "tls-ca", "worker-tls")
    ] + [f"{RELEASE}-orchestrator-tls"]
    secrets_before = {name: cluster.secret(NAMESPACE, name) for name in generated}
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
    # Every generated secret is kept: the password the workers hold still opens Redis, and
    # the certificates hook ran again but found its certificates good.
    assert {name: cluster.secret(NAMESPACE, name) for name in generated} == secrets_before
    listing = cluster.get(NAMESPACE, "jobs", selector="app.kubernetes.io/component=certificates")
    assert listing["items"] == []


def test_uninstall_leaves_no_worker_pods(cluster: Cluster, release: str) -> None:
    assert cluster.pods(NAMESPACE, WORKERS)
    cluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "5m")
    assert cluster.pods(NAMESPACE, WORKERS) == []
    # The workers' own accounts went with their Pods (the garbage collector's work).
    until(
        lambda: (
            not cluster.get(NAMESPACE, "serviceaccounts,roles,rolebindings", selector=WORKERS)[
                "items"
            ]
        ),
        "the worker Pods' accounts to be collected",
        60,
    )
    # The models are the user's: they stay for the next install.
    assert ttsmodel(cluster, "piper-joe")["spec"]["modelId"] == "piper-joe"
