"""The control plane on a real cluster: two operator replicas, and conversations' VoiceSessions.

One release with `operator.replicas=2` in a restricted namespace: the replicas elect one
leader on a Lease, and when its process is killed (a crash: SIGKILL through containerd, the
Lease not given up) the other takes over within 15 s. A conversation's TTS link, run here in
the cluster's network against the release's Redis and worker Pods, claims its model with a
VoiceSession owned by the orchestrator's Pod, moves to the worker the operator binds it to,
is made Active by the operator, and deletes it at its end; the VoiceSession of a conversation
whose orchestrator Pod is deleted is removed by the cluster's garbage collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from duplex.kube import KubeClient
from duplex.orchestrator.router import ClientPool, RedisDirectory, Router
from duplex.orchestrator.tts_link import TtsLink
from duplex.orchestrator.voice_sessions import VoiceSessions
from duplex.tasks import TaskSet
from tests.cluster.conftest import (
    Cluster,
    Images,
    Obj,
    condition,
    helm_release,
    orchestrator_tls,
    pod_ready,
    release_redis_url,
    run,
    until,
)

pytestmark = pytest.mark.cluster

NAMESPACE = "duplex-ha"
RELEASE = "duplex-ha"
LEASE = f"{RELEASE}-operator"
OPERATORS = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
ORCHESTRATORS = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=orchestrator"
# Two CPUs in the node: small requests, one worker Pod at most.
VALUES = [
    "operator.replicas=2",
    "workerPools.cpu.minPods=1",
    "workerPools.cpu.maxPods=1",
    "workerPools.cpu.resources.requests.cpu=300m",
    "orchestrator.resources.requests.cpu=200m",
]


@pytest.fixture(scope="module")
def release(cluster: Cluster, images: Images) -> Iterator[str]:
    with helm_release(cluster, images, NAMESPACE, RELEASE, [*VALUES]) as name:
        yield name


def apply_model(cluster: Cluster, model_id: str, min_resident: int) -> None:
    model = {
        "apiVersion": "duplex.dev/v1alpha1",
        "kind": "TTSModel",
        "metadata": {"name": model_id},
        "spec": {
            "modelId": model_id,
            "family": "pico",
            "minResident": min_resident,
            "resources": {"memoryMiB": 50},
        },
    }
    cluster.kubectl("-n", NAMESPACE, "apply", "-f", "-", input=json.dumps(model))


def resident(cluster: Cluster, model_id: str) -> bool:
    return condition(cluster.get(NAMESPACE, "ttsmodel", model_id), "Resident")


def holder(cluster: Cluster) -> str:
    lease = cluster.get(NAMESPACE, "lease", LEASE)
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def pod_of(identity: str, pods: list[Obj]) -> Obj | None:
    """The Pod a Lease holder identity (<Pod name>_<process>) belongs to."""
    return next((p for p in pods if identity.startswith(p["metadata"]["name"] + "_")), None)


def kill_container(cluster: Cluster, pod: Obj) -> None:
    """SIGKILL the Pod's process through containerd: a crash, the Lease not given up."""
    container = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    socket = cluster.kubeconfig.parent / "containerd.sock"
    run(
        "ctr",
        "--address",
        socket,
        "--namespace",
        "k8s.io",
        "tasks",
        "kill",
        "-s",
        "SIGKILL",
        container,
    )


def test_two_operator_replicas_elect_one_and_the_other_takes_over_a_crash(
    cluster: Cluster, release: str
) -> None:
    operators = cluster.pods(NAMESPACE, OPERATORS)
    assert len(operators) == 2 and all(pod_ready(p) for p in operators)
    leader = until(lambda: pod_of(holder(cluster), operators), "a leader", 60)

    apply_model(cluster, "pico-en", 1)
    until(lambda: resident(cluster, "pico-en"), "pico-en Resident", 300)

    killed_at = time.monotonic()
    kill_container(cluster, leader)

    def successor() -> Obj | None:
        now = pod_of(holder(cluster), operators)
        return (
            now
            if now is not None and now["metadata"]["name"] != leader["metadata"]["name"]
            else None
        )

    until(successor, "the other replica to take the Lease", 30, interval=0.2)
    takeover = time.monotonic() - killed_at
    print(f"takeover after a crash: {takeover:.1f} s")
    assert takeover < 15
    # The new leader acts; the crashed one comes back (same Pod) as a standby.
    apply_model(cluster, "pico-de", 1)
    until(lambda: resident(cluster, "pico-de"), "pico-de Resident", 300)
    until(
        lambda: all(pod_ready(p) for p in cluster.pods(NAMESPACE, OPERATORS)),
        "the crashed replica back",
        120,
    )


@contextlib.asynccontextmanager
async def conversation_side(
    cluster: Cluster, orchestrator: Obj
) -> AsyncIterator[tuple[Router, ClientPool, VoiceSessions]]:
    """What an orchestrator holds, owned by the release's orchestrator Pod: its Redis
    password, its certificate for the workers' mutual TLS and the workers' admin token."""
    redis = release_redis_url(cluster, NAMESPACE, RELEASE)
    with tempfile.TemporaryDirectory() as directory:
        tls = orchestrator_tls(cluster, NAMESPACE, RELEASE, Path(directory))
        token = cluster.secret(NAMESPACE, f"{RELEASE}-worker-admin")["token"].decode()
        pool = ClientPool(tls=tls, admin_token=token)
        async with _conversation_side(cluster, orchestrator, redis, pool) as side:
            yield side


@contextlib.asynccontextmanager
async def _conversation_side(
    cluster: Cluster, orchestrator: Obj, redis: str, pool: ClientPool
) -> AsyncIterator[tuple[Router, ClientPool, VoiceSessions]]:
    router = Router(RedisDirectory(pool, redis))
    meta = orchestrator["metadata"]
    sessions = VoiceSessions(
        KubeClient.load(cluster.kubeconfig), NAMESPACE, meta["name"], meta["uid"]
    )
    await router.directory.start()
    await sessions.start()
    try:
        yield router, pool, sessions
    finally:
        await sessions.aclose()
        await router.directory.aclose()
        await pool.aclose()


def voice_sessions(cluster: Cluster) -> list[Obj]:
    items: list[Obj] = cluster.get(NAMESPACE, "voicesessions")["items"]
    return items


async def test_a_conversation_claims_its_model_and_a_deleted_orchestrator_leaves_none(
    cluster: Cluster, release: str
) -> None:
    apply_model(cluster, "pico-fr", 0)  # loaded for conversations only
    [orchestrator] = cluster.pods(NAMESPACE, ORCHESTRATORS)
    async with conversation_side(cluster, orchestrator) as (router, pool, sessions):
        async with TaskSet("conversation") as tasks:
            link = TtsLink(
                router,
                pool,
                tasks,
                model="pico-fr",
                voice=None,
                language=None,
                voice_sessions=sessions,
                room="room-1",
            )
            first = await link.admit()
            claim = link.claim
            assert claim is not None and first.model != "pico-fr"  # resident ones speak first
            [created] = voice_sessions(cluster)
            [owner] = created["metadata"]["ownerReferences"]
            assert (owner["kind"], owner["uid"]) == ("Pod", orchestrator["metadata"]["uid"])

            async with asyncio.timeout(300):
                while not claim.ready:
                    await claim.changed.wait()
                    claim.changed.clear()
            moved = await link.for_reply()
            assert (moved.worker.name, moved.model) == (claim.worker, "pico-fr")
            until(
                lambda: (
                    cluster.get(NAMESPACE, "voicesession", claim.name)["status"]["phase"]
                    == "Active"
                ),
                "the operator to make it Active",
                60,
            )
            await link.aclose()
            assert voice_sessions(cluster) == []

            # A conversation whose orchestrator Pod goes away: the garbage collector.
            orphan = TtsLink(
                router,
                pool,
                tasks,
                model="pico-fr",
                voice=None,
                language=None,
                voice_sessions=sessions,
                room="room-2",
            )
            await orphan.admit()
            assert len(voice_sessions(cluster)) == 1
            cluster.kubectl("-n", NAMESPACE, "delete", "pod", orchestrator["metadata"]["name"])
            until(lambda: voice_sessions(cluster) == [], "the orphan garbage-collected", 120)
            await orphan.aclose()  # its VoiceSession is gone already: nothing to delete
