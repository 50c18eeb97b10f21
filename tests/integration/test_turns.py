"""Every turn ends: unbroken speech past max_turn_seconds, and speech whose audio stops
arriving, with the real VAD, Whisper and a TTS worker; transcribing while the user speaks
uses a bounded share of the ASR however long the turn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from duplex.audio.frame import PcmFrame
from duplex.bench.client import Conversation, synthesise_utterances
from duplex.clients.talk import SEND_RATE
from duplex.orchestrator.config import OrchestratorConfig, TurnConfig
from duplex.orchestrator.events import ErrorEvent, ServerEvent
from duplex.orchestrator.server import Orchestrator
from duplex.orchestrator.session import ConversationSession, SessionStart
from duplex.orchestrator.transport import ClientPlayout
from duplex.worker.config import WorkerConfig
from duplex.worker.server import Worker

MAX_TURN = 4.0
SPEECH = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Every morning the baker opens his shop and sells fresh bread to the town.",
    "My sister travels to the mountains each summer to walk along the high trails.",
]


@pytest.fixture(scope="module")
async def orch() -> AsyncIterator[Orchestrator]:
    async with Worker(WorkerConfig(name="turn-worker", port=0, default_model="pico-en")) as w:
        config = OrchestratorConfig(
            port=0,
            workers=[w.address],
            default_model="pico-en",
            turn=TurnConfig(max_turn_seconds=MAX_TURN),
        )
        async with Orchestrator(config) as o:
            yield o


@pytest.fixture(scope="module")
async def speech(orch: Orchestrator) -> dict[str, list[bytes]]:
    return await synthesise_utterances([*SPEECH, "I would like to book a table for"], "piper-joe")


def unbroken(frames: list[bytes]) -> list[bytes]:
    """Speech with its pauses cut out: the VAD never hears the 160 ms of silence it ends on."""
    return [f for f in frames if np.abs(np.frombuffer(f, "<i2")).max() > 300]


class _Output(ClientPlayout):
    def __init__(self, conv: Conversation) -> None:
        self._conv = conv

    def event(self, event: ServerEvent) -> None:
        self._conv.got(time.monotonic(), event.to_json())

    def play(self, frame: PcmFrame) -> None:
        self._conv.heard(time.monotonic(), frame.data)

    def refuse(self, code: str, message: str) -> None:
        self.event(ErrorEvent(code, message))

    def unheard_seconds(self) -> float:
        return 0.0


async def _no_mic(pcm: bytes) -> None:
    return None


def finals(conv: Conversation) -> list[tuple[float, str]]:
    return [
        (at, str(e["text"])) for at, e in conv.events if e["type"] == "transcript" and e["final"]
    ]


def asr_seconds(orch: Orchestrator) -> tuple[float, float]:
    registry = orch.metrics.registry
    count = registry.get_sample_value("duplex_asr_seconds_count") or 0.0
    return count, registry.get_sample_value("duplex_asr_seconds_sum") or 0.0


async def feed(session: ConversationSession, frames: list[bytes]) -> None:
    t0 = time.monotonic()
    for i, pcm in enumerate(frames):
        session.feed_audio(pcm)
        await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.monotonic()))


async def test_unbroken_speech_ends_its_turn_at_max_turn_seconds(
    orch: Orchestrator, speech: dict[str, list[bytes]]
) -> None:
    frames = [f for text in SPEECH for f in unbroken(speech[text])]
    assert len(frames) * 0.02 > 2 * MAX_TURN
    conv = Conversation(_no_mic)
    session = ConversationSession(orch.services, _Output(conv), SessionStart(SEND_RATE, "pico-en"))
    count0, busy0 = asr_seconds(orch)
    async with asyncio.TaskGroup() as tg:
        runner = tg.create_task(session.run())
        try:
            started = time.monotonic()
            await feed(session, frames)
            spoke = time.monotonic() - started
            # While the speech still went on, a turn ended with what was said so far.
            early = [(at, text) for at, text in finals(conv) if at - started < spoke]
            assert early, conv.events
            assert early[0][0] - started < MAX_TURN + 3, early
            assert "fox" in early[0][1].lower(), early
            count, busy = asr_seconds(orch)
            # Partial transcripts while the user speaks take a bounded share of the ASR.
            assert busy - busy0 < 0.4 * spoke, (count - count0, busy - busy0, spoke)
        finally:
            runner.cancel()


async def test_speech_whose_audio_stops_arriving_ends_its_turn(
    orch: Orchestrator, speech: dict[str, list[bytes]]
) -> None:
    frames = speech["I would like to book a table for"]
    cut = frames[: int(len(frames) * 0.7)]  # mid-sentence, mid-word
    conv = Conversation(_no_mic)
    session = ConversationSession(orch.services, _Output(conv), SessionStart(SEND_RATE, "pico-en"))
    async with asyncio.TaskGroup() as tg:
        runner = tg.create_task(session.run())
        try:
            await feed(session, [bytes(640)] * 10 + cut)
            stopped = time.monotonic()  # no more audio from here on
            assert await conv.wait_for(lambda: bool(finals(conv)), 10), conv.events
            at, text = finals(conv)[0]
            assert "table" in text.lower() or "book" in text.lower(), text
            # An unfinished clause waits longer than a finished one, but not forever.
            assert at - stopped < 5, at - stopped
        finally:
            runner.cancel()
