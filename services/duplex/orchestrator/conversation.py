"""One client's conversation, whatever transport carries it."""

from __future__ import annotations

import asyncio

from duplex.errors import DuplexError, InvalidInput
from duplex.orchestrator.events import ErrorEvent, SendText, StartSession, parse_client_message
from duplex.orchestrator.session import ConversationSession, Services, SessionStart
from duplex.orchestrator.transport import Output
from duplex.tasks import TaskSet


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
        msg = parse_client_message(data)
        if isinstance(msg, StartSession):
            self.start(SessionStart.parse(msg, self._s.config))
            return
        session = self.session
        if session is None:
            raise InvalidInput(f"send session.start before {msg.type!r}")
        if isinstance(msg, SendText):
            await session.submit_text(msg.text)
        else:
            await session.control(msg.command)
