"""Bad input and faults: each gets a clear status code and leaves the worker serving."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from duplex.rpc._proto import tts_pb2 as pb
from duplex.rpc.client import Command, TtsClient


@pytest.fixture
async def client(worker: object) -> AsyncIterator[TtsClient]:
    async with TtsClient(f"127.0.0.1:{worker.port}") as c:  # type: ignore[attr-defined]
        yield c


def code_of(err: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> grpc.StatusCode:
    return err.value.code()


async def still_serving(client: TtsClient) -> None:
    sid = f"ok-{uuid.uuid4().hex[:6]}"
    await client.start_session(sid, "tone", {"pacing": "none"})
    frames = [f async for f in client.say(sid, "still serving")]
    assert frames[-1].is_final and len(frames) > 5
    await client.end_session(sid)


async def test_health_service_reports_serving(worker: object) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:  # type: ignore[attr-defined]
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tts.TTSService"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_unknown_model_is_not_found_and_lists_valid_ids(client: TtsClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.start_session("s-unknown", "no-such-model")
    assert code_of(err) == grpc.StatusCode.NOT_FOUND
    assert "piper-joe" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.load_model("no-such-model")
    assert code_of(err) == grpc.StatusCode.NOT_FOUND
    await still_serving(client)


async def test_model_that_fails_to_load(client: TtsClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.load_model("tone-broken")
    assert code_of(err) == grpc.StatusCode.FAILED_PRECONDITION
    assert "configured to fail" in (err.value.details() or "")
    models = {m.model_id: m for m in await client.list_models()}
    assert not models["tone-broken"].is_loaded
    assert "configured to fail" in models["tone-broken"].metadata["last_error"]
    await still_serving(client)


async def test_one_megabyte_of_text_is_invalid_argument(client: TtsClient) -> None:
    sid = "s-huge"
    await client.start_session(sid, "tone", {"pacing": "none"})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [f async for f in client.say(sid, "word " * 200_000)]
    assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceeds the limit" in (err.value.details() or "")
    frames = [f async for f in client.say(sid, "the session survives")]
    assert frames[-1].is_final
    await client.end_session(sid)


async def test_invalid_utf8_is_invalid_argument(worker: object, client: TtsClient) -> None:
    sid = "s-utf8"
    await client.start_session(sid, "tone", {"pacing": "none"})
    valid = pb.TextChunk(session_id=sid, text="AB", is_final=True).SerializeToString()
    # Replace "AB" with a lone UTF-16 surrogate encoded as (invalid) UTF-8.
    bad = valid.replace(b"AB", b"\xed\xa0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:  # type: ignore[attr-defined]
        call = channel.stream_stream(
            "/tts.TTSService/Synthesize",
            request_serializer=lambda b: b,
            response_deserializer=pb.AudioFrame.FromString,
        )

        async def requests() -> AsyncIterator[bytes]:
            yield bad

        with pytest.raises(grpc.aio.AioRpcError) as err:
            _ = [f async for f in call(requests())]
    assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT
    # A Python client cannot even send a lone surrogate: it fails before the wire.
    with pytest.raises((UnicodeEncodeError, ValueError)):
        pb.TextChunk(text="\ud800").SerializeToString()
    await client.end_session(sid)
    await still_serving(client)


async def test_client_vanishing_mid_stream(client: TtsClient) -> None:
    sid = "s-vanish"
    await client.start_session(sid, "tone", {"pacing": "realtime"})
    n = 0
    async for _ in client.say(sid, "many words here to keep it talking for a while " * 5):
        n += 1
        if n == 3:
            break  # cancels the call: the worker sees a disconnect
    await asyncio.sleep(0.1)
    frames = [f async for f in client.say(sid, "back again")]
    assert frames[-1].is_final
    await client.end_session(sid)
    await still_serving(client)


async def test_control_for_unknown_session_is_not_found(client: TtsClient) -> None:
    for command in (Command.PAUSE, Command.RESUME, Command.STOP):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.control("nobody", command)
        assert code_of(err) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.end_session("nobody")
    assert code_of(err) == grpc.StatusCode.NOT_FOUND


async def test_second_stream_for_one_session_is_refused(client: TtsClient) -> None:
    sid = "s-twice"
    await client.start_session(sid, "tone", {"pacing": "realtime"})
    first = client.say(sid, "a long utterance that keeps the first stream busy for a while")
    await anext(first)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [f async for f in client.say(sid, "second")]
    assert code_of(err) == grpc.StatusCode.ALREADY_EXISTS
    frames = [f async for f in first]
    assert frames[-1].is_final
    await client.end_session(sid)


async def test_duplicate_session_and_bad_options(client: TtsClient) -> None:
    await client.start_session("s-dup", "tone")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.start_session("s-dup", "tone")
    assert code_of(err) == grpc.StatusCode.ALREADY_EXISTS
    await client.end_session("s-dup")
    for options in ({"speed": "fast"}, {"pacing": "warp"}, {"colour": "blue"}):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.start_session("s-opt", "tone", options)
        assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT


async def test_unload_in_use_and_load_at_cap_with_all_in_use(
    worker: object, client: TtsClient
) -> None:
    # The fixture's worker holds 4 resident models under a cap of 6: fill it with in-use ones.
    manager = worker.manager  # type: ignore[attr-defined]
    sids = []
    for i, model in enumerate(manager.resident_ids()):
        sids.append(f"cap-{i}")
        await client.start_session(sids[-1], model)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.unload_model("tone")
    assert code_of(err) == grpc.StatusCode.FAILED_PRECONDITION
    extra = [m for m in ("pico-en-gb", "pico-de") if not manager.is_resident(m)]
    for model in extra[: manager.config.max_resident - len(manager.resident_ids())]:
        await client.load_model(model)
        sids.append(f"cap-{model}")
        await client.start_session(sids[-1], model)
    assert len(manager.resident_ids()) == manager.config.max_resident
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.load_model("pico-fr")
    assert code_of(err) == grpc.StatusCode.RESOURCE_EXHAUSTED
    for sid in sids:
        await client.end_session(sid)
    for model in extra:
        await client.unload_model(model)
    await still_serving(client)


async def test_capabilities_and_models(client: TtsClient) -> None:
    caps = await client.capabilities()
    assert caps.capabilities.streaming and caps.capabilities.cpu_ok
    assert "en" in caps.capabilities.languages
    assert {"tone", "piper-joe"} <= set(caps.resident_models)
    models = {m.model_id: m for m in await client.list_models()}
    assert models["piper-joe"].family == "piper" and models["piper-joe"].is_loaded
    assert "jf_alpha" in models["kokoro-ja"].metadata["voices"]


async def test_a_stream_aborted_while_the_client_writes_reports_the_real_status(
    client: TtsClient,
) -> None:
    """The worker refuses a chunk while the client is still writing more: the client sees
    INVALID_ARGUMENT every time, not grpcio's INTERNAL "Internal error from Core"."""
    codes = []
    for i in range(40):
        sid = f"s-abort-{i}"
        await client.start_session(sid, "tone", {"pacing": "none"})

        async def chunks() -> AsyncIterator[tuple[str, bool]]:
            for j in range(60):
                yield ("word " * 20_000 if j == 3 else "word "), False
                await asyncio.sleep(0)

        with pytest.raises(grpc.aio.AioRpcError) as err:
            _ = [f async for f in client.synthesize(sid, chunks())]
        codes.append(code_of(err))
        await client.end_session(sid)
    assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}, codes
