"""One spoken reply: responder text → TTS worker → paced frames to the client.

Three stages under one TaskGroup: the feeder logs the responder's text, the synthesiser
streams that text to a worker and queues the frames it gets back, and the playout sends them
to the client at real time plus a small lead. PAUSE gates the playout at once and asks the
worker to pause; STOP cancels it all. If the worker dies mid-reply, the synthesiser picks
another one and speaks again from the sentence the listener was in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from duplex.audio.frame import FRAME_SAMPLES, FRAME_SECONDS, PcmFrame
from duplex.audio.pacing import FramePacer
from duplex.errors import first_error, from_status
from duplex.orchestrator.responder import Message, Responder
from duplex.orchestrator.tracing import TurnTrace
from duplex.orchestrator.tts_link import TtsLink, TtsSession
from duplex.rpc.client import Command, TtsClient
from duplex.tasks import TaskSet

log = logging.getLogger(__name__)

# Speech runs at roughly this many characters per second; it maps audio heard back to text.
CHARS_PER_SECOND = 15.0
# Statuses of a worker that failed (or vanished) mid-reply: another worker takes over.
_FAILOVER = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


@dataclass
class TextLog:
    """Reply text as it is generated, readable from any offset by any number of streams."""

    pieces: list[str] = field(default_factory=list)
    done: bool = False
    _grew: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, piece: str) -> None:
        self.pieces.append(piece)
        self._grew.set()

    def finish(self) -> None:
        self.done = True
        self._grew.set()

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    async def follow(self, start: int, prefix: str = "") -> AsyncIterator[tuple[str, bool]]:
        if prefix:
            yield prefix, False
        i = start
        while True:
            while i < len(self.pieces):
                yield self.pieces[i], False
                i += 1
            if self.done:
                yield "", True
                return
            self._grew.clear()
            await self._grew.wait()


class _End:
    pass


@dataclass
class ReplyStats:
    first_frame_at: float | None = None  # monotonic
    last_sent_at: float = 0.0  # monotonic: the last frame handed to the transport
    frames_sent: int = 0
    failovers: int = 0


class Reply:
    def __init__(
        self,
        *,
        link: TtsLink,
        lead_seconds: float,
        send_audio: Callable[[PcmFrame], None],
        on_text: Callable[[str], None],
        on_first_frame: Callable[[], None],
        tasks: TaskSet,
        trace: TurnTrace,
    ) -> None:
        self._tasks = tasks  # the session's: control calls outlive neither it nor this reply
        self._link = link  # the conversation's TTS session, held across replies
        self._lead = lead_seconds
        self._send_audio = send_audio
        self._on_text = on_text
        self._on_first_frame = on_first_frame
        self.trace = trace  # the turn's moments: first token, first frame in and out
        self.text = TextLog()
        self.stats = ReplyStats()
        # The worker runs at most its lead ahead; the bound only guards against one that doesn't.
        self._frames: asyncio.Queue[PcmFrame | _End] = asyncio.Queue(500)
        self._running = asyncio.Event()
        self._running.set()
        self._gain = 1.0  # wanted volume (ducking), reached over the next frame
        self._applied_gain = 1.0
        self._session: TtsSession | None = None  # what this reply speaks with now
        self.stopped = False

    # -- control (called by the session) ---------------------------------------------------

    def duck(self, gain: float) -> None:
        """Play on, quieter (someone speaks over the reply); `duck(1.0)` restores it. The change
        ramps over one frame, so that it does not click."""
        self._gain = gain

    def pause(self) -> None:
        """Silence now: the playout stops before its next frame; the worker is paused too."""
        self._running.clear()
        self._control(Command.PAUSE)

    def resume(self, *, judged: bool = True) -> None:
        """Play on after `pause`; `judged=False` while the interruption is still being heard."""
        if judged:
            self.trace.barge_in_judged("resumed")
        self._control(Command.RESUME)
        self._running.set()

    def _control(self, command: Command) -> None:
        session = self._session
        if session is None:
            return
        # Not awaited: the playout gate already silenced the client; the worker can follow.
        client = self._link.client(session)
        self._tasks.spawn(_control(client, session, command), f"control:{command.name}")

    def heard_seconds(self, unheard: float) -> float:
        """Audio the listener has heard: sent, minus `unheard` (what may still sit in a buffer
        on its way to them)."""
        return max(0.0, self.stats.frames_sent * FRAME_SECONDS - unheard)

    def heard_text(self, complete: bool, unheard: float) -> str:
        """What the listener heard of the text: all of it, or as much as the audio sent, less
        `unheard` (what the transport still held), took to say."""
        text = self.text.text
        if complete:
            return text.strip()
        cut = int(self.heard_seconds(unheard) * CHARS_PER_SECOND)
        if cut >= len(text):
            return text.strip()
        head = text[:cut]
        return (head.rsplit(" ", 1)[0] if " " in head else head).strip()

    # -- the stages ------------------------------------------------------------------------

    async def run(self, responder: Responder, history: list[Message], user_text: str) -> bool:
        """Speak the whole reply; True when it played to the end, False when stopped.

        A stage's own error (busy, worker unavailable, responder failed, ...) is raised as
        itself, not wrapped in the task group's exception group.
        """
        outcome = "failed"
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._feed(responder, history, user_text), name="feed")
                synth = tg.create_task(self._synthesise(), name="synth")
                try:
                    await self._playout()
                finally:
                    synth.cancel()
            outcome = "complete"
        except BaseExceptionGroup as group:
            error = first_error(group)
            if error is None:
                raise
            raise error from None
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self.trace.end("interrupted" if self.stopped else outcome)
        return not self.stopped

    async def stop(self) -> None:
        self.trace.barge_in_judged("confirmed")
        self.stopped = True
        self._running.set()
        session = self._session
        if session is not None:
            with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                async with asyncio.timeout(1):
                    await self._link.client(session).control(session.session_id, Command.STOP)

    async def _feed(self, responder: Responder, history: list[Message], user_text: str) -> None:
        last_sent = 0.0
        try:
            async for piece in responder.respond(history, user_text):
                self.trace.first_token()
                self.text.add(piece)
                # Reply text reaches the client at sentence ends, or at least 4 times a second.
                now = time.monotonic()
                if piece.rstrip().endswith((".", "!", "?", ",")) or now - last_sent > 0.25:
                    last_sent = now
                    self._on_text(self.text.text)
        finally:
            self.text.finish()
        self._on_text(self.text.text)

    async def _synthesise(self) -> None:
        start, prefix = 0, ""
        renewed = False
        session = await self._link.for_reply()
        while True:
            self._session = session
            client = self._link.client(session)
            try:
                async for frame in client.synthesize(
                    session.session_id, self.text.follow(start, prefix)
                ):
                    if frame.frame is not None:
                        self.trace.first_tts_frame()
                        await self._frames.put(frame.frame)
                    if frame.is_final:
                        await self._frames.put(_End())
                        return
                await self._frames.put(_End())  # the worker ended the stream (STOP)
                return
            except grpc.aio.AioRpcError as exc:
                if self.stopped:
                    return
                code = exc.code()
                start, prefix = self._resume_point()
                if code == grpc.StatusCode.NOT_FOUND and not renewed:
                    renewed = True  # once: a session the worker lost is started again
                    session = await self._link.renew(session)
                elif code in _FAILOVER:
                    self.stats.failovers += 1
                    session = await self._link.failover(session, f"{code.name}: {exc.details()}")
                else:
                    raise from_status(code, exc.details() or "") from None

    def _resume_point(self) -> tuple[int, str]:
        """Where a new worker should start: the sentence the listener is in."""
        pieces = self.text.pieces
        text = "".join(pieces)
        heard = min(len(text), int(self.heard_seconds(self._lead) * CHARS_PER_SECOND))
        cut = max(text.rfind(mark, 0, heard) for mark in (". ", "? ", "! "))
        cut = cut + 2 if cut >= 0 else 0
        return len(pieces), text[cut:]

    def _with_gain(self, frame: PcmFrame) -> PcmFrame:
        start, end = self._applied_gain, self._gain
        self._applied_gain = end
        if start == end == 1.0:
            return frame
        ramp = np.linspace(start, end, FRAME_SAMPLES, dtype=np.float32)
        scaled = frame.samples().astype(np.float32) * ramp
        return PcmFrame.from_samples(np.clip(scaled, -32768, 32767).astype(np.int16))

    async def _playout(self) -> None:
        pacer = FramePacer(self._lead)
        while True:
            item = await self._frames.get()
            if isinstance(item, _End):
                # Wait until the client has played what it was sent ahead of time.
                await asyncio.sleep(max(0.0, pacer.played_out_at - time.monotonic()))
                return
            if not self._running.is_set():
                await self._running.wait()
                pacer.restart()
            if self.stopped:
                return
            wait = pacer.due(time.monotonic()) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                if not self._running.is_set():
                    await self._running.wait()
                    pacer.restart()
                if self.stopped:
                    return
            now = time.monotonic()
            pacer.sent(now)
            if self.stats.first_frame_at is None:
                self.stats.first_frame_at = now
                self.trace.first_frame_out(now)
                self._on_first_frame()
            self._send_audio(self._with_gain(item))
            self.stats.last_sent_at = time.monotonic()
            self.stats.frames_sent += 1


async def _control(client: TtsClient, session: TtsSession, command: Command) -> None:
    try:
        await client.control(session.session_id, command)
    except grpc.aio.AioRpcError as exc:  # the stream reports what went wrong with the session
        log.info("%s on %s failed: %s", command.name, session.worker.name, exc.details())
