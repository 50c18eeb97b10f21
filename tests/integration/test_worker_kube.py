"""A worker in Kubernetes mode follows its own Pod's model set, on a real kube-apiserver."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from duplex.discovery import session_id_for, voice_session_of
from duplex.kube import KubeApiError, KubeClient
from duplex.modelset import MODEL_SET, MODEL_SPECS
from duplex.rpc.client import TtsClient
from duplex.testing.apiserver import KubeApiServer
from duplex.worker.config import WorkerConfig
from duplex.worker.server import Worker


@pytest.fixture
async def kube(kube_apiserver: KubeApiServer) -> AsyncIterator[KubeClient]:
    client = KubeClient.load(kube_apiserver.kubeconfig)
    yield client
    await client.aclose()


async def make_pod(kube: KubeClient, namespace: str, name: str, model_set: str) -> None:
    await kube.create(
        f"/api/v1/namespaces/{namespace}/pods",
        {
            "metadata": {"name": name, "annotations": {MODEL_SET: model_set}},
            "spec": {"containers": [{"name": "worker", "image": "duplex:test"}]},
        },
    )


async def annotate(kube: KubeClient, namespace: str, name: str, **values: str) -> None:
    await kube.patch(
        f"/api/v1/namespaces/{namespace}/pods/{name}", {"metadata": {"annotations": values}}
    )


def config(kube_apiserver: KubeApiServer, namespace: str, pod: str) -> WorkerConfig:
    return WorkerConfig(
        name=pod,
        port=0,
        kube=True,
        pod_name=pod,
        pod_namespace=namespace,
        kubeconfig=str(kube_apiserver.kubeconfig),
        test_models=True,
        ttl_seconds=0,
    )


async def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_worker_loads_and_unloads_what_its_pod_names(
    kube: KubeClient, kube_apiserver: KubeApiServer, kube_namespace: str
) -> None:
    await make_pod(kube, kube_namespace, "w-0", "tone")
    async with Worker(config(kube_apiserver, kube_namespace, "w-0")) as worker:
        # Nothing but the set: not even the default model.
        await until(lambda: worker.manager.resident_ids() == ["tone"], "tone resident")
        assert worker.record().model_set == ["tone"]

        # A model the worker was not built with arrives with its catalog entry.
        custom = {"id": "pico-custom", "family": "pico", "default_voice": "en-GB"}
        await annotate(
            kube,
            kube_namespace,
            "w-0",
            **{MODEL_SET: "pico-custom", MODEL_SPECS: json.dumps([custom])},
        )
        await until(lambda: worker.manager.resident_ids() == ["pico-custom"], "swap")
        assert worker.manager.catalog.get("pico-custom").default_voice == "en-GB"

        # An id it cannot load is reported, and does not block the rest of the set.
        await annotate(kube, kube_namespace, "w-0", **{MODEL_SET: "pico-custom,nope,tone"})
        await until(lambda: worker.manager.resident_ids() == ["pico-custom", "tone"], "both")
        record = worker.record()
        assert "unknown model id 'nope'" in record.model_errors["nope"]
        assert record.model_set == ["pico-custom", "nope", "tone"]

        # A malformed specs annotation is logged; the set itself is still applied.
        await annotate(
            kube,
            kube_namespace,
            "w-0",
            **{MODEL_SET: "tone", MODEL_SPECS: "{not json"},
        )
        await until(lambda: worker.manager.resident_ids() == ["tone"], "tone only")


async def test_worker_for_a_pod_that_does_not_exist_fails_to_start(
    kube_apiserver: KubeApiServer, kube_namespace: str
) -> None:
    worker = Worker(config(kube_apiserver, kube_namespace, "missing"))
    with pytest.raises(KubeApiError) as caught:
        await worker.start()
    await worker.aclose()
    assert caught.value.status == 404


async def test_the_operator_places_models_not_the_workers_clients(
    kube: KubeClient, kube_apiserver: KubeApiServer, kube_namespace: str
) -> None:
    await make_pod(kube, kube_namespace, "w-1", "tone")
    async with Worker(config(kube_apiserver, kube_namespace, "w-1")) as worker:
        await until(lambda: worker.manager.resident_ids() == ["tone"], "tone resident")
        client = TtsClient(f"127.0.0.1:{worker.port}", "test-client")
        try:
            # A catalog model outside the Pod's set: neither loaded nor started a session on.
            for call in (
                client.load_model("pico-en"),
                client.load_model("pico-en", preload_only=True),
                client.start_session("s-1", "pico-en"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "not in this worker's model set (it holds: tone)" in (
                    refused.value.details() or ""
                )
            assert worker.manager.resident_ids() == ["tone"]
            assert await client.load_model("tone") == 0  # in the set: "already loaded"

            # Unloaded by a client while the set still names it: loaded again.
            await client.unload_model("tone")
            await until(lambda: worker.manager.resident_ids() == ["tone"], "tone back")
            # Out of the set, then it goes for good.
            await annotate(kube, kube_namespace, "w-1", **{MODEL_SET: ""})
            await until(lambda: worker.manager.resident_ids() == [], "the set emptied")
            await asyncio.sleep(0.3)
            assert worker.manager.resident_ids() == []
        finally:
            await client.aclose()


async def test_a_kube_worker_lists_its_sessions_for_the_operator(
    kube: KubeClient, kube_apiserver: KubeApiServer, kube_namespace: str
) -> None:
    await make_pod(kube, kube_namespace, "w-2", "tone")
    async with Worker(config(kube_apiserver, kube_namespace, "w-2")) as worker:
        await until(lambda: worker.manager.resident_ids() == ["tone"], "tone resident")
        client = TtsClient(f"127.0.0.1:{worker.port}", "test-client")
        try:
            session_id = session_id_for("call-1", "a1b2")
            await client.start_session(session_id, "tone")
            assert worker.record().session_ids == [session_id]
            assert voice_session_of(worker.record().session_ids[0]) == "call-1"
            await client.end_session(session_id)
            assert worker.record().session_ids == []
        finally:
            await client.aclose()


async def test_a_worker_waits_for_its_pods_account_to_be_granted(
    kube: KubeClient,
    kube_apiserver: KubeApiServer,
    kube_namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The operator makes a worker Pod's own account before the Pod and grants it its Pod just
    # after; a worker that asks in between is refused, and asks again.
    from duplex.worker import podwatch
    from duplex_operator.pods import worker_account
    from tests.integration.test_chart import service_account_token, token_kubeconfig

    ns, name = kube_namespace, "w-granted-late"
    await make_pod(kube, ns, name, "tone")
    pod = {"metadata": {"name": name, "namespace": ns, "labels": {}}, "spec": {}}
    account, role, binding = worker_account(pod)
    for obj in (account, role):
        await kube.create_object(obj, namespace=ns)
    token = await service_account_token(kube, ns, name)
    settings = config(kube_apiserver, ns, name).model_copy(
        update={"kubeconfig": str(token_kubeconfig(kube_apiserver, token, tmp_path / "kc"))}
    )

    async def grant_later() -> None:
        await asyncio.sleep(1.5)
        await kube.create_object(binding, namespace=ns)

    granting = asyncio.create_task(grant_later())
    try:
        async with Worker(settings) as worker:
            assert granting.done()  # it started only once its account could read the Pod
            await until(lambda: worker.manager.resident_ids() == ["tone"], "tone resident")
    finally:
        granting.cancel()
    # An account that is never granted fails the start, with the API server's refusal.
    monkeypatch.setattr(podwatch, "_FORBIDDEN_GRACE_SECONDS", 0.5)
    other = "w-never-granted"
    await make_pod(kube, ns, other, "tone")
    pod = {"metadata": {"name": other, "namespace": ns, "labels": {}}, "spec": {}}
    await kube.create_object(worker_account(pod)[0], namespace=ns)
    token = await service_account_token(kube, ns, other)
    settings = config(kube_apiserver, ns, other).model_copy(
        update={"kubeconfig": str(token_kubeconfig(kube_apiserver, token, tmp_path / "kc2"))}
    )
    with pytest.raises(KubeApiError) as refused:
        async with Worker(settings):
            pass
    assert refused.value.status == 403
