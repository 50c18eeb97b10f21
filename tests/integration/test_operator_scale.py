"""A reconcile pass over a large namespace writes only what changed (a real kube-apiserver).

The scale bench's synthetic world (duplex_operator.bench.scale) at a tenth of its size: every
session bound and served, then one change of each kind. Its timings are the bench's to report;
what is asserted here is how many writes each pass makes.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from duplex.kube import KubeClient
from duplex.testing.apiserver import KubeApiServer
from duplex.testing.redis_server import RedisServer
from duplex_operator.bench.scale import Scale, ScaleWorld

SCALE = Scale(models=20, pods=10, sessions=200)


@pytest.fixture
async def world(kube_apiserver: KubeApiServer) -> AsyncIterator[ScaleWorld]:
    # A Redis of its own: these records never expire, and name Pods other tests also make.
    redis = RedisServer()
    try:
        async with KubeClient.load(kube_apiserver.kubeconfig) as client:
            namespace = f"scale-{secrets.token_hex(3)}"
            world = ScaleWorld(client, redis.url, SCALE, namespace)
            try:
                yield world
            finally:
                await world.aclose()
                await client.delete(f"/api/v1/namespaces/{namespace}")
    finally:
        redis.stop()


async def test_a_pass_writes_only_what_changed(world: ScaleWorld) -> None:
    setup = await world.build(lambda message: None)
    # Binding every session and marking it Active takes a write (and an event) per object.
    assert setup[0].by_kind == {"model status": 20, "session status": 200, "events": 220}
    assert setup[1].by_kind == {"session status": 200, "events": 200}
    assert setup[-1].writes == 0

    for _ in range(3):
        assert (await world.timed_pass()).writes == 0

    await world.new_session()
    # Its status, and its Bound event; the full Pods it goes past scale out nowhere (the pool
    # is at its maximum), which changes nothing else.
    assert (await world.timed_pass()).by_kind == {"session status": 1, "events": 1}
    await world.settle()

    await world.edit_model()
    # The catalog entry in its Pod's annotations, and its observed generation.
    assert (await world.timed_pass()).by_kind == {"pods": 1, "model status": 1}
    await world.settle()

    await world.worker_loses_a_model()
    # The model is Loading again there, and so are its sessions' Ready conditions.
    per_model = SCALE.sessions // SCALE.models
    assert (await world.timed_pass()).by_kind == {
        "model status": 1,
        "session status": per_model,
    }
    await world.settle()
    assert (await world.timed_pass()).writes == 0
