"""Routing over real Redis discovery, and a worker dying mid-reply."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp

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
