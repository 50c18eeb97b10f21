"""The contract every TTS family passes, over real gRPC on loopback with real models."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from duplex.audio import FRAME_BYTES
from duplex.rpc.client import Command, ReceivedFrame, TtsClient
from tests.conftest import Listener

FAMILIES = ["tone", "pico-en", "piper-joe", "kokoro-ja"]
SENTENCE = "Hello there. This is a test of the streaming voice, with a few words more."


@pytest.fixture
async def client(worker: object) -> AsyncIterator[TtsClient]:
    async with TtsClient(f"127.0.0.1:{worker.port}") as c:  # type: ignore[attr-defined]
        yield c


async def session(client: TtsClient, model: str, **options: str) -> str:
    sid = f"{model}-{uuid.uuid4().hex[:8]}"
    await client.start_session(sid, model, options)
    return sid


async def collect(client: TtsClient, sid: str, text: str) -> list[ReceivedFrame]:
    return [f async for f in client.say(sid, text)]


def check_stream(frames: list[ReceivedFrame], first_sequence: int = 1) -> None:
    assert frames, "no frames"
    assert [f.sequence for f in frames] == list(range(first_sequence, first_sequence + len(frames)))
    assert frames[-1].is_final
    assert sum(f.is_final for f in frames) == 1
    data = [f for f in frames if f.frame is not None]
    assert all(len(f.frame.data) == FRAME_BYTES for f in data)  # type: ignore[union-attr]
    assert len(data) >= 10


def audio_of(frames: list[ReceivedFrame]) -> np.ndarray:
    return np.concatenate([f.frame.samples() for f in frames if f.frame is not None])


@pytest.mark.parametrize("model", FAMILIES)
async def test_framing_sequence_and_final_marker(client: TtsClient, model: str) -> None:
    sid = await session(client, model, pacing="none")
    frames = await collect(client, sid, SENTENCE)
    check_stream(frames)
    # A second utterance on the same session continues the sequence.
    more = await collect(client, sid, "And again.")
    check_stream(more, first_sequence=frames[-1].sequence + 1)
    assert np.abs(audio_of(frames)).max() > 1000  # it is not silence
    await client.end_session(sid)


@pytest.mark.parametrize("model", FAMILIES)
async def test_streamed_tokens_are_spoken(client: TtsClient, model: str) -> None:
    sid = await session(client, model, pacing="none")
    words = SENTENCE.split(" ")

    async def tokens() -> AsyncIterator[tuple[str, bool]]:
        for i, word in enumerate(words):
            yield ("" if i == 0 else " ") + word, False
            await asyncio.sleep(0.005)
        yield "", True

    frames = []
    async for frame in client.synthesize(sid, tokens()):
        frames.append(frame)
        if frame.is_final:
            break
    check_stream(frames)
    await client.end_session(sid)


@pytest.mark.parametrize("model", FAMILIES)
async def test_pause_stops_within_one_frame_and_resume_loses_nothing(
    client: TtsClient, model: str
) -> None:
    text = "One two three four five six seven eight nine ten. Eleven twelve thirteen fourteen."
    reference = await session(client, model, pacing="none")
    expected = [f for f in await collect(client, reference, text) if f.frame is not None]
    await client.end_session(reference)

    sid = await session(client, model, pacing="realtime", lead_ms="0")
    received: list[tuple[float, ReceivedFrame]] = []
    got_ten = asyncio.Event()

    async def reader() -> None:
        async for frame in client.say(sid, text):
            received.append((time.monotonic(), frame))
            if len(received) == 10:
                got_ten.set()

    task = asyncio.create_task(reader())
    try:
        await asyncio.wait_for(got_ten.wait(), 30)
        await client.control(sid, Command.PAUSE)
        acked = time.monotonic()
        await asyncio.sleep(0.4)
        after_pause = [f for t, f in received if t > acked]
        assert len(after_pause) <= 1, f"{len(after_pause)} frames after PAUSE"
        await client.control(sid, Command.RESUME)
        await asyncio.wait_for(task, 60)
    finally:
        task.cancel()
    frames = [f for _, f in received]
    check_stream(frames)
    data = [f for f in frames if f.frame is not None]
    if model == "tone":  # fully deterministic: exactly the unpaused audio, nothing replayed
        assert [f.frame.data for f in data] == [f.frame.data for f in expected]  # type: ignore[union-attr]
    else:  # neural noise and engine state vary the length a little between runs
        assert abs(len(data) - len(expected)) <= 0.15 * len(expected)
    await client.end_session(sid)


@pytest.mark.parametrize("model", FAMILIES)
async def test_stop_ends_stream_with_final_marker_and_session_goes_on(
    client: TtsClient, model: str
) -> None:
    sid = await session(client, model, pacing="realtime", lead_ms="0")
    frames: list[ReceivedFrame] = []

    async def reader() -> None:
        async for frame in client.say(sid, "A long sentence that will be stopped early. " * 4):
            frames.append(frame)
            if len(frames) == 5:
                await client.control(sid, Command.STOP)

    await asyncio.wait_for(reader(), 30)
    assert frames[-1].is_final and frames[-1].frame is None
    assert len(frames) < 40
    check_stream(await collect(client, sid, "Still here."), first_sequence=frames[-1].sequence + 1)
    await client.end_session(sid)


@pytest.mark.parametrize("model", FAMILIES)
@pytest.mark.parametrize(
    "text",
    ["Grüße aus Köln — naïve café, 3.14 % and 1,000 €! 🎉👍", "   ", "", "🎉🎉🎉"],
    ids=["unicode", "whitespace", "empty", "emoji"],
)
async def test_odd_text_never_breaks_the_stream(client: TtsClient, model: str, text: str) -> None:
    sid = await session(client, model, pacing="none")
    frames = await collect(client, sid, text)
    assert frames[-1].is_final
    if text.strip() and text != "🎉🎉🎉":
        check_stream(frames)
    else:  # nothing speakable: only the end marker
        assert len(frames) == 1 and frames[0].frame is None
    await client.end_session(sid)


@pytest.mark.parametrize("model", FAMILIES)
async def test_long_text_streams_from_a_bounded_buffer(client: TtsClient, model: str) -> None:
    sid = await session(client, model, pacing="none")
    text = "This sentence repeats to make a long text without end. " * 40
    count = 0
    async for _frame in client.say(sid, text):
        count += 1
        if count == 30:
            break  # a client that stops reading early: the worker must not hang
    await client.end_session(sid)


@pytest.mark.parametrize("model", FAMILIES)
async def test_concurrent_sessions_get_their_own_audio(client: TtsClient, model: str) -> None:
    texts = ["First voice speaking.", "Second one, a bit longer than that.", "Third."]
    sids = [await session(client, model, pacing="none") for _ in texts]
    results = await asyncio.gather(
        *(collect(client, s, t) for s, t in zip(sids, texts, strict=True))
    )
    for frames in results:
        check_stream(frames, first_sequence=1)
    if model != "piper-joe":
        lengths = [len(r) for r in results]
        assert lengths[1] > lengths[2]
    for sid in sids:
        await client.end_session(sid)


@pytest.mark.parametrize("model", ["pico-en", "piper-joe", "kokoro-ja"])
async def test_audio_is_intelligible_speech(
    client: TtsClient, model: str, whisper: Listener
) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    sid = await session(client, model, pacing="none")
    pcm = audio_of(await collect(client, sid, text)).astype(np.float32) / 32768
    await client.end_session(sid)
    heard = await whisper.hear(pcm, beam_size=1)
    words = ["quick", "brown", "fox", "jumps", "over", "lazy", "dog"]
    hits = sum(w in heard for w in words)
    assert hits >= (4 if model == "kokoro-ja" else 6), heard


async def test_voice_selection_and_bad_voice(client: TtsClient) -> None:
    sid = await session(client, "kokoro-ja", pacing="none", voice="jm_kumo")
    check_stream(await collect(client, sid, "A different voice."))
    await client.end_session(sid)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await session(client, "kokoro-ja", voice="af_nope")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "jf_alpha" in (err.value.details() or "")
