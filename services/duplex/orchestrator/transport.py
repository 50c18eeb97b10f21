"""The port between a conversation and the transport that carries it to its client.

A transport (the WebSocket, a LiveKit room, ...) does three things: it implements `Output`
for each client, feeds that client's audio and messages into a `Conversation`, and is listed
in `duplex.orchestrator.transports`. Every decision (when to pause, flush or duck the reply)
is made by the session; a transport only carries it out where the audio is held, and tells
the client with the same events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from duplex.audio.frame import PcmFrame
from duplex.errors import DuplexError, InvalidInput
from duplex.orchestrator.events import (
    Control,
    ErrorEvent,
    Playback,
    SendText,
    ServerEvent,
    parse_client_message,
)
from duplex.tasks import TaskSet

if TYPE_CHECKING:
    from aiohttp import web

    from duplex.orchestrator.session import ConversationSession, Services, SessionStart

log = logging.getLogger(__name__)


class Output(Protocol):
    """Where one conversation's output goes. Every call queues and returns at once, in order."""

    def play(self, frame: PcmFrame) -> None:
        """The next 20 ms of the reply."""

    def pause(self) -> None:
        """Silence the reply now, keeping what was not heard for `resume`."""

    def resume(self) -> None:
        """Play on from where `pause` stopped."""

    def flush(self) -> None:
        """Drop the reply audio not yet heard: the reply is over."""

    def duck(self, gain: float) -> None:
        """Play on at `gain` (someone speaks over the reply); 1.0 restores it."""

    def event(self, event: ServerEvent) -> None:
        """An event for the client."""

    def refuse(self, code: str, message: str) -> None:
        """The conversation cannot be served (no room): tell the client, then hang up."""

    def unheard_seconds(self) -> float:
        """Reply audio handed to this output that the listener has not heard yet."""


class ClientPlayout:
    """An output whose client holds the reply audio and plays it out: pause, resume, flush and
    duck are told to the client as `playback` events, in order with the audio."""

    def event(self, event: ServerEvent) -> None:
        raise NotImplementedError

    def pause(self) -> None:
        self.event(Playback("pause"))

    def resume(self) -> None:
        self.event(Playback("resume"))

    def flush(self) -> None:
        self.event(Playback("flush"))

    def duck(self, gain: float) -> None:
        # The audio is already sent at this gain; the event is for the client to show.
        self.event(Playback("duck", gain))


class Conversation:
    """One client's conversation, whatever carries it: its audio and messages in, one session
    at a time (a `session.start` replaces the current one).

    The sessions run in `tasks`, which the transport owns and closes when the client leaves.
    """

    def __init__(
        self,
        services: Services,
        output: Output,
        tasks: TaskSet,
        *,
        sample_rate: int | None = None,
    ) -> None:
        self._s = services
        self._out = output
        self._tasks = tasks
        # A transport that fixes the audio format (a room is 48 kHz) overrides the client's.
        self._rate = sample_rate
        self.session: ConversationSession | None = None
        self._runner: asyncio.Task[None] | None = None

    def start(self, start: SessionStart) -> None:
        from duplex.orchestrator.session import ConversationSession, SessionStart

        if self._rate is not None:
            start = SessionStart(self._rate, start.model, start.voice, start.language)
        if self._runner is not None:
            self._runner.cancel()
        self.session = ConversationSession(self._s, self._out, start)
        self._runner = self._tasks.spawn(self.session.run(), "session")

    def feed_audio(self, pcm: bytes) -> None:
        """One 20 ms frame of the client's audio; InvalidInput when it is not one."""
        if self.session is None:
            raise InvalidInput("send session.start before audio")
        self.session.feed_audio(pcm)

    async def message(self, data: str) -> None:
        """Act on one client message (JSON text); a bad one gets an error event."""
        try:
            await self._apply(data)
        except DuplexError as exc:
            self._s.metrics.errors.labels(exc.code).inc()
            self._out.event(ErrorEvent(exc.code, str(exc)))

    def end(self) -> None:
        """The client left: the session stops (its task set awaits it)."""
        if self._runner is not None:
            self._runner.cancel()

    async def _apply(self, data: str) -> None:
        from duplex.orchestrator.session import SessionStart

        msg = parse_client_message(data)
        if isinstance(msg, SendText | Control) and self.session is None:
            raise InvalidInput(f"send session.start before {msg.type!r}")
        if isinstance(msg, SendText):
            assert self.session is not None
            await self.session.submit_text(msg.text)
        elif isinstance(msg, Control):
            assert self.session is not None
            await self.session.control(msg.command)
        else:
            self.start(SessionStart.parse(msg, self._s.config))


class Transport(Protocol):
    """One way for clients to reach the orchestrator."""

    name: str

    def routes(self) -> list[web.RouteDef]:
        """HTTP routes it serves on the orchestrator's port (none for most)."""

    async def run(self) -> None:
        """Serve until cancelled, then leave every conversation at once."""

    async def goodbye(self) -> None:
        """The server is stopping: tell every client, end its conversation, and return once
        they are told (within a couple of seconds)."""


TransportFactory = Callable[["Services"], "Transport | None"]
