"""Many conversations at once, with real `duplex worker` and `duplex orchestrator` processes:
admission decides capacity, an admitted conversation keeps every reply, a refused one is told
at once, and nothing a conversation allocates outlives it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from duplex.rpc.client import Command, TtsClient
from tests.processes import ServiceProcess, address, orchestrator, worker

QUESTION = "What is your name?"


@pytest.fixture(scope="module")
def two_slots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A worker with two session slots behind an orchestrator; yields the orchestrator's URL."""
    w = worker("two-slots", max_sessions=2)
    try:
        o = orchestrator(tmp_path_factory.mktemp("orch"), [address(w)], default_model="pico-en")
        try:
            yield f"ws://{address(o)}/ws"
        finally:
            o.stop()
    finally:
        w.stop()


class Client:
    """A WebSocket conversation that asks typed questions and collects what comes back."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.frames = 0

    async def next(self, *kinds: str, timeout: float = 30) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self.frames += 1
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    event: dict[str, Any] = json.loads(msg.data)
                    self.events.append(event)
                    if event["type"] in kinds:
                        return event
        return {"type": "closed", "code": self.ws.close_code}

    async def ask(self, text: str) -> dict[str, Any]:
        """One question; the final reply event, or the error that ended it."""
        before = self.frames
        await self.ws.send_str(json.dumps({"type": "text", "text": text}))
        while True:
            event = await self.next("reply", "error", "closed")
            if event["type"] != "reply" or event.get("final"):
                assert event["type"] != "reply" or self.frames > before, "a reply without audio"
                return event


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def start(http: aiohttp.ClientSession, url: str) -> Client:
    ws = await http.ws_connect(url)
    client = Client(ws)
    await ws.send_str(json.dumps({"type": "session.start", "sample_rate": 16000}))
    return client


async def test_admitted_conversations_keep_every_reply_and_the_rest_are_told_at_once(
    two_slots: str, http: aiohttp.ClientSession
) -> None:
    clients = await asyncio.gather(*(start(http, two_slots) for _ in range(4)))
    answers = await asyncio.gather(*(c.next("session.started", "error", "closed") for c in clients))
    admitted = [c for c, a in zip(clients, answers, strict=True) if a["type"] == "session.started"]
    refused = [c for c, a in zip(clients, answers, strict=True) if a["type"] == "error"]
    assert len(admitted) == 2 and len(refused) == 2, answers
    for client in refused:
        error = next(e for e in client.events if e["type"] == "error")
        assert error["code"] == "busy" and "try again" in error["message"]
        await client.next("closed", timeout=5)
        assert client.ws.close_code == 1013

    async def three_questions(client: Client) -> list[dict[str, Any]]:
        return [await client.ask(QUESTION) for _ in range(3)]

    replies = await asyncio.gather(*(three_questions(c) for c in admitted))
    for conversation in replies:
        assert [r["type"] for r in conversation] == ["reply"] * 3, conversation
        assert all("duplex" in r["text"].lower() for r in conversation)
    # A conversation that ends gives its slot back: the next one is admitted.
    await admitted[0].ws.close()
    late = await start(http, two_slots)
    async with asyncio.timeout(10):
        while (await late.next("session.started", "error", "closed"))["type"] != "session.started":
            await late.ws.close()  # the slot was not free yet: try again
            late = await start(http, two_slots)
    assert (await late.ask(QUESTION))["type"] == "reply"
    for client in [*admitted, late]:
        await client.ws.close()


async def test_one_slot_serves_every_question_of_its_conversation(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    w = worker("one-slot", max_sessions=1)
    o: ServiceProcess | None = None
    try:
        o = orchestrator(tmp_path, [address(w)], default_model="pico-en")
        client = await start(http, f"ws://{address(o)}/ws")
        assert (await client.next("session.started", "error"))["type"] == "session.started"
        for _ in range(4):
            reply = await client.ask(QUESTION)
            assert reply["type"] == "reply" and "duplex" in reply["text"].lower(), client.events
        assert not [e for e in client.events if e["type"] == "error"]
        await client.ws.close()
    finally:
        if o is not None:
            o.stop()
        w.stop()


async def test_a_conversation_sees_the_real_error_with_its_code(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A failing responder reaches the client as `responder_failed` with a person's message,
    not as a task group's exception group."""
    w = worker("err", max_sessions=2)
    o: ServiceProcess | None = None
    try:
        dead = "http://127.0.0.1:9/v1"  # the discard port: nothing answers there
        o = orchestrator(
            tmp_path,
            [address(w)],
            default_model="pico-en",
            responder={"kind": "openai", "url": dead, "model": "m"},
        )
        client = await start(http, f"ws://{address(o)}/ws")
        await client.next("session.started")
        error = await client.ask(QUESTION)
        assert error["type"] == "error" and error["code"] == "responder_failed", error
        assert "127.0.0.1:9" in error["message"] and "TaskGroup" not in error["message"]
        # An unknown model is refused at the start, with the models there are.
        await client.ws.send_str(
            json.dumps({"type": "session.start", "sample_rate": 16000, "model": "nope"})
        )
        error = await client.next("error")
        assert error["code"] == "unknown_model" and "pico-en" in error["message"], error
        await client.ws.close()
    finally:
        if o is not None:
            o.stop()
        w.stop()


async def test_one_client_cannot_take_every_slot_and_abandoned_sessions_go_in_seconds() -> None:
    w = worker("flood", max_sessions=8, session_idle_seconds=2)
    try:
        flood = TtsClient(address(w), client_id="flood")
        other = TtsClient(address(w), client_id="other")
        results = await asyncio.gather(
            *(flood.start_session(f"f{i}", "pico-en") for i in range(200)),
            return_exceptions=True,
        )
        ok = [r for r in results if isinstance(r, str)]
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(ok) == 6 and len(refused) == 194  # three quarters of 8
        assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "this client already holds 6 sessions" in refused[0].details()
        # Another client still gets the rest.
        await other.start_session("o1", "pico-en")
        await other.start_session("o2", "pico-en")
        # Sessions belong to who started them: the other client cannot use or end them.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await other.end_session("f0")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND

        # The flooding client goes away without ending anything: its sessions are reaped in
        # seconds, while the other client, which keeps its own alive, keeps them.
        held = ["o1", "o2"]

        async def keep_alive() -> None:
            while True:
                await asyncio.sleep(0.5)
                for sid in held:
                    await other.control(sid, Command.KEEPALIVE)

        async with asyncio.TaskGroup() as tg:
            keeper = tg.create_task(keep_alive())
            await flood.aclose()
            async with asyncio.timeout(15):
                while True:
                    try:
                        await other.start_session("o3", "pico-en")
                        held.append("o3")
                        break
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                        await asyncio.sleep(0.2)
            await asyncio.sleep(3)  # past the idle limit: kept alive, they are all still there
            keeper.cancel()
        for sid in ("o1", "o2", "o3"):
            await other.end_session(sid)
        await other.aclose()
    finally:
        w.stop()


async def test_oversized_fields_and_unknown_voices_are_refused_at_start() -> None:
    w = worker("limits", max_sessions=2)
    try:
        async with TtsClient(address(w)) as client:
            cases = [
                ("x" * (1 << 20), "pico-en", {}),
                ("ok-1", "pico-en", {"voice": "v" * (1 << 20)}),
                ("ok-2", "pico-en", {"voice": "xx-YY"}),
                ("ok-3", "piper-joe", {"voice": "alba"}),
            ]
            for sid, model, options in cases:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await client.start_session(sid, model, options)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
                assert len(info.value.details()) < 500
            # None of them holds a slot: both are free.
            await client.start_session("a", "pico-en")
            await client.start_session("b", "pico-en")
    finally:
        w.stop()


async def test_a_thousand_conversations_leave_nothing_behind(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    w = worker("rss", max_sessions=16)
    o: ServiceProcess | None = None
    try:
        o = orchestrator(tmp_path, [address(w)], default_model="pico-en")
        url = f"ws://{address(o)}/ws"
        silence = bytes(640)

        async def one() -> None:
            client = await start(http, url)
            event = await client.next("session.started", "error", "closed")
            assert event["type"] == "session.started", event
            for _ in range(5):
                await client.ws.send_bytes(silence)
            await client.ws.close()

        async def batch(n: int) -> None:
            for _ in range(n // 4):
                await asyncio.gather(*(one() for _ in range(4)))

        await batch(20)
        await asyncio.sleep(1)
        base = o.rss_mib()
        await batch(1000)
        await asyncio.sleep(2)
        grown = o.rss_mib() - base
        assert grown < 50, f"RSS grew by {grown:.0f} MiB over 1000 conversations"
        async with asyncio.timeout(10), TtsClient(address(w)) as probe:
            while (await probe.capabilities()).metrics["active_sessions"]:
                await asyncio.sleep(0.1)
    finally:
        if o is not None:
            o.stop()
        w.stop()
