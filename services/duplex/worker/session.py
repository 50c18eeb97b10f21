"""One synthesis session: text pieces in, paced 20 ms frames out, obeying PAUSE/RESUME/STOP.

Three stages run per stream, each owned by `SynthesisSession.run`:
reader (text → speakable units) → synthesiser (units → frames, into a bounded buffer)
→ emitter (buffer → wire, paced, gated by PAUSE). The buffer lets synthesis run ahead of real
time by at most `buffer_seconds`; the emitter checks the pause gate before every frame, so
PAUSE stops emission within one frame and RESUME continues with the next buffered frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from duplex.audio.frame import FRAME_SECONDS, PcmFrame
from duplex.audio.framer import FrameEncoder
from duplex.audio.pacing import FramePacer
from duplex.errors import InvalidInput, SynthesisFailed, first_error
from duplex.text import TextChunker
from duplex.worker.adapters.base import NativeAudio
from duplex.worker.metrics import WorkerMetrics
from duplex.worker.model_manager import ModelLease, ModelManager


@dataclass(frozen=True, slots=True)
class TextPiece:
    text: str
    is_final: bool = False


@dataclass(frozen=True, slots=True)
class OutFrame:
    """A frame for the wire; `frame is None` only on an end-of-utterance marker."""

    sequence: int
    frame: PcmFrame | None
    is_final: bool


@dataclass(frozen=True)
class SessionOptions:
    voice: str | None = None
    speed: float = 1.0
    pacing: Literal["realtime", "none"] = "realtime"
    lead_seconds: float = 0.06

    @classmethod
    def parse(
        cls, options: Mapping[str, str], *, default_pacing: str, default_lead_ms: int
    ) -> SessionOptions:
        known = {"voice", "speed", "pacing", "lead_ms", "language"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidInput(
                f"unknown session option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        try:
            speed = float(options.get("speed", "1.0"))
            lead_ms = int(options.get("lead_ms", str(default_lead_ms)))
        except ValueError as exc:
            raise InvalidInput(f"bad session option: {exc}") from None
        if not 0.25 <= speed <= 4.0:
            raise InvalidInput(f"speed must be within 0.25–4.0, got {speed}")
        if not 0 <= lead_ms <= 2000:
            raise InvalidInput(f"lead_ms must be within 0–2000, got {lead_ms}")
        pacing = options.get("pacing", default_pacing)
        if pacing not in ("realtime", "none"):
            raise InvalidInput(f"pacing must be 'realtime' or 'none', got {pacing!r}")
        return cls(options.get("voice") or None, speed, pacing, lead_ms / 1000)  # type: ignore[arg-type]


_MAX_UNITS = 256  # speakable units (clauses) queued ahead of synthesis


class _UtteranceStart:
    __slots__ = ("t0",)

    def __init__(self, t0: float) -> None:
        self.t0 = t0


class _EndUtterance:
    pass


class _EndStream:
    pass


_END_UTTERANCE = _EndUtterance()
_END_STREAM = _EndStream()
_Unit = str | _UtteranceStart | _EndUtterance | _EndStream
_Item = PcmFrame | _UtteranceStart | _EndUtterance | _EndStream


class SynthesisSession:
    def __init__(
        self,
        session_id: str,
        lease: ModelLease,
        manager: ModelManager,
        options: SessionOptions,
        metrics: WorkerMetrics,
        *,
        owner: str = "",
        buffer_seconds: float = 5.0,
        max_text_chars: int = 65536,
    ) -> None:
        self.session_id = session_id
        self.lease = lease
        self.options = options
        self.voice = lease.model.adapter.check_voice(
            lease.model.spec.voice_or_default(options.voice)
        )
        self.owner = owner
        self._manager = manager
        self._metrics = metrics
        self._max_frames = max(1, int(buffer_seconds / FRAME_SECONDS))
        self._max_text_chars = max_text_chars
        self._sequence = 0
        self._running = asyncio.Event()  # cleared while paused
        self._running.set()
        self._paused_at: float | None = None
        self._last_sent_at = 0.0  # monotonic time the last data frame went out
        self._frames: asyncio.Queue[_Item] | None = None
        self._stop_requested = False
        self.streaming = False
        self.idle_since = time.monotonic()

    @property
    def model_id(self) -> str:
        return self.lease.model.model_id

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def touch(self) -> None:
        """The client showed it still wants this session (any call on it)."""
        self.idle_since = time.monotonic()

    def queue_depth(self) -> int:
        return self._frames.qsize() if self._frames else 0

    # -- control -------------------------------------------------------------------------

    def pause(self) -> None:
        if self._running.is_set():
            self._paused_at = time.monotonic()
            self._running.clear()

    def resume(self) -> None:
        self._observe_pause()
        self._running.set()

    def stop(self) -> None:
        """Drop what is buffered and end the current stream with a final marker."""
        self._stop_requested = True
        frames = self._frames
        if frames is not None:
            while not frames.empty():
                frames.get_nowait()
            frames.put_nowait(_END_STREAM)
        self._running.set()

    # -- the stream ----------------------------------------------------------------------

    async def run(
        self, pieces: AsyncIterator[TextPiece], send: Callable[[OutFrame], Awaitable[None]]
    ) -> None:
        # Bounded: text that arrives faster than it is spoken waits in the client's stream
        # (HTTP/2 flow control), not in this process's memory.
        units: asyncio.Queue[_Unit] = asyncio.Queue(_MAX_UNITS)
        self._frames = asyncio.Queue(self._max_frames)
        self._stop_requested = False
        self.streaming = True
        try:
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self._read(pieces, units), name="reader")
                synth = tg.create_task(self._synthesise(units, self._frames), name="synth")
                try:
                    await self._emit(self._frames, send)
                finally:
                    reader.cancel()
                    synth.cancel()
        except BaseExceptionGroup as group:
            # Surface a stage's own error (bad input, failed synthesis) rather than the group.
            error = first_error(group)
            if error is None:
                raise
            raise error from None
        finally:
            self.streaming = False
            self._frames = None
            self.idle_since = time.monotonic()
            self._metrics.queue_depth.set(0)

    async def _read(self, pieces: AsyncIterator[TextPiece], units: asyncio.Queue[_Unit]) -> None:
        chunker = TextChunker()
        open_utterance = False
        async for piece in pieces:
            if len(piece.text) > self._max_text_chars:
                raise InvalidInput(
                    f"text chunk of {len(piece.text)} characters exceeds the limit of "
                    f"{self._max_text_chars}; send long text in several chunks"
                )
            if piece.text and not open_utterance:
                open_utterance = True
                await units.put(_UtteranceStart(time.monotonic()))
            for unit in chunker.push(piece.text):
                await units.put(unit)
            if piece.is_final:
                for unit in chunker.flush():
                    await units.put(unit)
                await units.put(_END_UTTERANCE)
                open_utterance = False
        if open_utterance:  # the client half-closed without is_final: finish what it sent
            for unit in chunker.flush():
                await units.put(unit)
            await units.put(_END_UTTERANCE)
        await units.put(_END_STREAM)

    async def _synthesise(self, units: asyncio.Queue[_Unit], frames: asyncio.Queue[_Item]) -> None:
        while True:
            unit = await units.get()
            if isinstance(unit, str):
                await self._synthesise_unit(unit, frames)
                continue
            await frames.put(unit)
            if unit is _END_STREAM:
                return

    async def _synthesise_unit(self, text: str, frames: asyncio.Queue[_Item]) -> None:
        model = self.lease.model
        adapter = model.adapter
        encoder = FrameEncoder(adapter.native_rate, model.gain)
        chunks: Iterator[NativeAudio] = adapter.synthesize(text, self.voice, self.options.speed)

        def next_chunk() -> NativeAudio | None:
            lock = contextlib.nullcontext() if adapter.thread_safe else adapter.lock
            with lock:
                return next(chunks, None)

        started = time.monotonic()
        produced = 0
        loop = asyncio.get_running_loop()
        threads = self._manager.executor(adapter.device)
        # As asyncio.to_thread does: the model's own log lines keep the session's ids.
        context = contextvars.copy_context()
        while True:
            try:
                chunk = await loop.run_in_executor(threads, context.run, next_chunk)
            except Exception as exc:  # boundary: the model's inference failed on this text
                raise SynthesisFailed(
                    f"model {model.model_id!r} failed on {text[:40]!r}: {exc}"
                ) from exc
            out = encoder.push(chunk) if chunk is not None else encoder.end_unit()
            for frame in out:
                await frames.put(frame)
            produced += len(out)
            self._metrics.queue_depth.set(frames.qsize())
            if chunk is None:
                break
        self._manager.touch(model)
        if produced:
            self._metrics.observe_rtf(
                model.model_id, (time.monotonic() - started) / (produced * FRAME_SECONDS)
            )

    async def _emit(
        self, frames: asyncio.Queue[_Item], send: Callable[[OutFrame], Awaitable[None]]
    ) -> None:
        pacer = FramePacer(self.options.lead_seconds) if self.options.pacing == "realtime" else None
        utterance_t0: float | None = None
        model_id = self.model_id
        while True:
            # An empty buffer when a frame is wanted: if it then goes out late, the text or the
            # synthesis did not keep up (not the sending).
            starved = frames.empty()
            item = await frames.get()
            if isinstance(item, _UtteranceStart):
                utterance_t0 = item.t0
                if pacer is not None:
                    pacer.restart()  # a new utterance plays from its first frame
                continue
            if isinstance(item, _EndStream):
                if self._stop_requested:
                    await send(OutFrame(self._next_sequence(), None, True))
                return
            if not self._running.is_set():
                await self._wait_resumed()
                if pacer is not None:
                    pacer.restart()  # after a pause, pace from now: nothing is replayed
                if self._stop_requested:
                    continue  # the stop marker is next in the (cleared) buffer
            if isinstance(item, _EndUtterance):
                await send(OutFrame(self._next_sequence(), None, True))
                continue
            if pacer is not None:
                wait = pacer.due(time.monotonic()) - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    if not self._running.is_set() or self._stop_requested:
                        await self._wait_resumed()
                        pacer.restart()
                        if self._stop_requested:
                            continue
                late = pacer.sent(time.monotonic())
                self._metrics.frame_lateness.observe(late.lateness)
                if late.underrun:
                    self._metrics.underruns.labels("starved" if starved else "send").inc()
            if utterance_t0 is not None:
                self._metrics.first_audio.labels(model_id).observe(time.monotonic() - utterance_t0)
                utterance_t0 = None
            await send(OutFrame(self._next_sequence(), item, False))
            self._last_sent_at = time.monotonic()
            self._metrics.frames.labels(model_id).inc()

    async def _wait_resumed(self) -> None:
        self._observe_pause()
        await self._running.wait()

    def _observe_pause(self) -> None:
        """Once per PAUSE: emission stopped with the last frame sent (0 if none followed it)."""
        if self._paused_at is not None:
            self._metrics.pause_latency.observe(max(0.0, self._last_sent_at - self._paused_at))
            self._paused_at = None

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence
