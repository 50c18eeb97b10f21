"""A conversation as a client holds it: a microphone fed with queued speech, what comes back.

Shared by the conversation bench, its LiveKit participant and the tests: utterances are
synthesised by the project's own TTS and cut into 20 ms, 16 kHz frames; `Conversation` sends
them (or silence) in real time and records the reply audio and events as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from duplex.clients.talk import SEND_RATE, SEND_SAMPLES

SILENCE = bytes(SEND_SAMPLES * 2)
_AUDIBLE = 64  # peak sample value: above dither and codec noise, far below speech


def is_audible(pcm: bytes) -> bool:
    samples = np.frombuffer(pcm, "<i2")
    return bool(samples.size) and int(np.abs(samples).max()) > _AUDIBLE


def to_frames(pcm16k: np.ndarray) -> list[bytes]:
    """16 kHz float audio as 20 ms int16 frames, the last one padded with silence."""
    pcm = np.concatenate([pcm16k, np.zeros(-pcm16k.size % SEND_SAMPLES, np.float32)])
    ints = np.clip(pcm * 32768, -32768, 32767).astype("<i2")
    return [ints[i : i + SEND_SAMPLES].tobytes() for i in range(0, ints.size, SEND_SAMPLES)]


def speech_bounds(frames: list[bytes], floor_dbfs: float = -40) -> tuple[int, int]:
    """Index of the first and one past the last frame louder than `floor_dbfs`."""
    loud = [
        i
        for i, f in enumerate(frames)
        if 20 * np.log10(max(1e-9, np.abs(np.frombuffer(f, "<i2")).max() / 32768)) > floor_dbfs
    ]
    return (loud[0], loud[-1] + 1) if loud else (0, len(frames))


async def synthesise_utterances(texts: list[str], model: str) -> dict[str, list[bytes]]:
    """Speak each text with an in-process worker and cut it into 20 ms, 16 kHz frames."""
    import soxr

    from duplex.rpc.client import TtsClient
    from duplex.worker.config import WorkerConfig
    from duplex.worker.server import Worker

    out = {}
    async with (
        Worker(WorkerConfig(name="bench-voice", port=0, default_model=model)) as worker,
        TtsClient(worker.address) as client,
    ):
        for i, text in enumerate(texts):
            await client.start_session(f"u{i}", model, {"pacing": "none"})
            pcm = (
                np.concatenate(
                    [f.frame.samples() async for f in client.say(f"u{i}", text) if f.frame]
                ).astype(np.float32)
                / 32768
            )
            await client.end_session(f"u{i}")
            out[text] = to_frames(soxr.resample(pcm, 48000, SEND_RATE).astype(np.float32))
    return out


@dataclass
class Conversation:
    """A client session with a microphone that sends queued frames or silence.

    `send` carries one 20 ms frame of 16 kHz PCM to the transport; the transport's listener
    fills `frames` (arrival times of reply audio) and `events`, and sets `changed`.
    """

    send: Callable[[bytes], Awaitable[None]]
    outgoing: asyncio.Queue[tuple[bytes, Callable[[float], None] | None]] = field(
        default_factory=asyncio.Queue
    )
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    frames: list[float] = field(default_factory=list)  # arrival times of reply frames
    audio: list[bytes] = field(default_factory=list)  # the reply frames: 48 kHz int16
    # Arrival times of frames with sound in them. The timings use these on every transport:
    # a WebRTC track carries silence between replies, so there only these can be told apart.
    audible: list[float] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def mic(self) -> None:
        t0 = time.monotonic()
        n = 0
        while True:
            try:
                pcm, mark = self.outgoing.get_nowait()
            except asyncio.QueueEmpty:
                pcm, mark = SILENCE, None
            await self.send(pcm)
            if mark is not None:
                mark(time.monotonic())
            n += 1
            await asyncio.sleep(max(0.0, t0 + n * 0.02 - time.monotonic()))

    def heard(self, at: float, pcm: bytes) -> None:
        self.frames.append(at)
        self.audio.append(pcm)
        if is_audible(pcm):
            self.audible.append(at)
        self.changed.set()

    def got(self, at: float, event: dict[str, Any]) -> None:
        self.events.append((at, event))
        self.changed.set()

    def say(self, frames: list[bytes], marks: dict[int, Callable[[float], None]]) -> None:
        for i, pcm in enumerate(frames):
            self.outgoing.put_nowait((pcm, marks.get(i)))

    async def wait_for(self, check: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not check():
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.changed.wait()
        return True

    def reply_done_after(self, t: float) -> bool:
        return any(e["type"] == "reply" and e.get("final") and at > t for at, e in self.events)


@contextlib.asynccontextmanager
async def conversation(
    url: str, model: str, api_key: str | None = None
) -> AsyncIterator[Conversation]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
        await ws.send_str(
            json.dumps({"type": "session.start", "sample_rate": SEND_RATE, "model": model})
        )
        conv = Conversation(ws.send_bytes)

        async def listen() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    conv.heard(time.monotonic(), msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    conv.got(time.monotonic(), json.loads(msg.data))

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(conv.mic()), tg.create_task(listen())]
            try:
                yield conv
            finally:
                for task in tasks:
                    task.cancel()
