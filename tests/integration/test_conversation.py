"""End to end over WebSocket with real models: VAD, Whisper, responder, TTS worker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from duplex.audio.frame import PcmFrame
from duplex.bench.client import Conversation, conversation, speech_bounds
from duplex.bench.conversation import BACKGROUND
from duplex.clients.talk import SEND_RATE, talk_file
from duplex.orchestrator.config import OrchestratorConfig
from duplex.orchestrator.events import ErrorEvent, ServerEvent
from duplex.orchestrator.server import Orchestrator
from duplex.orchestrator.session import ConversationSession, SessionStart
from duplex.orchestrator.transport import ClientPlayout
from duplex.rpc.client import TtsClient
from duplex.worker.config import WorkerConfig
from duplex.worker.server import Worker
from tests.conftest import Listener


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[tuple[Worker, Orchestrator]]:
    async with Worker(WorkerConfig(name="conv-worker", port=0, default_model="piper-joe")) as w:
        config = OrchestratorConfig(port=0, workers=[w.address])
        async with Orchestrator(config) as orch:
            yield w, orch


@pytest.fixture(scope="module")
async def utterances(stack: tuple[Worker, Orchestrator]) -> dict[str, list[bytes]]:
    from duplex.bench.client import synthesise_utterances

    return await synthesise_utterances(
        [
            "What is your name?",
            "Please tell me a story.",
            "Wait, stop, I have another question.",
            "Hello there, how are you today?",
            "I would like to book a table for",
            "four people please.",
            "Uh-huh.",
            "Yeah.",
            "Right.",
            "Yeah, but wait, I have another question.",
            BACKGROUND,
        ],
        "piper-joe",
    )


def url(stack: tuple[Worker, Orchestrator]) -> str:
    return f"ws://127.0.0.1:{stack[1].port}/ws"


def write_wav16(path: Path, frames: list[bytes]) -> None:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SEND_RATE)
        w.writeframes(b"".join(frames))


def events(conv: Conversation, kind: str) -> list[dict[str, object]]:
    return [e for _, e in conv.events if e["type"] == kind]


async def test_spoken_question_gets_a_spoken_answer(
    stack: tuple[Worker, Orchestrator],
    utterances: dict[str, list[bytes]],
    tmp_path: Path,
    whisper: Listener,
) -> None:
    wav = tmp_path / "q.wav"
    write_wav16(wav, utterances["What is your name?"])
    result = await talk_file(url(stack), wav, timeout=30, verbose=False)
    assert "name" in result.transcript().lower()
    assert "duplex" in result.reply().lower()
    states = [e["state"] for e in result.events if e["type"] == "state"]
    assert states[:4] == ["listening", "thinking", "speaking", "listening"]
    pcm = np.concatenate([f.samples() for f in result.frames]).astype(np.float32) / 32768
    heard = await whisper.hear(pcm)
    assert "duplex" in heard or "voice" in heard, heard


async def test_barge_in_stops_the_reply(
    stack: tuple[Worker, Orchestrator], utterances: dict[str, list[bytes]]
) -> None:
    async with conversation(url(stack), "piper-joe") as conv:
        conv.say(utterances["Please tell me a story."], {})
        assert await conv.wait_for(lambda: len(conv.frames) > 100, 30)
        interruption = utterances["Wait, stop, I have another question."]
        onset: list[float] = []
        conv.say(interruption, {speech_bounds(interruption)[0]: onset.append})
        assert await conv.wait_for(lambda: bool(events(conv, "barge_in")), 5)
        assert await conv.wait_for(
            lambda: any(e.get("action") == "flush" for e in events(conv, "playback")), 10
        )
        await asyncio.sleep(1.0)
        late = [t for t in conv.frames if t > onset[0] + 0.3]
        # Frames after the onset are at most the interruption's detection time's worth.
        assert not late, f"{len(late)} reply frames more than 300 ms after the interruption"
        # The interruption becomes the next turn.
        assert await conv.wait_for(
            lambda: any(
                "question" in str(e["text"]).lower()
                for e in events(conv, "transcript")
                if e.get("final")
            ),
            15,
        )


async def test_noise_burst_and_backchannel_do_not_end_the_reply(
    stack: tuple[Worker, Orchestrator], utterances: dict[str, list[bytes]]
) -> None:
    rng = np.random.default_rng(0)
    async with conversation(url(stack), "piper-joe") as conv:
        conv.say(utterances["Please tell me a story."], {})
        assert await conv.wait_for(lambda: len(conv.frames) > 75, 30)
        noise = np.clip(rng.normal(0, 0.1, SEND_RATE // 5) * 32768, -32768, 32767)
        noise_frames = [f.tobytes() for f in noise.astype("<i2").reshape(-1, SEND_RATE // 50)]
        conv.say(noise_frames, {})
        await asyncio.sleep(2.0)
        conv.say(utterances["Uh-huh."], {})
        await asyncio.sleep(2.0)
        conv.say(utterances["Yeah."], {})
        await asyncio.sleep(3.0)
        n = len(conv.frames)
        assert await conv.wait_for(lambda: len(conv.frames) > n + 50, 10), conv.events
        assert not any(e.get("action") == "flush" for e in events(conv, "playback")), conv.events
        listening = [e for e in events(conv, "state") if e["state"] == "listening"]
        assert listening[1:] == [], conv.events


async def test_pause_after_unfinished_clause_does_not_take_the_floor(
    stack: tuple[Worker, Orchestrator], utterances: dict[str, list[bytes]]
) -> None:
    async with conversation(url(stack), "piper-joe") as conv:
        conv.say(utterances["I would like to book a table for"], {})
        conv.say([bytes(640)] * 65, {})  # 1.3 s of thinking
        conv.say(utterances["four people please."], {})
        assert await conv.wait_for(
            lambda: any(e.get("final") for e in events(conv, "transcript")), 20
        )
        finals = [str(e["text"]).lower() for e in events(conv, "transcript") if e.get("final")]
        assert len(finals) == 1 and "table" in finals[0] and "people" in finals[0], conv.events


@pytest.mark.parametrize(
    "said", ["Hello there, how are you today?", "Wait, stop, I have another question."]
)
async def test_the_pause_after_a_comma_does_not_take_the_floor(
    stack: tuple[Worker, Orchestrator], utterances: dict[str, list[bytes]], said: str
) -> None:
    """Whisper writes "Hello there." at the comma, a finished sentence; the pause after it
    (0.2-0.3 s in this voice) is still shorter than the silence that ends a turn."""
    async with conversation(url(stack), "piper-joe") as conv:
        conv.say(utterances[said], {})
        assert await conv.wait_for(lambda: bool(events(conv, "reply")), 20), conv.events
        await asyncio.sleep(1.0)  # a second final transcript would come by now
        finals = [str(e["text"]) for e in events(conv, "transcript") if e.get("final")]
        assert len(finals) == 1 and finals[0].lower().rstrip(".?!").endswith(
            said.lower().rstrip(".?!").split()[-1]
        ), conv.events


async def test_a_held_up_loop_is_not_the_users_silence(
    stack: tuple[Worker, Orchestrator], utterances: dict[str, list[bytes]]
) -> None:
    """A busy CPU that holds the event loop up mid-pause (here: 1.6 s) delays the client's
    frames; the wait must not count as the user's silence and end the turn mid-sentence."""
    head = utterances["I would like to book a table for"]
    frames = head + [bytes(640)] * 65 + utterances["four people please."]
    async with conversation(url(stack), "piper-joe") as conv:
        conv.say(frames, {len(head) + 40: lambda _: time.sleep(1.6)})
        assert await conv.wait_for(
            lambda: any(e.get("final") for e in events(conv, "transcript")), 20
        )
        finals = [str(e["text"]).lower() for e in events(conv, "transcript") if e.get("final")]
        assert len(finals) == 1 and "table" in finals[0] and "people" in finals[0], conv.events


async def test_typed_text_and_bad_input(stack: tuple[Worker, Orchestrator]) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(url(stack)) as ws:

        async def next_event(kind: str) -> dict[str, object]:
            async with asyncio.timeout(20):
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        event = json.loads(msg.data)
                        if event["type"] == kind:
                            return event  # type: ignore[no-any-return]
            raise AssertionError("socket closed")

        await ws.send_bytes(bytes(640))
        assert "session.start" in str((await next_event("error"))["message"])
        await ws.send_str("{not json")
        assert (await next_event("error"))["code"] == "invalid_argument"
        await ws.send_str(json.dumps({"type": "session.start", "sample_rate": 12345}))
        assert "sample_rate" in str((await next_event("error"))["message"])
        await ws.send_str(json.dumps({"type": "session.start", "sample_rate": 16000}))
        await next_event("session.started")
        await ws.send_bytes(bytes(100))
        assert "640 bytes" in str((await next_event("error"))["message"])
        await ws.send_str(json.dumps({"type": "text", "text": "x" * (1 << 20)}))
        assert "exceeds" in str((await next_event("error"))["message"])
        await ws.send_str(json.dumps({"type": "warp"}))
        assert "unknown message type" in str((await next_event("error"))["message"])
        await ws.send_str(json.dumps({"type": "text", "text": "What is your name?"}))
        while True:
            event = await next_event("reply")
            if event.get("final"):
                break
        assert "duplex" in str(event["text"]).lower()


async def test_client_vanishing_mid_reply_leaves_others_working(
    stack: tuple[Worker, Orchestrator], utterances: dict[str, list[bytes]], tmp_path: Path
) -> None:
    async with conversation(url(stack), "piper-joe") as conv:
        conv.say(utterances["Please tell me a story."], {})
        assert await conv.wait_for(lambda: len(conv.frames) > 20, 30)
    # That client is gone mid-reply; a new one is served normally.
    wav = tmp_path / "q.wav"
    write_wav16(wav, utterances["What is your name?"])
    result = await talk_file(url(stack), wav, timeout=30, verbose=False)
    assert "duplex" in result.reply().lower()
    # Both conversations ended: their TTS sessions on the worker are released.
    async with asyncio.timeout(5):
        while stack[0].servicer.sessions:
            await asyncio.sleep(0.05)


async def test_http_endpoints(stack: tuple[Worker, Orchestrator]) -> None:
    base = f"http://127.0.0.1:{stack[1].port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200 and (await r.json())["ok"]
        async with http.get(f"{base}/api/models") as r:
            models = {m["model_id"]: m for m in (await r.json())["models"]}
            assert models["piper-joe"]["resident"] and "jf_alpha" in models["kokoro-ja"]["voices"]
        async with http.get(f"{base}/metrics") as r:
            body = await r.text()
            for name in (
                "duplex_voice_to_voice_seconds",
                "duplex_asr_seconds",
                "duplex_barge_in_seconds",
                "duplex_barge_ins_total",
                "duplex_sessions",
            ):
                assert name in body, name
        async with http.get(f"{base}/") as r:
            assert r.status == 200 and "duplex" in await r.text()
        async with http.get(f"{base}/static/app.js") as r:
            assert r.status == 200


async def test_talk_command_writes_the_reply(
    stack: tuple[Worker, Orchestrator], utterances: dict[str, list[bytes]], tmp_path: Path
) -> None:
    import sys
    import wave

    question, answer = tmp_path / "q.wav", tmp_path / "a.wav"
    write_wav16(question, utterances["What is your name?"])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "duplex.cli",
        "talk",
        "--url",
        url(stack),
        "--input",
        str(question),
        "--output",
        str(answer),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "you: What is your name?" in text and "bot: I'm duplex" in text
    with wave.open(str(answer)) as w:
        assert w.getframerate() == 48000 and w.getnframes() > 48000


class _Output(ClientPlayout):
    """A session output that records into a client-side Conversation, as a transport would."""

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


def _sample(orch: Orchestrator, name: str) -> float:
    return orch.metrics.registry.get_sample_value(name) or 0.0


@pytest.mark.parametrize("stall", [0.0, 0.4])
async def test_barge_in_is_timed_from_the_onset_the_vad_heard(
    stack: tuple[Worker, Orchestrator], utterances: dict[str, list[bytes]], stall: float
) -> None:
    """The reported barge-in follows a real delay: here the listener's loop stalls right
    after the interrupting speech began, so its audio waits unprocessed for `stall` s."""
    orch = stack[1]
    conv = Conversation(_no_mic)
    session = ConversationSession(
        orch.services, _Output(conv), SessionStart(SEND_RATE, "piper-joe")
    )
    last_frame_count = _sample(orch, "duplex_barge_in_last_frame_seconds_count")
    last_frame_sum = _sample(orch, "duplex_barge_in_last_frame_seconds_sum")
    async with asyncio.TaskGroup() as tg:
        runner = tg.create_task(session.run())
        try:
            await session.submit_text("Please tell me a story.")
            assert await conv.wait_for(lambda: len(conv.frames) > 60, 30)
            frames = utterances["Wait, stop, I have another question."]
            onset = speech_bounds(frames)[0]
            fed: list[float] = []
            for i, pcm in enumerate(frames):
                fed.append(time.monotonic())
                session.feed_audio(pcm)
                if stall and i >= onset and fed[-1] - fed[onset] < stall:
                    # The loop is stalled: frames arrive, none is processed.
                    time.sleep(0.02)  # noqa: ASYNC251
                else:
                    await asyncio.sleep(0.02)
            assert await conv.wait_for(lambda: bool(events(conv, "barge_in")), 5)
            paused_at = next(
                at for at, e in conv.events if e["type"] == "playback" and e["action"] == "pause"
            )
            reported = float(events(conv, "barge_in")[0]["latency_ms"]) / 1000  # type: ignore[arg-type]
            expected = paused_at - fed[onset]
            # The VAD's onset lies within a window or two of the first loud frame.
            assert abs(reported - expected) < 0.07, (reported, expected)
            # The VAD may place the onset up to two of its windows after the first loud frame.
            assert reported > stall - 0.07
            # The interruption is confirmed (it has words): the audio-stop figure is recorded.
            assert await conv.wait_for(
                lambda: any(e.get("action") == "flush" for e in events(conv, "playback")), 10
            )
            async with asyncio.timeout(5):  # observed right after the flush
                while _sample(orch, "duplex_barge_in_last_frame_seconds_count") == last_frame_count:
                    await asyncio.sleep(0.01)
            # Read at once: the interruption's own turn may barge in on its reply later.
            assert _sample(orch, "duplex_barge_in_last_frame_seconds_count") == last_frame_count + 1
            stopped = _sample(orch, "duplex_barge_in_last_frame_seconds_sum") - last_frame_sum
            # Frames went out until the pause, none after it.
            assert stopped <= reported + 0.001
            if not stall:
                assert stopped > 0.02, stopped
        finally:
            runner.cancel()


@pytest.mark.parametrize("said", ["Yeah.", "Right."])
async def test_a_backchannel_lets_the_reply_go_on_before_it_is_judged(
    stack: tuple[Worker, Orchestrator], utterances: dict[str, list[bytes]], said: str
) -> None:
    """The reply is silenced a moment after the user's voice comes in; as soon as what was
    heard reads as no more than a backchannel it goes on, still lowered, and it comes back
    to full volume only once the whole of it is judged. (Judged only at the end, the reply
    stays silent until then: resume and full volume come together.) Not "uh-huh": Whisper
    hears it as no word at all now and then, and no word keeps the reply silent."""
    orch = stack[1]
    conv = Conversation(_no_mic)
    session = ConversationSession(
        orch.services, _Output(conv), SessionStart(SEND_RATE, "piper-joe")
    )

    def acted(action: str, gain: float | None = None) -> list[float]:
        return [
            at
            for at, e in conv.events
            if e.get("action") == action and (gain is None or e.get("gain") == gain)
        ]

    async with asyncio.TaskGroup() as tg:
        runner = tg.create_task(session.run())
        try:
            await session.submit_text("Please tell me a story.")
            assert await conv.wait_for(lambda: len(conv.frames) > 60, 30)
            for pcm in utterances[said] + [bytes(2 * SEND_RATE // 50)] * 50:
                session.feed_audio(pcm)
                await asyncio.sleep(0.02)
            assert await conv.wait_for(lambda: bool(acted("duck", 1.0)), 5), _told(conv)
            assert acted("pause") and acted("resume"), _told(conv)
            assert acted("resume")[0] < acted("duck", 1.0)[0] - 0.05, _told(conv)
            n = len(conv.frames)
            assert await conv.wait_for(lambda: len(conv.frames) > n + 25, 5)
            assert not acted("flush"), _told(conv)
        finally:
            runner.cancel()


async def test_an_interruption_that_begins_like_a_backchannel_still_stops_the_reply(
    stack: tuple[Worker, Orchestrator], utterances: dict[str, list[bytes]]
) -> None:
    """ "Yeah, but wait, ...": the first look may let the reply go on, lowered; the words that
    follow stop it, and they are the next turn."""
    async with conversation(url(stack), "piper-joe") as conv:
        conv.say(utterances["Please tell me a story."], {})
        assert await conv.wait_for(lambda: len(conv.frames) > 75, 30)
        conv.say(utterances["Yeah, but wait, I have another question."], {})
        assert await conv.wait_for(
            lambda: any(e.get("action") == "flush" for e in events(conv, "playback")), 10
        ), _told(conv)
        assert await conv.wait_for(lambda: _heard_said(conv, "question"), 15), _told(conv)


async def test_a_lost_tts_session_is_started_again(stack: tuple[Worker, Orchestrator]) -> None:
    """The worker ends the conversation's session behind its back (a restart, a reaper): the
    next reply starts a new one instead of failing with NOT_FOUND."""
    worker, orch = stack
    async with aiohttp.ClientSession() as http, http.ws_connect(url(stack)) as ws:
        await ws.send_str(json.dumps({"type": "session.start", "sample_rate": 16000}))

        async def reply() -> dict[str, Any]:
            await ws.send_str(json.dumps({"type": "text", "text": "What is your name?"}))
            async with asyncio.timeout(30):
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        event: dict[str, Any] = json.loads(msg.data)
                        if event["type"] == "error" or (
                            event["type"] == "reply" and event.get("final")
                        ):
                            return event
            raise AssertionError("socket closed")

        assert (await reply())["type"] == "reply"
        (sid,) = worker.servicer.sessions
        async with TtsClient(worker.address, client_id=orch.pool.client_id) as other:
            await other.end_session(sid)
        second = await reply()
        assert second["type"] == "reply" and "duplex" in second["text"].lower(), second
        assert list(worker.servicer.sessions) != [sid]


def _peak(pcm: bytes) -> int:
    return int(np.abs(np.frombuffer(pcm, "<i2")).max())


async def test_speech_over_the_reply_lowers_it_at_once_then_silences_it(
    stack: tuple[Worker, Orchestrator], utterances: dict[str, list[bytes]]
) -> None:
    orch = stack[1]
    conv = Conversation(_no_mic)
    session = ConversationSession(
        orch.services, _Output(conv), SessionStart(SEND_RATE, "piper-joe")
    )
    async with asyncio.TaskGroup() as tg:
        runner = tg.create_task(session.run())
        try:
            await session.submit_text("Please tell me a story.")
            assert await conv.wait_for(lambda: len(conv.frames) > 60, 30)
            # How loud the reply's louder frames are: ducked ones stay well below.
            loud = float(np.percentile([_peak(f) for f in conv.audio[-100:]], 90))
            frames = utterances["Wait, stop, I have another question."]
            onset = speech_bounds(frames)[0]
            fed: list[float] = []
            for pcm in frames[: onset + 25]:
                fed.append(time.monotonic())
                session.feed_audio(pcm)
                await asyncio.sleep(0.02)
            pauses = [at for at, e in conv.events if e.get("action") == "pause"]
            ducks = [at for at, e in conv.events if e.get("action") == "duck"]
            assert pauses and ducks and ducks[0] < pauses[0], conv.events
            # From the VAD's onset to the pause, frames went on, lowered (-12 dB).
            between = [
                pcm
                for at, pcm in zip(conv.frames, conv.audio, strict=True)
                if ducks[0] + 0.025 < at < pauses[0]  # the first ducked frame ramps down
            ]
            assert between and max(_peak(f) for f in between) < 0.5 * loud, loud
            # Silenced within a VAD window or two of the onset plus pause_after_seconds.
            assert pauses[0] - fed[onset] < orch.config.barge_in.pause_after_seconds + 0.15
        finally:
            runner.cancel()


async def test_background_speech_does_not_stop_the_reply(
    stack: tuple[Worker, Orchestrator],
    utterances: dict[str, list[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A television across the room (20 dB below the user) talks over the reply: it goes on,
    neither lowered, paused nor flushed, and the television gets no answer. Its loudest
    syllable comes within 15 dB of the user for a frame or two; and on a busy machine the
    ASR is slow, so the silence after the user's turn is long (it must not count in the
    user's level)."""
    asr = stack[1].services.asr
    transcribe = asr.transcribe

    async def slow(audio: Any) -> Any:
        await asyncio.sleep(2.0)
        return await transcribe(audio)

    monkeypatch.setattr(asr, "transcribe", slow)
    quiet = [
        (np.frombuffer(f, "<i2").astype(np.float32) * 0.1).astype("<i2").tobytes()
        for f in utterances[BACKGROUND]
    ]
    async with conversation(url(stack), "piper-joe") as conv:
        conv.say(utterances["Please tell me a story."], {})
        assert await conv.wait_for(lambda: len(conv.frames) > 75, 30)
        conv.say(quiet, {})
        await asyncio.sleep(len(quiet) * 0.02 + 1.5)
        n = len(conv.frames)
        assert await conv.wait_for(lambda: len(conv.frames) > n + 25, 5)
        actions = [e.get("action") for e in events(conv, "playback")]
        assert not {"duck", "pause", "flush"} & set(actions), _told(conv)
        finals = [e for e in events(conv, "transcript") if e.get("final")]
        assert len(finals) == 1, finals  # only the user's request


async def test_the_user_talking_over_the_television_still_interrupts(
    stack: tuple[Worker, Orchestrator], utterances: dict[str, list[bytes]]
) -> None:
    """The television's speech began first and was judged background; the user's voice, at
    the user's level, comes in over it and stops the reply."""
    tv = [np.frombuffer(f, "<i2").astype(np.float32) * 0.1 for f in utterances[BACKGROUND]]
    user = utterances["Wait, stop, I have another question."]
    late = 50  # the user starts a second into the television's sentence
    mixed = [
        np.clip(
            t + (np.frombuffer(user[i - late], "<i2") if 0 <= i - late < len(user) else 0),
            -32768,
            32767,
        )
        .astype("<i2")
        .tobytes()
        for i, t in enumerate(tv)
    ]
    async with conversation(url(stack), "piper-joe") as conv:
        conv.say(utterances["Please tell me a story."], {})
        assert await conv.wait_for(lambda: len(conv.frames) > 75, 30)
        conv.say(mixed, {})
        paused = await conv.wait_for(
            lambda: any(e.get("action") == "pause" for e in events(conv, "playback")),
            len(mixed) * 0.02 + 5,
        )
        assert paused, _told(conv)
        assert await conv.wait_for(lambda: _heard_said(conv, "question"), 15), _told(conv)


def _heard_said(conv: Conversation, word: str) -> bool:
    """Whether a final transcript (a turn taken) has this word."""
    return any(
        word in str(e.get("text", "")).lower() for e in events(conv, "transcript") if e.get("final")
    )


def _told(conv: Conversation) -> str:
    """What the session said, short enough to read in a failure."""
    start = conv.events[0][0] if conv.events else 0.0
    return "; ".join(
        f"{at - start:.2f} {e['type']} {e.get('action') or e.get('text') or e.get('state')}"
        for at, e in conv.events
        if e["type"] in ("playback", "transcript", "state")
    )
