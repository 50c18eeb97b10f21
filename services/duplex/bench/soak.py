"""`duplex bench soak`: many spoken conversations with interruptions, for minutes, over the
WebSocket; what breaks slowly (lost or late frames, errors, memory) shows minute by minute.

Each conversation loops until the time is up: mostly questions, and now and then a story
that it interrupts. It counts per minute:
- lost frames: a finished reply says how many frames it sent (`frames` on its final `reply`
  event); fewer arriving between its start and that event were lost on the way;
- late frames: frames that arrived after the listener should already have played them (the
  client's schedule with the orchestrator's 80 ms lead), i.e. gaps the listener hears;
- voice-to-voice of every question (p95), errors (error events, closed sockets, replies that
  never came or an interruption that was not honoured);
- the orchestrator's RSS at the end of each minute (the process this bench starts, or
  `--pid`), and its growth after the first minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from duplex.audio.pacing import FramePacer
from duplex.bench.client import Conversation, conversation, synthesise_utterances
from duplex.bench.conversation import (
    INTERRUPTION,
    LONG_REQUEST,
    QUESTIONS,
    Failed,
    ask,
    demo_process,
)
from duplex.bench.stats import Series, fmt, table

CLIENT_LEAD = 0.08  # the orchestrator's client_lead_ms: the listener's cushion


@dataclass
class Minute:
    v2v: Series = field(default_factory=lambda: Series("v2v"))
    lost: int = 0
    late: int = 0
    frames: int = 0
    errors: list[str] = field(default_factory=list)
    rss_mib: float | None = None


@dataclass
class Soak:
    started: float
    minutes: dict[int, Minute] = field(default_factory=lambda: defaultdict(Minute))

    def now(self) -> Minute:
        return self.minutes[int((time.monotonic() - self.started) // 60)]


def lost_and_late(arrivals: list[float], sent: int) -> tuple[int, int]:
    """Of one reply: frames that never came (it said it sent `sent`), and frames that came
    after their playout time on the listener's schedule."""
    pacer = FramePacer(CLIENT_LEAD)
    late = sum(pacer.sent(at).underrun for at in arrivals)
    return max(0, sent - len(arrivals)), late


class _Replies:
    """Splits a conversation's frames into replies at the events that end them."""

    def __init__(self, conv: Conversation) -> None:
        self._conv = conv
        self._frames_seen = 0
        self._events_seen = 0

    def drain(self) -> tuple[list[tuple[list[float], dict[str, Any]]], list[dict[str, Any]]]:
        """Since the last call: the replies that ended (their frames' arrival times and final
        event) and the error events. An interrupted reply's frames (up to its flush) are left
        out: they were cut on purpose."""
        replies, errors = [], []
        frames = self._conv.frames
        for at, event in self._conv.events[self._events_seen :]:
            self._events_seen += 1
            end = next(
                (i for i in range(self._frames_seen, len(frames)) if frames[i] > at), len(frames)
            )
            if event["type"] == "reply" and event.get("final"):
                replies.append((frames[self._frames_seen : end], event))
                self._frames_seen = end
            elif event["type"] == "playback" and event.get("action") == "flush":
                self._frames_seen = end
            elif event["type"] == "error":
                errors.append(event)
        return replies, errors


async def _converse(
    url: str, model: str, utt: dict[str, list[bytes]], soak: Soak, until: float, seed: int
) -> None:
    rng = random.Random(seed)
    try:
        async with conversation(url, model) as conv:
            replies = _Replies(conv)
            turn = 0
            while time.monotonic() < until:
                minute = soak.now()
                try:
                    if turn % 3 == 2:
                        await _interrupt(conv, utt)
                    else:
                        minute.v2v.add(await ask(conv, utt[QUESTIONS[rng.randrange(5)]]))
                except Failed as exc:
                    minute.errors.append(str(exc))
                finished, errors = replies.drain()
                for arrivals, event in finished:
                    lost, late = lost_and_late(arrivals, int(event.get("frames", 0)))
                    minute.lost += lost
                    minute.late += late
                    minute.frames += len(arrivals)
                minute.errors += [f"error event: {e.get('code')}" for e in errors]
                turn += 1
                await asyncio.sleep(rng.uniform(0.5, 1.5))
    except (OSError, RuntimeError) as exc:  # the socket closed under the conversation
        soak.now().errors.append(f"connection lost: {exc}")


async def _interrupt(conv: Conversation, utt: dict[str, list[bytes]]) -> None:
    conv.say(utt[LONG_REQUEST], {})
    n = len(conv.audible)
    if not await conv.wait_for(lambda: len(conv.audible) > n + 60, 30):
        raise Failed("the story never started")
    flushes = sum(1 for _, e in conv.events if e.get("action") == "flush")
    frames = utt[INTERRUPTION]
    conv.say(frames, {})
    if not await conv.wait_for(
        lambda: sum(1 for _, e in conv.events if e.get("action") == "flush") > flushes,
        len(frames) * 0.02 + 10,
    ):
        raise Failed("an interruption was not honoured")
    started = time.monotonic()
    if not await conv.wait_for(lambda: conv.reply_done_after(started), 30):
        raise Failed("the interruption got no reply")


async def _rss_sampler(pid: int | None, soak: Soak, until: float) -> None:
    while time.monotonic() < until + 1:
        minute = soak.now()
        if pid is not None:
            with contextlib.suppress(OSError, ValueError):
                status = await asyncio.to_thread(Path(f"/proc/{pid}/status").read_text)
                rss = next(line for line in status.splitlines() if line.startswith("VmRSS"))
                minute.rss_mib = int(rss.split()[1]) / 1024
        await asyncio.sleep(5)


def render(soak: Soak, sessions: int, minutes: float) -> str:
    rows = []
    # The last turns finish after the time is up: counted in the last minute, not a new one.
    last = max(0, math.ceil(minutes) - 1)
    for index in sorted(soak.minutes):
        if index > last:
            tail = soak.minutes.pop(index)
            soak.minutes[last].lost += tail.lost
            soak.minutes[last].late += tail.late
            soak.minutes[last].frames += tail.frames
            soak.minutes[last].errors += tail.errors
            soak.minutes[last].v2v.extend(tail.v2v)
    for index in sorted(soak.minutes):
        m = soak.minutes[index]
        summary = m.v2v.summary()
        rows.append(
            [
                str(index + 1),
                str(m.v2v.n),
                fmt(summary["p95"], "ms"),
                str(m.frames),
                str(m.lost),
                str(m.late),
                str(len(m.errors)),
                "—" if m.rss_mib is None else f"{m.rss_mib:.0f}",
            ]
        )
    lines = [
        f"soak: {sessions} conversations at once over the WebSocket",
        table(
            ["minute", "questions", "v2v p95", "frames", "lost", "late", "errors", "RSS MiB"],
            rows,
        ),
    ]
    rss = [m.rss_mib for _, m in sorted(soak.minutes.items()) if m.rss_mib is not None]
    if len(rss) >= 2:
        growth = (rss[-1] - rss[0]) / rss[0] * 100
        lines.append(
            f"RSS after the first minute: {rss[0]:.0f} → {rss[-1]:.0f} MiB ({growth:+.1f} %)"
        )
    errors = [e for m in soak.minutes.values() for e in m.errors]
    if errors:
        counts: dict[str, int] = defaultdict(int)
        for e in errors:
            counts[e] += 1
        lines += ["errors:", *(f"  {n} × {why}" for why, n in sorted(counts.items()))]
    return "\n".join(lines)


async def run_soak_bench(opts: argparse.Namespace) -> int:
    print("· synthesising utterances", file=sys.stderr, flush=True)
    utt = await synthesise_utterances([*QUESTIONS, INTERRUPTION, LONG_REQUEST], "piper-joe")
    with contextlib.ExitStack() as stack:
        if opts.url:
            url, pid = opts.url, opts.pid
        else:
            demo = stack.enter_context(demo_process(opts.model, False, "offline"))
            url, pid = demo.url, demo.pid
        soak = Soak(time.monotonic())
        until = soak.started + opts.minutes * 60
        print(
            f"· {opts.sessions} conversations for {opts.minutes} min", file=sys.stderr, flush=True
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_rss_sampler(pid, soak, until))
            for i in range(opts.sessions):
                tg.create_task(_converse(url, opts.model, utt, soak, until, seed=i))
                await asyncio.sleep(0.3)  # staggered, as people arrive
    print(render(soak, opts.sessions, opts.minutes))
    if opts.plot:
        from duplex.bench.plot import plot_series

        minutes = [
            Series(f"minute {k + 1}: v2v", m.v2v.unit, m.v2v.values, m.v2v.failures)
            for k, m in sorted(soak.minutes.items())
        ]
        plot_series(opts.plot, f"duplex bench soak: {opts.sessions} conversations", minutes)
    if opts.json:
        data = {
            str(k + 1): {
                "v2v": m.v2v.summary(),
                "frames": m.frames,
                "lost": m.lost,
                "late": m.late,
                "errors": m.errors,
                "rss_mib": m.rss_mib,
            }
            for k, m in sorted(soak.minutes.items())
        }
        opts.json.write_text(json.dumps({"soak": data}, indent=2))
    bad = any(m.lost or m.errors for m in soak.minutes.values())
    return 1 if bad else 0
