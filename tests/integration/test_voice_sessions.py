"""Conversations on Kubernetes: each one claims its model with a VoiceSession.

A conversation's TTS link (the orchestrator's side) against a real kube-apiserver, the real
operator and real worker processes: the VoiceSession is created at admission and owned by the
orchestrator's Pod, the conversation speaks with a resident model until the operator has bound
the session and loaded its model, then moves to the bound worker (which makes the session
Active), and the VoiceSession is deleted when the conversation ends or is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from duplex.discovery import voice_session_of
from duplex.errors import UnknownModel
from duplex.kube import KubeApiError, KubeClient
from duplex.orchestrator.router import ClientPool, RedisDirectory, Router
from duplex.orchestrator.tts_link import TtsLink
from duplex.orchestrator.voice_sessions import OWNER_LABEL, Claim, VoiceSessions
from duplex.tasks import TaskSet
from duplex.testing.apiserver import KubeApiServer
from tests.conftest import RedisServer
from tests.kube_cluster import Cluster, in_phase, model_spec, running_cluster, when_true

T = TypeVar("T")


@dataclass
class Orchestrator:
    """What an orchestrator process holds for its conversations, and its Pod."""

    router: Router
    pool: ClientPool
    voice_sessions: VoiceSessions
    pod: dict[str, object]

    def link(self, tasks: TaskSet, model: str) -> TtsLink:
        return TtsLink(
            self.router,
            self.pool,
            tasks,
            model=model,
            voice=None,
            language=None,
            voice_sessions=self.voice_sessions,
            room="room-1",
        )


async def owner_pod(client: KubeClient, namespace: str, name: str) -> dict[str, object]:
    """The orchestrator's Pod (an object only: nothing runs it here)."""
    body = {
        "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "orchestrator"}},
        "spec": {"containers": [{"name": "orchestrator", "image": "duplex:test"}]},
    }
    return await client.create(f"/api/v1/namespaces/{namespace}/pods", body)


@contextlib.asynccontextmanager
async def orchestrator(
    client: KubeClient, namespace: str, redis_url: str, pod_name: str = "orchestrator-0"
) -> AsyncIterator[Orchestrator]:
    pod = await owner_pod(client, namespace, pod_name)
    metadata = pod["metadata"]
    assert isinstance(metadata, dict)
    pool = ClientPool()
    router = Router(RedisDirectory(pool, redis_url))
    voice_sessions = VoiceSessions(
        KubeClient.load(client.source.kubeconfig), namespace, pod_name, str(metadata["uid"])
    )
    await router.directory.start()
    await voice_sessions.start()
    try:
        yield Orchestrator(router, pool, voice_sessions, pod)
    finally:
        await voice_sessions.aclose()
        await router.directory.aclose()
        await pool.aclose()


async def voice_session(cluster: Cluster, name: str) -> dict[str, object] | None:
    try:
        return await cluster.get("voicesessions", name)
    except KubeApiError as exc:
        if exc.status == 404:
            return None
        raise


async def gone(cluster: Cluster, name: str) -> bool:
    return await voice_session(cluster, name) is None


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


async def test_a_conversation_claims_its_model_and_moves_to_the_bound_worker(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    # pico-en is kept resident (the fallback); pico-de is loaded only for a conversation.
    await cluster.apply("TTSModel", "pico-en", model_spec("pico-en", minResident=1))
    await cluster.apply("TTSModel", "pico-de", model_spec("pico-de", minResident=0))
    await cluster.eventually(
        lambda: when_true(cluster.condition("ttsmodels", "pico-en", "Resident")), "pico-en"
    )
    async with (
        orchestrator(cluster.client, cluster.ns, redis_server.url) as orch,
        TaskSet("conversation") as tasks,
    ):
        link = orch.link(tasks, "pico-de")
        first = await link.admit()
        # Nothing has pico-de yet: a resident model speaks meanwhile.
        assert first.model == "pico-en"
        claim = link.claim
        assert claim is not None
        assert voice_session_of(first.session_id) == claim.name
        created = await voice_session(cluster, claim.name)
        assert created is not None
        meta, spec = created["metadata"], created["spec"]
        assert isinstance(meta, dict) and isinstance(spec, dict)
        [owner] = meta["ownerReferences"]
        assert (owner["kind"], owner["name"]) == ("Pod", "orchestrator-0")
        assert owner["uid"] == orch.pod["metadata"]["uid"]  # type: ignore[index]
        assert meta["labels"][OWNER_LABEL] == owner["uid"]
        assert (spec["modelId"], spec["room"]) == ("pico-de", "room-1")

        # The operator binds it and loads the model; the next reply moves to that worker.
        await cluster.eventually(lambda: ready(claim), "the claim Bound and Ready", timeout=60)
        moved = await link.for_reply()
        assert (moved.worker.name, moved.model) == (claim.worker, "pico-de")
        assert voice_session_of(moved.session_id) == claim.name
        # Its worker now serves it: the operator, not the client, makes it Active.
        active = await cluster.eventually(
            lambda: in_phase(cluster, claim.name, "Active"), "the session Active"
        )
        assert active["status"]["startedTime"]
        assert (await link.for_reply()) is moved  # settled: no further move

        await link.aclose()
        assert await gone(cluster, claim.name)


async def test_a_cancelled_conversation_leaves_no_voice_session(
    kube: KubeClient, kube_namespace: str, redis_server: RedisServer
) -> None:
    # No operator and no worker: admission claims the model, then waits for it to be loaded.
    async with orchestrator(kube, kube_namespace, redis_server.url) as orch:
        tasks = TaskSet("conversation")
        link = orch.link(tasks, "pico-en")
        admitting = asyncio.create_task(link.admit())
        path = f"/apis/duplex.dev/v1alpha1/namespaces/{kube_namespace}/voicesessions"

        async def claimed() -> list[str]:
            listing = await kube.list(path)
            return [o["metadata"]["name"] for o in listing["items"]]

        names = await until(claimed, "a VoiceSession")
        admitting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await admitting
        await tasks.aclose()

        async def none_left() -> bool:
            return not await claimed()

        await until(none_left, f"{names} deleted")


async def test_a_model_no_ttsmodel_names_fails_at_once(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    await cluster.apply("TTSModel", "pico-en", model_spec("pico-en", minResident=1))
    async with (
        orchestrator(cluster.client, cluster.ns, redis_server.url) as orch,
        TaskSet("conversation") as tasks,
    ):
        link = orch.link(tasks, "nope")
        with pytest.raises(UnknownModel, match="no TTSModel has modelId 'nope'"):
            async with asyncio.timeout(30):
                await link.admit()
        assert link.claim is None

        async def none_left() -> bool:
            listing = await cluster.client.list(cluster.path("voicesessions"))
            return not listing["items"]

        await until(none_left, "the claim deleted")


async def test_a_restarted_orchestrator_deletes_what_its_predecessor_left(
    kube: KubeClient, kube_namespace: str, redis_server: RedisServer
) -> None:
    async with orchestrator(kube, kube_namespace, redis_server.url) as orch:
        left = await orch.voice_sessions.claim("pico-en", "en", "room-1")  # never released
        other = await kube.create(
            f"/apis/duplex.dev/v1alpha1/namespaces/{kube_namespace}/voicesessions",
            {
                "apiVersion": "duplex.dev/v1alpha1",
                "kind": "VoiceSession",
                "metadata": {"name": "someone-elses"},
                "spec": {"modelId": "pico-en", "room": "r"},
            },
        )
        # A new process in the same Pod (a container restart): the same name and uid.
        uid = str(orch.pod["metadata"]["uid"])  # type: ignore[index]
        restarted = VoiceSessions(
            KubeClient.load(kube.source.kubeconfig), kube_namespace, "orchestrator-0", uid
        )
        await restarted.start()
        try:
            path = f"/apis/duplex.dev/v1alpha1/namespaces/{kube_namespace}/voicesessions"

            async def only_others() -> bool:
                listing = await kube.list(path)
                return [o["metadata"]["name"] for o in listing["items"]] == ["someone-elses"]

            await until(only_others, f"{left.name} deleted, {other['metadata']['name']} kept")
        finally:
            await restarted.aclose()


async def ready(claim: Claim) -> bool:
    return claim.ready


async def until(probe: Callable[[], Awaitable[T]], what: str, timeout: float = 20.0) -> T:
    try:
        async with asyncio.timeout(timeout):
            while not (value := await probe()):
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
    return value


async def test_the_orchestrator_server_claims_a_voice_session_per_conversation(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    """The orchestrator process in Kubernetes mode: a WebSocket conversation holds a
    VoiceSession owned by the orchestrator's Pod for as long as it lasts."""
    import json

    import aiohttp

    from duplex.orchestrator.config import KubeSettings, OrchestratorConfig
    from duplex.orchestrator.server import Orchestrator as Server

    await cluster.apply("TTSModel", "pico-en", model_spec("pico-en", minResident=1))
    await cluster.eventually(
        lambda: when_true(cluster.condition("ttsmodels", "pico-en", "Resident")), "pico-en"
    )
    pod = await owner_pod(cluster.client, cluster.ns, "orchestrator-ws")
    kube = KubeSettings(
        namespace=cluster.ns,
        pod_name="orchestrator-ws",
        pod_uid=str(pod["metadata"]["uid"]),  # type: ignore[index]
        kubeconfig=str(cluster.client.source.kubeconfig),
    )
    config = OrchestratorConfig(port=0, redis=redis_server.url, default_model="pico-en", kube=kube)

    async def sessions() -> list[dict[str, object]]:
        listing = await cluster.client.list(
            f"/apis/duplex.dev/v1alpha1/namespaces/{cluster.ns}/voicesessions"
        )
        return list(listing.get("items", []))

    async with (
        Server(config) as server,
        aiohttp.ClientSession() as http,
        http.ws_connect(f"ws://127.0.0.1:{server.port}/ws") as ws,
    ):
        await ws.send_str(json.dumps({"type": "session.start", "sample_rate": 16000}))
        async with asyncio.timeout(30):
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT and "session.started" in msg.data:
                    break
        [claim] = await sessions()
        owners = claim["metadata"]["ownerReferences"]  # type: ignore[index]
        assert [o["name"] for o in owners] == ["orchestrator-ws"]
        assert claim["spec"]["modelId"] == "pico-en"  # type: ignore[index]
        await ws.close()
        await cluster.eventually(lambda: _empty(sessions()), "the conversation's session gone")


async def _empty(listing: Awaitable[list[dict[str, object]]]) -> bool | None:
    return (not await listing) or None
