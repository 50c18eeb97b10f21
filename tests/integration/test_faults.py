"""Faults with real processes: a worker killed or frozen mid-reply, Redis restarted. The
conversation that lost its worker fails over or gets a clear error; every other keeps its audio."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from duplex.bench.livekit_client import room_token
from duplex.livekit_server import LiveKitServer
from duplex.rpc.client import TtsClient
from duplex.testing.redis_server import RedisServer
from tests.processes import ServiceProcess, address, orchestrator, worker

STORY = "Please tell me a story."


class Listener:
    """A WebSocket conversation that records when reply audio arrives, and its events."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[float] = []
        self.events: list[dict[str, Any]] = []

    async def run(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.frames.append(time.monotonic())
            elif msg.type == aiohttp.WSMsgType.TEXT:
                self.events.append(json.loads(msg.data))

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "error"]

    def done(self) -> bool:
        return any(e["type"] == "reply" and e.get("final") for e in self.events)

    async def until(self, check: Any, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.02)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _conversation(
    http: aiohttp.ClientSession, url: str, tg: asyncio.TaskGroup
) -> tuple[Listener, asyncio.Task[None]]:
    ws = await http.ws_connect(url)
    await ws.send_str(json.dumps({"type": "session.start", "sample_rate": 16000}))
    listener = Listener(ws)
    task = tg.create_task(listener.run())
    await listener.until(lambda: any(e["type"] == "session.started" for e in listener.events), 10)
    return listener, task


async def _holder(workers: list[ServiceProcess]) -> ServiceProcess:
    """The worker whose session is speaking now."""
    for w in workers:
        async with TtsClient(address(w)) as client:
            caps = await client.capabilities()
            if caps.metrics["active_sessions"]:
                return w
    raise AssertionError("no worker holds a session")


async def test_a_worker_killed_mid_reply_fails_only_its_own_conversation(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """One slot per worker: the victim has nowhere to fail over to and is told so; the other
    conversation, on the other worker, keeps its audio."""
    workers = [worker(f"kill-{i}", max_sessions=1) for i in range(2)]
    o = orchestrator(tmp_path, [address(w) for w in workers], default_model="pico-en")
    try:
        async with asyncio.TaskGroup() as tg:
            victim, v_task = await _conversation(http, f"ws://{address(o)}/ws", tg)
            await victim.ws.send_str(json.dumps({"type": "text", "text": STORY}))
            await victim.until(lambda: len(victim.frames) > 30, 20)
            doomed = await _holder(workers)
            other, o_task = await _conversation(http, f"ws://{address(o)}/ws", tg)
            await other.ws.send_str(json.dumps({"type": "text", "text": STORY}))
            await other.until(lambda: len(other.frames) > 30, 20)
            doomed.proc.send_signal(signal.SIGKILL)
            await victim.until(lambda: bool(victim.errors()), 10)
            assert victim.errors()[0]["code"] == "worker_unavailable", victim.errors()
            n = len(other.frames)
            await other.until(lambda: len(other.frames) > n + 100, 10)
            assert not other.errors(), other.errors()
            for listener, task in ((victim, v_task), (other, o_task)):
                await listener.ws.close()
                task.cancel()
    finally:
        o.stop()
        for w in workers:
            w.stop()


async def test_a_frozen_worker_is_left_within_two_seconds(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """SIGSTOP keeps the worker's connections open but silent: keepalive pings find it, and
    the reply goes on from another worker after a short gap. A conversation on the other
    worker does not notice."""
    workers = [worker(f"stop-{i}", max_sessions=4) for i in range(2)]
    o = orchestrator(tmp_path, [address(w) for w in workers], default_model="pico-en")
    frozen: ServiceProcess | None = None
    try:
        async with asyncio.TaskGroup() as tg:
            talk, task = await _conversation(http, f"ws://{address(o)}/ws", tg)
            await talk.ws.send_str(json.dumps({"type": "text", "text": STORY}))
            await talk.until(lambda: len(talk.frames) > 50, 20)
            frozen = await _holder(workers)
            (healthy,) = (w for w in workers if w is not frozen)
            other, o_task = await _conversation(http, f"ws://{address(o)}/ws", tg)
            await other.ws.send_str(json.dumps({"type": "text", "text": STORY}))
            await other.until(lambda: len(other.frames) > 30, 20)
            assert await _holder([healthy]) is healthy  # the least loaded took it
            stopped = time.monotonic()
            os.kill(frozen.proc.pid, signal.SIGSTOP)
            n = len([t for t in talk.frames if t <= stopped])
            await talk.until(lambda: len(talk.frames) > n + 50, 15)
            resumed = next(t for t in talk.frames if t > stopped + 0.15)
            # The reply went quiet when the worker froze and came back from the other one.
            assert resumed - stopped < 2.5, resumed - stopped
            assert not talk.errors(), talk.errors()
            # The other conversation's audio went on through it all, without a gap.
            after = [t for t in other.frames if t >= stopped - 0.1]
            assert after and after[-1] > resumed, (after[-1:], resumed)
            gaps = [b - a for a, b in itertools.pairwise(after)]
            assert max(gaps) < 0.5, max(gaps)
            assert not other.errors(), other.errors()
            for listener, t in ((talk, task), (other, o_task)):
                await listener.ws.close()
                t.cancel()
    finally:
        if frozen is not None:
            os.kill(frozen.proc.pid, signal.SIGCONT)
        o.stop()
        for w in workers:
            w.stop()


async def _health(http: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{base}/healthz") as resp:
        return resp.status, await resp.json()


async def test_a_redis_restart_mid_conversation_loses_nothing(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    redis = RedisServer()
    w = worker("redis-a", redis=redis.url, heartbeat_seconds=0.3)
    o = orchestrator(tmp_path, [], redis=redis.url, default_model="pico-en")
    late: ServiceProcess | None = None
    base = f"http://{address(o)}"
    try:
        async with asyncio.TaskGroup() as tg:
            talk, task = await _conversation(http, f"ws://{address(o)}/ws", tg)
            await talk.ws.send_str(json.dumps({"type": "text", "text": STORY}))
            await talk.until(lambda: len(talk.frames) > 50, 20)
            redis.stop()
            # Discovery is down: the orchestrator says so, stays ready, and keeps serving.
            async with asyncio.timeout(10):
                while "degraded" not in (await _health(http, base))[1]:
                    await asyncio.sleep(0.1)
            status, body = await _health(http, base)
            assert status == 200 and "Redis" in body["degraded"], body
            n = len(talk.frames)
            await talk.until(lambda: len(talk.frames) > n + 50, 10)
            second, s_task = await _conversation(http, f"ws://{address(o)}/ws", tg)
            # Redis comes back: the follower reconnects, and a worker that registers only now
            # (the only one with pico-de resident) is found.
            redis = RedisServer(port=redis.port)
            late = worker("redis-b", model="pico-de", redis=redis.url, heartbeat_seconds=0.3)
            async with asyncio.timeout(15):
                while "degraded" in (await _health(http, base))[1]:
                    await asyncio.sleep(0.1)
            third, t_task = await _conversation(http, f"ws://{address(o)}/ws", tg)
            await third.ws.send_str(
                json.dumps({"type": "session.start", "sample_rate": 16000, "model": "pico-de"})
            )
            await third.until(
                lambda: any(e.get("speaking_with") == "pico-de" for e in third.events), 10
            )
            n = len(talk.frames)
            await talk.until(lambda: len(talk.frames) > n + 50, 10)
            for listener in (talk, second, third):
                assert not listener.errors(), listener.errors()
                await listener.ws.close()
            for t in (task, s_task, t_task):
                t.cancel()
    finally:
        o.stop()
        w.stop()
        if late is not None:
            late.stop()
        redis.stop()


async def test_sigterm_ends_every_conversation_politely_and_quickly(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    w = worker("term", max_sessions=4)
    o = orchestrator(tmp_path, [address(w)], default_model="pico-en")
    try:
        async with asyncio.TaskGroup() as tg:
            talks = [await _conversation(http, f"ws://{address(o)}/ws", tg) for _ in range(2)]
            await talks[0][0].ws.send_str(json.dumps({"type": "text", "text": STORY}))
            await talks[0][0].until(lambda: len(talks[0][0].frames) > 20, 20)
            sent = time.monotonic()
            o.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(o.proc.wait, 10)
            took = time.monotonic() - sent
            assert code == 0 and took < 5, (code, took, o.log())
            for listener, task in talks:
                await task  # its socket closed
                assert listener.ws.close_code == 1001, listener.ws.close_code
                ended = [e for e in listener.events if e["type"] == "session.ended"]
                assert ended and "shutting down" in ended[0]["reason"]
        # Its sessions on the worker were ended, not left to the reaper.
        async with TtsClient(address(w)) as client:
            assert (await client.capabilities()).metrics["active_sessions"] == 0
    finally:
        o.stop()
        w.stop()


async def test_sigterm_says_goodbye_in_a_livekit_room_and_leaves_it(
    tmp_path: Path, livekit_server: LiveKitServer
) -> None:
    from livekit import rtc

    w = worker("term-lk", max_sessions=4)
    livekit = {
        "url": livekit_server.url,
        "api_key": livekit_server.api_key,
        "api_secret": livekit_server.api_secret,
    }
    o = orchestrator(tmp_path, [address(w)], default_model="pico-en", livekit=livekit)
    room = rtc.Room()
    try:
        deadline = time.monotonic() + 30
        while "registered with LiveKit" not in o.log():
            assert time.monotonic() < deadline, o.log()
            await asyncio.sleep(0.1)
        grant = await room_token(f"http://{address(o)}")
        got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        room.on("data_received", lambda p: got.put_nowait(json.loads(bytes(p.data))))
        left = asyncio.Event()
        room.on("participant_disconnected", lambda _: left.set())
        await room.connect(grant["url"], grant["token"])
        mic = rtc.AudioSource(16000, 1)
        await room.local_participant.publish_track(
            rtc.LocalAudioTrack.create_audio_track("microphone", mic),
            rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE),
        )

        async def next_event(kind: str) -> dict[str, Any]:
            async with asyncio.timeout(30):
                while (event := await got.get())["type"] != kind:
                    pass
            return event

        await next_event("session.started")
        publish = room.local_participant.publish_data
        await publish(json.dumps({"type": "text", "text": STORY}), topic="duplex")
        await next_event("reply")
        sent = time.monotonic()
        o.proc.send_signal(signal.SIGTERM)
        ended = await next_event("session.ended")
        assert "shutting down" in ended["reason"], ended
        code = await asyncio.to_thread(o.proc.wait, 10)
        took = time.monotonic() - sent
        assert code == 0 and took < 5, (code, took, o.log())
        async with asyncio.timeout(10):
            await left.wait()  # the agent left the room rather than timing out of it
    finally:
        await room.disconnect()
        o.stop()
        w.stop()


def test_a_killed_demo_leaves_no_livekit_server_or_folder_behind() -> None:
    from duplex.livekit_server import find_binary

    assert find_binary() is not None, "bash tools/build-test-binaries.sh livekit-server"
    demo = ServiceProcess(
        ["demo", "--port", "0", "--model", "pico-en", "--livekit"], r"open (http://\S+)/"
    )
    try:
        children = Path(f"/proc/{demo.proc.pid}/task/{demo.proc.pid}/children").read_text()
        servers = [
            int(pid)
            for pid in children.split()
            if "livekit" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        ]
        assert len(servers) == 1, children
        config = Path(f"/proc/{servers[0]}/cmdline").read_bytes().split(b"\0")[-2].decode()
        demo.proc.send_signal(signal.SIGKILL)
        demo.proc.wait(10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{servers[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{servers[0]}").exists(), "livekit-server outlived the demo"
        assert not Path(config).parent.exists(), config
    finally:
        demo.stop()
