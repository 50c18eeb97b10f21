"""`duplex bench conversation`: voice-to-voice, barge-in and false barge-in, at the client.

Drives real sessions over WebSocket and, when a LiveKit server is at hand, over WebRTC through
LiveKit (side by side, against the same orchestrator), with utterances synthesised by the
project's own TTS, sent in real time as a microphone would, and times what the client receives:
- voice-to-voice: end of the user's speech → first reply frame with sound received;
- barge-in: onset of interrupting speech in the client's stream → the last reply frame with
  sound before the reply fell silent (for at least `QUIET_SECONDS`);
- false barge-in, backchannels ("uh-huh", "yeah", "right") and background speech (a sentence
  20 dB below the user's level, like a television across the room) during a reply → the longest
  silence the listener heard around it; the reply must go on.
Each run either yields a value or fails with a reason (no reply, a reply that never stops, one
that comes back after a real interruption, ...); failures are counted and printed, never
turned into numbers. The timeline judgements are pure functions, tested on scripted timelines.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from duplex.bench.client import (
    Conversation,
    conversation,
    speech_bounds,
    synthesise_utterances,
    to_frames,
)
from duplex.bench.stats import Series, failure_lines, fmt, series_table, table
from duplex.children import drain
from duplex.clients.talk import SEND_RATE
from duplex.ports import free_ports

QUESTIONS = [
    "What is your name?",
    "Hello there, how are you today?",
    "What time is it?",
    "Can you help me please?",
    "What can you do?",
]
INTERRUPTION = "Wait, stop, I have another question."
LONG_REQUEST = "Please tell me a story."
BACKCHANNELS = ["Uh-huh.", "Yeah.", "Right."]
BACKGROUND = "And in other news tonight, the city council voted to repair the old bridge."

QUIET_SECONDS = 0.6  # a reply with no sound for this long has stopped
REPLY_TIMEOUT = 15.0  # no reply audio this long after a question: the run failed
BARGE_TIMEOUT = 10.0  # reply audio still going this long after an interruption: failed
RESUME_WATCH = 3.0  # after the reply fell silent, watch this long for it coming back
PLAYING_WINDOW = 0.5  # reply audio within this before the onset: the reply was playing

Events = Sequence[tuple[float, dict[str, Any]]]


class Failed(Exception):
    """A run that did not see what it measures; the message says what happened instead."""


# -- judgements on a recorded timeline (pure) -----------------------------------------------


def judge_voice_to_voice(ended: float, audible: Sequence[float], until: float) -> float:
    """End of the question → first reply frame with sound after it."""
    after = [t for t in audible if t > ended]
    if not after:
        raise Failed(f"no reply audio within {until - ended:.0f} s")
    return after[0] - ended


def judge_barge_in(onset: float, audible: Sequence[float], events: Events, until: float) -> float:
    """Onset of the interruption → the last reply frame with sound before the reply stopped.

    The reply must have been playing at the onset, must fall silent for `QUIET_SECONDS`
    before `until`, and must not come back before the interruption's own turn starts.
    """
    before = [t for t in audible if t < onset]
    if not before or before[-1] < onset - PLAYING_WINDOW:
        raise Failed("no reply audio was playing at the onset")
    next_turn = min(
        (at for at, e in events if at > onset and e["type"] == "transcript" and e.get("final")),
        default=float("inf"),
    )
    last = before[-1]
    stopped: float | None = None
    for t in (t for t in audible if t >= onset):
        if t - last >= QUIET_SECONDS:
            stopped = last
            break
        last = t
    if stopped is None:
        if until - last < QUIET_SECONDS:
            raise Failed(f"reply audio still going {until - onset:.1f} s after the onset")
        stopped = last
    if any(stopped < t < next_turn for t in audible):
        raise Failed("the reply came back after a real interruption")
    if any(
        at > onset and e["type"] == "playback" and e.get("action") == "resume" for at, e in events
    ):
        raise Failed("the reply was resumed after a real interruption")
    return max(0.0, stopped - onset)


def judge_false_alarm(sent: float, audible: Sequence[float], events: Events, until: float) -> float:
    """A sound (noise, a backchannel) at `sent` over a reply → the longest silence around it.

    Fails when the reply was not playing, was flushed, or did not come back.
    """
    if any(
        at > sent and e["type"] == "playback" and e.get("action") == "flush" for at, e in events
    ):
        raise Failed("the sound stopped the reply")
    before = [t for t in audible if t <= sent]
    if not before or before[-1] < sent - PLAYING_WINDOW:
        raise Failed("no reply audio was playing when the sound began")
    window = [before[-1], *(t for t in audible if sent < t <= until)]
    if len(window) < 2 or window[-1] < sent + QUIET_SECONDS:
        raise Failed("the reply did not come back after the sound")
    return max(b - a for a, b in itertools.pairwise(window))


# -- live runs ----------------------------------------------------------------------------

Connect = Callable[[], contextlib.AbstractAsyncContextManager[Conversation]]


async def ask(conv: Conversation, frames: list[bytes]) -> float:
    """Say one question and time it: end of speech → first reply frame with sound."""
    _, end = speech_bounds(frames)
    ended: list[float] = []
    conv.say(frames, {end - 1: ended.append})
    n_before = len(conv.audible)
    started = time.monotonic()
    await conv.wait_for(
        lambda: bool(ended) and any(t > ended[0] for t in conv.audible[n_before:]),
        len(frames) * 0.02 + REPLY_TIMEOUT,
    )
    if not ended:
        raise Failed("the question was not sent")
    if any(t < ended[0] for t in conv.audible[n_before:]):
        # It took a pause inside the question for the end of the turn.
        raise Failed("the bot spoke before the question ended")
    # +20 ms: the mark is taken when the last frame of speech is sent, i.e. at its start.
    value = judge_voice_to_voice(ended[0] + 0.02, conv.audible[n_before:], time.monotonic())
    if not await conv.wait_for(lambda: conv.reply_done_after(started), 60):
        raise Failed("the reply never ended")
    return value


async def voice_to_voice(connect: Connect, utt: dict[str, list[bytes]], runs: int) -> Series:
    series = Series("voice-to-voice")
    async with connect() as conv:
        for i in range(runs):
            try:
                series.add(await ask(conv, utt[QUESTIONS[i % len(QUESTIONS)]]))
            except Failed as exc:
                series.fail(str(exc))
            await asyncio.sleep(0.5)
    return series


async def _reply_playing(conv: Conversation, utt: dict[str, list[bytes]], frames: int) -> None:
    conv.say(utt[LONG_REQUEST], {})
    if not await conv.wait_for(lambda: len(conv.audible) > frames, 20):
        raise Failed("the story never started")


async def _settle(conv: Conversation, since: float) -> float:
    """Watch the reply after `since` until it has been silent for QUIET_SECONDS, then a while
    longer for it coming back (until the next turn's transcript); returns when watching ended."""
    deadline = since + BARGE_TIMEOUT
    while (now := time.monotonic()) < deadline:
        last = max(conv.audible[-1] if conv.audible else 0.0, since)
        if now - last >= QUIET_SECONDS:
            n = len(conv.audible)
            await conv.wait_for(
                lambda: (
                    len(conv.audible) > n
                    or any(
                        at > since and e["type"] == "transcript" and e.get("final")
                        for at, e in conv.events
                    )
                ),
                min(RESUME_WATCH, deadline - now),
            )
            return time.monotonic()
        n = len(conv.audible)
        await conv.wait_for(lambda: len(conv.audible) > n, QUIET_SECONDS - (now - last))
    return time.monotonic()


async def barge_in(connect: Connect, utt: dict[str, list[bytes]], runs: int) -> Series:
    series = Series("barge-in")
    for _ in range(runs):
        async with connect() as conv:
            try:
                await _reply_playing(conv, utt, 100)  # 2 s into the reply
                frames = utt[INTERRUPTION]
                start, _ = speech_bounds(frames)
                onset: list[float] = []
                conv.say(frames, {start: onset.append})
                await conv.wait_for(lambda: bool(onset), 5)
                if not onset:
                    raise Failed("the interruption was not sent")
                until = await _settle(conv, onset[0])
                series.add(judge_barge_in(onset[0], conv.audible, conv.events, until))
            except Failed as exc:
                series.fail(str(exc))
    return series


async def false_barge_in(connect: Connect, utt: dict[str, list[bytes]], runs: int) -> Series:
    """A 200 ms noise burst over the reply."""
    rng = np.random.default_rng(3)
    bursts = [
        to_frames(rng.normal(0, 0.1, int(0.2 * SEND_RATE)).astype(np.float32)) for _ in range(runs)
    ]
    return await _over_the_reply(connect, utt, "false barge-in: longest silence", bursts)


async def backchannel(connect: Connect, utt: dict[str, list[bytes]], runs: int) -> Series:
    """ "Uh-huh", "Yeah", "Right" said over the reply: a listener keeps talking through them."""
    said = [utt[BACKCHANNELS[i % len(BACKCHANNELS)]] for i in range(runs)]
    return await _over_the_reply(connect, utt, "backchannel: longest silence", said)


async def background(connect: Connect, utt: dict[str, list[bytes]], runs: int) -> Series:
    """Speech not meant for the bot (a television across the room: 20 dB below the user)."""
    quiet = [_scaled(utt[BACKGROUND], 0.1)] * runs
    return await _over_the_reply(connect, utt, "background speech: longest silence", quiet)


def _scaled(frames: list[bytes], gain: float) -> list[bytes]:
    return [
        (np.frombuffer(f, "<i2").astype(np.float32) * gain).astype("<i2").tobytes() for f in frames
    ]


async def _over_the_reply(
    connect: Connect, utt: dict[str, list[bytes]], name: str, sounds: list[list[bytes]]
) -> Series:
    """The longest silence the listener hears around each sound said over a playing reply;
    a reply stopped (flushed) or not back is a failure."""
    series = Series(name)
    for frames in sounds:
        async with connect() as conv:
            try:
                await _reply_playing(conv, utt, 75)
                start, _ = speech_bounds(frames)
                sent: list[float] = []
                conv.say(frames, {start: sent.append})
                await conv.wait_for(lambda: bool(sent), 5)
                if not sent:
                    raise Failed("the sound was not sent")
                await asyncio.sleep(len(frames) * 0.02 + RESUME_WATCH)
                series.add(judge_false_alarm(sent[0], conv.audible, conv.events, time.monotonic()))
            except Failed as exc:
                series.fail(str(exc))
    return series


async def load(
    url: str,
    model: str,
    utt: dict[str, list[bytes]],
    n: int,
    questions: int,
    api_key: str | None = None,
) -> Load:
    """`n` spoken conversations at once over the WebSocket, each asking `questions` questions
    in turn. A conversation refused as busy fails every question it would have asked."""
    result = Load(n, Series(f"{n} at once: voice-to-voice"))

    async def one(i: int) -> None:
        done = 0  # questions with an outcome, a number or a failure
        try:
            async with conversation(url, model, api_key) as conv:
                await conv.wait_for(
                    lambda: any(e["type"] in ("session.started", "error") for _, e in conv.events),
                    30,
                )
                refusal = [e for _, e in conv.events if e["type"] == "error"]
                if refusal or not conv.events:
                    result.refused += 1
                    why = refusal[0].get("code", "error") if refusal else "no answer"
                    for _ in range(questions):
                        result.v2v.fail(f"conversation refused ({why})")
                    done = questions
                    return
                for q in range(questions):
                    try:
                        question = utt[QUESTIONS[(i + q) % len(QUESTIONS)]]
                        result.v2v.add(await ask(conv, question))
                    except Failed as exc:
                        result.v2v.fail(str(exc))
                    done += 1
        except Exception as exc:  # boundary: a connection that broke fails its run, not the bench
            why = f"connection failed: {type(exc).__name__}: {exc}"
            for _ in range(questions - done):
                result.v2v.fail(why)

    await asyncio.gather(*(one(i) for i in range(n)))
    return result


@dataclass
class Load:
    sessions: int
    v2v: Series
    refused: int = 0

    @property
    def ok(self) -> bool:
        p95 = self.v2v.summary()["p95"]
        return not self.v2v.failures and p95 is not None and p95 < 1.0

    def summary(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "refused": self.refused, **self.v2v.summary()}


def render_load(loads: list[Load]) -> str:
    rows = [
        [
            str(x.sessions),
            str(x.refused),
            str(x.v2v.n),
            str(len(x.v2v.failures)),
            *(fmt(x.v2v.summary()[k], "ms") for k in ("p50", "p95", "max")),
        ]
        for x in loads
    ]
    best = max((x.sessions for x in loads if x.ok), default=None)
    lines = [
        table(["at once", "refused", "questions", "failed", "v2v p50", "p95", "max"], rows),
        "(voice-to-voice in ms at the client; failed questions include those of refused"
        " conversations)",
        f"largest N with no failures and v2v p95 < 1 s: {best if best is not None else 'none'}",
    ]
    failed = failure_lines([x.v2v for x in loads])
    if failed:
        lines += ["failed runs:", *failed]
    return "\n".join(lines)


@dataclass(frozen=True)
class Demo:
    url: str  # ws://127.0.0.1:PORT/ws
    pid: int


@contextlib.contextmanager
def demo_process(model: str, livekit: bool, llm: str | None = None) -> Iterator[Demo]:
    """`duplex demo` in a process of its own, on a free port, until the block ends."""
    import subprocess

    (port,) = free_ports(1)
    args = [sys.executable, "-m", "duplex.cli", "demo", "--port", str(port), "--model", model]
    args += ["--livekit"] if livekit else []
    args += ["--llm", llm] if llm else []
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    output: collections.deque[str] = collections.deque()
    try:
        for line in proc.stdout:
            if "duplex demo ready" in line:
                break
        else:
            raise RuntimeError(f"demo exited with {proc.wait()}")
        output = drain(proc.stdout)  # its log goes on for as long as the bench runs
        yield Demo(f"ws://127.0.0.1:{port}/ws", proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            tail = "".join(list(output)[-20:])
            print(f"the demo took more than 20 s to stop; its last lines:\n{tail}", file=sys.stderr)


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
    utt = await synthesise_utterances(
        [*QUESTIONS, INTERRUPTION, LONG_REQUEST, *BACKCHANNELS, BACKGROUND], "piper-joe"
    )
    if opts.sessions:
        return await _run_load(opts, utt)
    results: dict[str, list[Series]] = {}
    with contextlib.ExitStack() as stack:
        url = opts.url or stack.enter_context(demo_process(opts.model, want_livekit, opts.llm)).url
        http = "http" + url.removeprefix("ws").removesuffix("/ws")
        connects: list[tuple[str, Connect]] = []
        if "websocket" in transports:
            connects.append(("websocket", lambda: conversation(url, opts.model, opts.api_key)))
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
            false_alarm = await false_barge_in(connect, utt, opts.runs)
            print(f"· {name}: backchannels and background speech", file=sys.stderr, flush=True)
            listening = await backchannel(connect, utt, opts.runs)
            tv = await background(connect, utt, opts.runs)
            results[name] = [v2v, barge, false_alarm, listening, tv]
    failed = False
    for name, series in results.items():
        print(series_table(series, f"{name} (ms, at the receiving client)"))
        lines = failure_lines(series)
        if lines:
            failed = True
            print("failed runs:", *lines, sep="\n")
        print()
    if opts.plot:
        from duplex.bench.plot import plot_series

        named = [
            Series(f"{name}: {s.name}", s.unit, s.values, s.failures)
            for name, v in results.items()
            for s in v
        ]
        plot_series(opts.plot, "duplex bench conversation (at the receiving client)", named)
    if opts.json:
        text = json.dumps(
            {"conversation": {k: [s.summary() for s in v] for k, v in results.items()}}, indent=2
        )
        await asyncio.to_thread(Path(opts.json).write_text, text)
    return 1 if failed else 0


async def _run_load(opts: argparse.Namespace, utt: dict[str, list[bytes]]) -> int:
    levels = [int(n) for n in opts.sessions.split(",") if n.strip()]
    loads = []
    with contextlib.ExitStack() as stack:
        url = opts.url or stack.enter_context(demo_process(opts.model, False, opts.llm)).url
        for n in levels:
            print(f"· {n} conversations at once", file=sys.stderr, flush=True)
            loads.append(await load(url, opts.model, utt, n, opts.questions, opts.api_key))
            await asyncio.sleep(2)  # let the last conversations' sessions end
    print(render_load(loads))
    if opts.plot:
        from duplex.bench.plot import plot_series

        plot_series(opts.plot, "duplex bench conversation --sessions", [x.v2v for x in loads])
    if opts.json:
        text = json.dumps({"load": [x.summary() for x in loads]}, indent=2)
        await asyncio.to_thread(Path(opts.json).write_text, text)
    return 0 if all(not x.v2v.failures for x in loads) else 1
