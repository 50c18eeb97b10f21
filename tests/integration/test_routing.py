"""Routing over real Redis discovery, and a worker dying mid-reply."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import aiohttp
import pytest
import redis.asyncio as aioredis

from duplex.discovery import EVENTS_CHANNEL, worker_key
from duplex.orchestrator.config import OrchestratorConfig
from duplex.orchestrator.router import ClientPool, RedisDirectory, Router
from duplex.orchestrator.server import Orchestrator
from duplex.worker.config import WorkerConfig
from duplex.worker.server import Worker
from tests.conftest import RedisServer


def worker_config(name: str, model: str, redis: str | None = None) -> WorkerConfig:
    return WorkerConfig(
        name=name,
        port=0,
        default_model=model,
        test_models=True,
        redis=redis,
        heartbeat_seconds=0.2,
        min_residency_seconds=0,
    )


async def test_redis_discovery_prefers_resident_and_falls_back_while_loading(
    redis_server: RedisServer,
) -> None:
    async with (
        Worker(worker_config("route-a", "tone", redis_server.url)),
        Worker(worker_config("route-b", "pico-en", redis_server.url)) as b,
    ):
        pool = ClientPool()
        directory = RedisDirectory(pool, redis_server.url)
        router = Router(directory)
        await directory.start()
        try:
            assert (await router.route("pico-en")).worker.name == "route-b"
            assert (await router.route("tone", "en")).worker.name == "route-a"
            # Resident nowhere: a resident model speaks now, and a worker is asked to load it.
            route = await router.route("pico-en-gb", "en")
            assert route.model != "pico-en-gb" and route.load_on is not None
            await pool.get(route.load_on.addr).load_model("pico-en-gb")
            async with asyncio.timeout(5):
                while (await router.route("pico-en-gb")).model != "pico-en-gb":
                    await asyncio.sleep(0.05)
            # A worker that goes away leaves the view.
            await b.aclose()
            async with asyncio.timeout(5):
                while any(w.name == "route-b" for w in directory.workers()):
                    await directory.refresh()
                    await asyncio.sleep(0.05)
            assert (await router.route("pico-en")).worker.name == "route-a"
        finally:
            await directory.aclose()
            await pool.aclose()


async def test_malformed_discovery_records_and_events_are_skipped_and_logged(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever else writes under our keys (a bad deploy, an older version, a typo) costs
    only that record: routing goes on with every well-formed worker."""
    async with Worker(worker_config("good", "tone", redis_server.url)):
        redis = aioredis.from_url(redis_server.url)
        pool = ClientPool()
        directory = RedisDirectory(pool, redis_server.url)
        router = Router(directory)
        try:
            await redis.set(worker_key("garbage"), b"{not json")
            await redis.set(worker_key("wrong-types"), json.dumps({"name": "wrong-types"}))
            await redis.set(
                worker_key("bad-load"),
                json.dumps(
                    {
                        "name": "bad-load",
                        "addr": "127.0.0.1:1",
                        "models": ["tone"],
                        "active_sessions": "many",
                    }
                ),
            )
            with caplog.at_level(logging.WARNING, "duplex.orchestrator.router"):
                await directory.start()
                assert [w.name for w in directory.workers()] == ["good"]
                assert (await router.route("tone")).worker.name == "good"
                # Malformed events on the channel: ignored, and the follower keeps following.
                async with asyncio.timeout(5):
                    while (await redis.pubsub_numsub(EVENTS_CHANNEL))[0][1] < 1:
                        await asyncio.sleep(0.05)
                await redis.publish(EVENTS_CHANNEL, b"\xff\xfe")
                await redis.publish(EVENTS_CHANNEL, json.dumps({"type": "worker.up"}))
                await redis.publish(
                    EVENTS_CHANNEL, json.dumps({"type": "worker.up", "name": "garbage"})
                )
                late = json.loads(await redis.get(worker_key("good")))
                late.update(name="late", models=["late-model"], resident_models=["late-model"])
                await redis.set(worker_key("late"), json.dumps(late))
                await redis.publish(
                    EVENTS_CHANNEL, json.dumps({"type": "worker.up", "name": "late"})
                )
                async with asyncio.timeout(5):
                    while "late" not in {w.name for w in directory.workers()}:
                        await asyncio.sleep(0.05)
                assert (await router.route("late-model")).worker.name == "late"
            skipped = caplog.text
            assert skipped.count("ignoring malformed discovery event") == 2, skipped
            for name in ("garbage", "wrong-types", "bad-load"):
                assert f"malformed discovery record of {name!r}" in skipped, skipped
        finally:
            await directory.aclose()
            await pool.aclose()
            await redis.aclose()


async def test_reply_continues_on_another_worker_when_its_worker_dies() -> None:
    a = Worker(worker_config("fail-a", "pico-en"))
    b = Worker(worker_config("fail-b", "pico-en"))
    await a.start()
    await b.start()
    try:
        config = OrchestratorConfig(port=0, workers=[a.address, b.address], default_model="pico-en")
        async with (
            Orchestrator(config) as orch,
            aiohttp.ClientSession() as http,
            http.ws_connect(f"ws://127.0.0.1:{orch.port}/ws") as ws,
        ):
            await ws.send_str(json.dumps({"type": "session.start", "sample_rate": 16000}))
            await ws.send_str(json.dumps({"type": "text", "text": "Please tell me a story."}))
            frames = 0
            killed: Worker | None = None
            events = []
            async with asyncio.timeout(90):
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        frames += 1
                        if frames == 50:
                            killed = a if a.servicer.sessions else b
                            await killed.aclose(grace=0)
                            frames_at_kill = frames
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        event = json.loads(msg.data)
                        events.append(event)
                        if event["type"] == "reply" and event.get("final"):
                            break
            assert killed is not None
            assert frames > frames_at_kill + 100, "the reply did not go on after the failure"
            survivor = b if killed is a else a
            assert survivor.metrics.frames.labels("pico-en")._value.get() > 100
            assert not [e for e in events if e["type"] == "error"]
    finally:
        for w in (a, b):
            await w.aclose()


async def test_a_cancelled_admission_leaves_no_session_behind() -> None:
    """A conversation that goes away while its session is starting (here: while the worker
    loads the model) leaves nothing on the worker."""
    from duplex.orchestrator.router import StaticDirectory
    from duplex.orchestrator.tts_link import TtsLink
    from duplex.tasks import TaskSet

    # Nothing resident speaks English, so admission waits for piper-joe to load.
    async with Worker(worker_config("cancel-a", "pico-de")) as w:
        pool = ClientPool()
        router = Router(StaticDirectory(pool, [w.address]))
        await router.directory.start()
        try:
            async with TaskSet("conversation") as tasks:
                link = TtsLink(router, pool, tasks, model="piper-joe", voice=None, language="en")
                admission = asyncio.create_task(link.admit())
                async with asyncio.timeout(10):
                    while not w.manager.loading_ids():
                        await asyncio.sleep(0.005)
                admission.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await admission
            async with asyncio.timeout(10):
                while w.manager.loading_ids():
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # the background EndSession
            assert not w.servicer.sessions
        finally:
            await pool.aclose()
