"""The port between a conversation and the transport that carries it to its client.

A transport (the WebSocket, a LiveKit room, ...) does three things: it implements `Output`
for each client, feeds that client's audio and messages into a
`duplex.orchestrator.conversation.Conversation`, and is listed in
`duplex.orchestrator.transports`. Every decision (when to pause, flush or duck the reply)
is made by the session; a transport only carries it out where the audio is held, and tells
the client with the same events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from duplex.audio.frame import PcmFrame
from duplex.orchestrator.events import Playback, ServerEvent

if TYPE_CHECKING:
    from aiohttp import web


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
