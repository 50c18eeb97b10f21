"""Barge-in on the LiveKit output: what a pause takes back and a flush throws away."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from livekit import rtc

from duplex.audio.frame import FRAME_SAMPLES, SAMPLE_RATE, PcmFrame
from duplex.orchestrator.events import StateChanged
from duplex.orchestrator.livekit_agent import RoomOutput


def frame(i: int) -> PcmFrame:
    return PcmFrame.from_samples(np.full(FRAME_SAMPLES, i + 1, np.int16))


async def pump(output: RoomOutput, until: Any) -> None:
    task = asyncio.create_task(output.write_audio())
    try:
        async with asyncio.timeout(5):
            while not until():
                await asyncio.sleep(0.005)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_pause_takes_back_unsent_frames_and_flush_drops_everything() -> None:
    source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=200)
    output = RoomOutput(None, source)  # type: ignore[arg-type]  # events are not sent here
    try:
        for i in range(5):
            output.play(frame(i))
        # Until the writer has handed every frame to the SDK (not only taken it from the queue).
        await pump(output, lambda: not output._audio and len(output._sent) == 5)
        # Nothing consumes the source here: every frame is still queued in the SDK.
        assert source.queued_duration > 0
        output.pause()
        assert source.queued_duration == 0
        held = [int(f.samples()[0]) for f in output._audio]
        assert held and held == list(range(6 - len(held), 6))  # the newest, in order
        output.play(frame(9))
        output.flush()
        assert not output._audio and source.queued_duration == 0
    finally:
        await source.aclose()


class _Participant:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def publish_data(self, payload: str, **_: Any) -> None:
        self.sent.append(payload)


class _Room:
    def __init__(self) -> None:
        self.local_participant = _Participant()


async def test_a_room_that_takes_nothing_is_left_not_buffered_without_end() -> None:
    source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=200)
    room = _Room()
    output = RoomOutput(room, source)  # type: ignore[arg-type]
    try:
        output.event(StateChanged("speaking"))
        for i in range(2000):  # 40 s of audio that nothing sends
            output.play(frame(i))
        output.event(StateChanged("listening"))
        assert len(output._audio) == 0  # dropped at the bound, not kept
        async with asyncio.timeout(5):
            await output.write_events()
        assert output.hung_up.is_set()
        assert room.local_participant.sent == ['{"type": "state", "state": "speaking"}']
    finally:
        await source.aclose()
