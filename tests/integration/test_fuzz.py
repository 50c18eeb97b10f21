"""Generated bad input (bounded property-based fuzzing) against real processes: whatever a
client sends over the WebSocket or gRPC, it gets a clear error, and the service goes on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duplex.rpc._proto import tts_pb2 as pb
from duplex.rpc._proto import tts_pb2_grpc as pb_grpc
from duplex.rpc.client import TtsClient, frames_of
from tests.processes import ServiceProcess, address, orchestrator, worker

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
known_fields = {
    field: json_values | st.text(max_size=300)
    for field in ("sample_rate", "text", "command", "model", "voice", "language")
}
ws_messages = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["session.start", "text", "control", "warp", "", 7])},
            optional=known_fields,
        ).map(json.dumps),
        json_values.map(json.dumps),
        st.text(max_size=120),  # not JSON at all
        st.binary(max_size=1500),  # audio of any length
    ),
    max_size=8,
)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    w = worker("fuzz", max_sessions=8, session_idle_seconds=2)
    o: ServiceProcess | None = None
    try:
        o = orchestrator(tmp_path_factory.mktemp("orch"), [address(w)], default_model="pico-en")
        yield address(w), f"ws://{address(o)}/ws"
    finally:
        if o is not None:
            o.stop()
        w.stop()


async def _converse(url: str, messages: list[str | bytes]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        for message in messages:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(message)
        # Whatever came before, a well-formed conversation still works on the same socket.
        await ws.send_str(json.dumps({"type": "session.start", "sample_rate": 16000}))
        await ws.send_str(json.dumps({"type": "text", "text": "What is your name?"}))
        async with asyncio.timeout(20):
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(msg.data)
                events.append(event)
                if event["type"] == "reply" and "duplex" in event["text"]:
                    return events
    raise AssertionError(f"the socket closed: {events}")


@FUZZ
@given(messages=ws_messages)
def test_websocket_messages(services: tuple[str, str], messages: list[str | bytes]) -> None:
    events = asyncio.run(_converse(services[1], messages))
    for event in events:
        if event["type"] == "error":
            assert event["code"] in {"invalid_argument", "unknown_model", "busy"}, event
            assert isinstance(event["message"], str) and len(event["message"]) < 2000, event


strings = st.text(max_size=40) | st.text(min_size=100, max_size=600)
start_requests = st.builds(
    pb.StartSessionRequest,
    session_id=strings,
    model_id=st.sampled_from(["", "pico-en", "tone", "nope"]) | strings,
    options=st.dictionaries(
        st.sampled_from(["voice", "speed", "pacing", "lead_ms", "language"]) | strings,
        st.sampled_from(["en-US", "2", "0.1", "none", "realtime", "-5"]) | strings,
        max_size=5,
    ),
)
chunks = st.lists(
    st.builds(pb.TextChunk, session_id=strings, text=strings, is_final=st.booleans()), max_size=6
)
# What a worker may answer bad input with; INTERNAL or UNKNOWN would be a bug of ours.
CLEAR = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}


async def _grpc(
    addr: str, start: pb.StartSessionRequest, stream: list[pb.TextChunk], cmd: int
) -> None:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = pb_grpc.TTSServiceStub(channel)  # type: ignore[no-untyped-call]
        calls = [
            lambda: stub.StartSession(start, timeout=30),
            lambda: stub.Control(pb.ControlRequest(session_id=start.session_id, command=cmd)),
            lambda: _drain(frames_of(stub.Synthesize(iter(stream), timeout=30))),
            lambda: stub.EndSession(pb.EndSessionRequest(session_id=start.session_id)),
        ]
        for call in calls:
            try:
                await call()
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in CLEAR, (exc.code(), exc.details())
                assert len(exc.details() or "") < 2000
    # The worker still serves a well-formed session.
    async with TtsClient(addr) as client:
        await client.start_session("fuzz-ok", "pico-en", {"pacing": "none"})
        frames = [f async for f in client.say("fuzz-ok", "still here")]
        assert frames[-1].is_final and len(frames) > 5
        await client.end_session("fuzz-ok")


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


@FUZZ
@given(start=start_requests, stream=chunks, cmd=st.integers(min_value=-3, max_value=9))
def test_grpc_requests(
    services: tuple[str, str], start: pb.StartSessionRequest, stream: list[pb.TextChunk], cmd: int
) -> None:
    asyncio.run(_grpc(services[0], start, stream, cmd))


def test_the_fuzzed_services_are_still_up(services: tuple[str, str], tmp_path: Path) -> None:
    async def check() -> None:
        async with TtsClient(services[0]) as client:
            caps = await client.capabilities()
            assert caps.capabilities.max_concurrent_sessions == 8

    asyncio.run(check())
