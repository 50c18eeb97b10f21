"""A LiveKit participant that talks to the duplex agent, as a browser would.

It joins a room with a token from the orchestrator's endpoint (which dispatches the agent),
publishes a microphone track fed from queued 16 kHz frames (silence otherwise), and records
what arrives: reply audio on the agent's track and the agent's events on the data channel.
WebRTC keeps an audio track flowing while nobody speaks, so only frames with sound in them
count as reply audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from livekit import rtc

from duplex.bench.client import Conversation, is_audible
from duplex.clients.talk import SEND_RATE, SEND_SAMPLES

TOPIC = "duplex"


async def room_token(
    orchestrator: str, *, model: str | None = None, room: str | None = None
) -> dict[str, Any]:
    """Ask the orchestrator's token endpoint (http://host:port) for a room token."""
    body = {k: v for k, v in (("model", model), ("room", room)) if v}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{orchestrator}/api/livekit/token", json=body) as resp,
    ):
        answer: dict[str, Any] = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"no LiveKit token: {answer}")
        return answer


@contextlib.asynccontextmanager
async def livekit_conversation(url: str, token: str) -> AsyncIterator[Conversation]:
    room = rtc.Room()
    mic = rtc.AudioSource(SEND_RATE, 1, queue_size_ms=100)

    async def send(pcm: bytes) -> None:
        await mic.capture_frame(rtc.AudioFrame(pcm, SEND_RATE, 1, SEND_SAMPLES))

    conv = Conversation(send)
    streams: list[asyncio.Task[None]] = []

    async def listen(track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1, frame_size_ms=20)
        try:
            async for event in stream:
                pcm = bytes(event.frame.data)
                if is_audible(pcm):
                    conv.heard(time.monotonic(), pcm)
        finally:
            await stream.aclose()

    def on_track(
        track: rtc.Track, _pub: rtc.RemoteTrackPublication, _who: rtc.RemoteParticipant
    ) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            streams.append(asyncio.get_running_loop().create_task(listen(track)))

    def on_data(packet: rtc.DataPacket) -> None:
        if packet.topic == TOPIC:
            conv.got(time.monotonic(), json.loads(bytes(packet.data)))

    room.on("track_subscribed", on_track)
    room.on("data_received", on_data)
    await room.connect(url, token)
    try:
        track = rtc.LocalAudioTrack.create_audio_track("microphone", mic)
        await room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        )
        async with asyncio.TaskGroup() as tg:
            sender = tg.create_task(conv.mic())
            try:
                yield conv
            finally:
                sender.cancel()
    finally:
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
        await room.disconnect()
        await mic.aclose()


@contextlib.asynccontextmanager
async def join(orchestrator: str, *, model: str | None = None) -> AsyncIterator[Conversation]:
    """A conversation in a fresh room, with a token from the orchestrator (http://host:port)."""
    grant = await room_token(orchestrator, model=model)
    async with livekit_conversation(grant["url"], grant["token"]) as conv:
        yield conv
