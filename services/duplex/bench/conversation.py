"""`duplex bench conversation`: voice-to-voice, barge-in and false barge-in, at the client.

Drives real sessions over WebSocket and, when a LiveKit server is at hand, over WebRTC through
LiveKit (side by side, against the same orchestrator), with utterances synthesised by the
project's own TTS, sent in real time as a microphone would, and times what the client receives:
- voice-to-voice: end of the user's speech → first reply frame with sound received;
- barge-in: onset of interrupting speech in the client's stream → last reply frame with sound
  received;
- false barge-in recovery: a 200 ms noise burst during a reply → the reply goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from duplex.bench.stats import ms, p50_p95, table
from duplex.clients.talk import SEND_RATE, SEND_SAMPLES

QUESTIONS = [
    "What is your name?",
    "Hello there, how are you today?",
    "What time is it?",
    "Can you help me please?",
    "What can you do?",
]
INTERRUPTION = "Wait, stop, I have another question."
LONG_REQUEST = "Please tell me a story."
SILENCE = bytes(SEND_SAMPLES * 2)
_AUDIBLE = 64  # peak sample value: above dither and codec noise, far below speech


def is_audible(pcm: bytes) -> bool:
    samples = np.frombuffer(pcm, "<i2")
    return bool(samples.size) and int(np.abs(samples).max()) > _AUDIBLE


def _frames(pcm16k: np.ndarray) -> list[bytes]:
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
            out[text] = _frames(soxr.resample(pcm, 48000, SEND_RATE).astype(np.float32))
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
async def conversation(url: str, model: str) -> AsyncIterator[Conversation]:
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
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


Connect = Callable[[], contextlib.AbstractAsyncContextManager[Conversation]]


async def voice_to_voice(connect: Connect, utt: dict[str, list[bytes]], runs: int) -> list[float]:
    out = []
    async with connect() as conv:
        for i in range(runs):
            frames = utt[QUESTIONS[i % len(QUESTIONS)]]
            _, end = speech_bounds(frames)
            ended: list[float] = []
            conv.say(frames, {end - 1: ended.append})
            n_before = len(conv.audible)
            started = time.monotonic()
            await conv.wait_for(lambda: len(conv.audible) > n_before, 15)
            if len(conv.audible) > n_before and ended:
                out.append(conv.audible[n_before] - ended[0] - 0.02)
            await conv.wait_for(lambda: conv.reply_done_after(started), 30)
            await asyncio.sleep(0.5)
    return out


async def barge_in(connect: Connect, utt: dict[str, list[bytes]], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        async with connect() as conv:
            conv.say(utt[LONG_REQUEST], {})
            await conv.wait_for(lambda: len(conv.frames) > 100, 20)  # 2 s into the reply
            frames = utt[INTERRUPTION]
            start, _ = speech_bounds(frames)
            onset: list[float] = []
            conv.say(frames, {start: onset.append})
            await conv.wait_for(lambda: bool(onset), 5)
            await asyncio.sleep(1.0)  # let anything still in flight arrive
            after = [t for t in conv.audible if t <= onset[0] + 0.5]
            out.append(max(0.0, after[-1] - onset[0]) if after else 0.0)
    return out


async def false_barge_in(connect: Connect, utt: dict[str, list[bytes]], runs: int) -> list[bool]:
    rng = np.random.default_rng(3)
    out = []
    for _ in range(runs):
        async with connect() as conv:
            conv.say(utt[LONG_REQUEST], {})
            await conv.wait_for(lambda: len(conv.frames) > 75, 20)
            noise = (rng.normal(0, 0.1, int(0.2 * SEND_RATE))).astype(np.float32)
            sent: list[float] = []
            conv.say(_frames(noise), {0: sent.append})
            await conv.wait_for(lambda: bool(sent), 5)
            await asyncio.sleep(2.5)
            flushed = any(
                e["type"] == "playback" and e["action"] == "flush" for _, e in conv.events
            )
            still = [t for t in conv.audible if t > sent[0] + 1.5]
            out.append(not flushed and bool(still))
    return out


@contextlib.contextmanager
def _demo_process(model: str, livekit: bool) -> Any:
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [sys.executable, "-m", "duplex.cli", "demo", "--port", str(port), "--model", model]
    proc = subprocess.Popen(
        args + (["--livekit"] if livekit else []),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "ready" in line:
                break
        else:
            raise RuntimeError(f"demo exited with {proc.wait()}")
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout:
            proc.stdout.close()


def _livekit_connect(http: str, model: str) -> Connect:
    from duplex.bench.livekit_client import join

    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[Conversation]:
        async with join(http, model=model) as conv:
            # Joining, dispatch and subscription take a moment: measure from a live call.
            await conv.wait_for(lambda: any(e["type"] == "state" for _, e in conv.events), 30)
            yield conv

    return connect


async def _livekit_available(http: str) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{http}/api/livekit/token", json={}) as resp,
        ):
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def run_conversation_bench(opts: argparse.Namespace) -> int:
    from duplex.livekit_server import find_binary

    transports = [t.strip() for t in opts.transports.split(",") if t.strip()]
    unknown = set(transports) - {"websocket", "livekit"}
    if unknown:
        print(
            f"unknown transport {', '.join(sorted(unknown))}: websocket, livekit", file=sys.stderr
        )
        return 2
    want_livekit = "livekit" in transports
    if want_livekit and not opts.url and find_binary() is None:
        print("· no livekit-server binary: measuring the WebSocket only", file=sys.stderr)
        want_livekit = False
    print("· synthesising utterances", file=sys.stderr, flush=True)
    utt = await synthesise_utterances([*QUESTIONS, INTERRUPTION, LONG_REQUEST], "piper-joe")
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        url = opts.url or stack.enter_context(_demo_process(opts.model, want_livekit))
        http = "http" + url.removeprefix("ws").removesuffix("/ws")
        connects: list[tuple[str, Connect]] = []
        if "websocket" in transports:
            connects.append(("websocket", lambda: conversation(url, opts.model)))
        if want_livekit:
            if await _livekit_available(http):
                connects.append(("livekit", _livekit_connect(http, opts.model)))
            else:
                print("· the orchestrator has no LiveKit configured", file=sys.stderr)
        for name, connect in connects:
            print(f"· {name}: voice-to-voice", file=sys.stderr, flush=True)
            v2v = await voice_to_voice(connect, utt, opts.runs)
            print(f"· {name}: barge-in", file=sys.stderr, flush=True)
            barge = await barge_in(connect, utt, opts.runs)
            print(f"· {name}: false barge-in", file=sys.stderr, flush=True)
            recovered = await false_barge_in(connect, utt, opts.runs)
            rows.append(
                {
                    "transport": name,
                    "voice_to_voice_s": p50_p95(v2v),
                    "barge_in_s": p50_p95(barge),
                    "false_barge_in_recovery": sum(recovered) / max(1, len(recovered)),
                    "runs": opts.runs,
                }
            )
    print(
        table(
            ["transport", "v2v p50", "v2v p95", "barge-in p50", "barge-in p95", "recovery"],
            [
                [
                    r["transport"],
                    ms(r["voice_to_voice_s"]["p50"]),
                    ms(r["voice_to_voice_s"]["p95"]),
                    ms(r["barge_in_s"]["p50"]),
                    ms(r["barge_in_s"]["p95"]),
                    f"{r['false_barge_in_recovery'] * 100:.0f} %",
                ]
                for r in rows
            ],
        )
        + "\n(ms, at the receiving client; recovery = 200 ms noise bursts after which the reply"
        " went on)"
    )
    if opts.json:
        text = json.dumps({"conversation": rows}, indent=2)
        await asyncio.to_thread(Path(opts.json).write_text, text)
    return 0
