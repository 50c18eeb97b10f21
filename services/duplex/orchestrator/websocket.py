"""The WebSocket transport (`/ws`): JSON text frames both ways, audio as binary frames.

The client sends `session.start`, then 20 ms frames of 16-bit mono PCM at its sample rate;
it gets the events of `duplex.orchestrator.events` and the reply as 20 ms frames of 48 kHz
PCM, which it plays out itself (so barge-in reaches it as `playback` events).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import WSMsgType, web

from duplex.audio.frame import FRAME_SECONDS, PcmFrame
from duplex.errors import DuplexError
from duplex.orchestrator.conversation import Conversation
from duplex.orchestrator.events import SHUTDOWN, ErrorEvent, ServerEvent
from duplex.orchestrator.session import Services
from duplex.orchestrator.transport import ClientPlayout
from duplex.tasks import TaskSet

log = logging.getLogger(__name__)

# RFC 6455 §7.4.1 "Try Again Later": the server cannot take the conversation now.
CLOSE_BUSY = 1013
CLOSE_POLICY = 1008  # "Policy Violation": the client broke the protocol's rules
CLOSE_GOING_AWAY = 1001  # the server is shutting down
_MAX_QUEUED = 1000  # events and 20 ms frames waiting for a client


class _Close:
    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class WsOutput(ClientPlayout):
    """Queues a session's events and audio; one writer task sends them in order."""

    def __init__(self, ws: web.WebSocketResponse, lead_seconds: float) -> None:
        self._ws = ws
        self._lead = lead_seconds
        self._queue: asyncio.Queue[dict[str, Any] | bytes | _Close] = asyncio.Queue()
        self._frames = 0  # audio frames queued, not yet written
        self.close: _Close | None = None  # set once the session asked to hang up
        self.hung_up = asyncio.Event()  # ... and everything before that was sent

    def event(self, event: ServerEvent) -> None:
        self._put(event.to_json())

    def play(self, frame: PcmFrame) -> None:
        self._put(frame.data)

    def refuse(self, code: str, message: str) -> None:
        self.hang_up(ErrorEvent(code, message), CLOSE_BUSY, code)

    def unheard_seconds(self) -> float:
        # The client's own buffer is not visible from here: it holds up to the lead the
        # reply is paced ahead by.
        return self._frames * FRAME_SECONDS + self._lead

    def hang_up(self, event: ServerEvent, code: int, reason: str) -> None:
        """Send `event`, everything queued before it, then close with `code`."""
        self._queue.put_nowait(event.to_json())
        self._queue.put_nowait(_Close(code, reason))

    def _put(self, item: dict[str, Any] | bytes) -> None:
        if self.close is not None:
            return
        if self._queue.qsize() >= _MAX_QUEUED:
            # The client stopped reading (20 s of audio waits for it): hang up on it rather
            # than hold its backlog in memory.
            self._queue.put_nowait(_Close(CLOSE_POLICY, "the client is not reading"))
            self.close = _Close(CLOSE_POLICY, "the client is not reading")
            return
        if isinstance(item, bytes):
            self._frames += 1
        self._queue.put_nowait(item)

    async def write(self) -> None:
        while True:
            item = await self._queue.get()
            if self._ws.closed:
                return
            if isinstance(item, bytes):
                self._frames -= 1
                await self._ws.send_bytes(item)
            elif isinstance(item, _Close):
                self.close = self.close or item
                self.hung_up.set()
                return
            else:
                await self._ws.send_str(json.dumps(item))


class WebSocketTransport:
    name = "websocket"

    def __init__(self, services: Services) -> None:
        self._s = services
        self._sockets: set[WsOutput] = set()  # open conversations
        self._sockets_gone = asyncio.Event()

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/ws", self._websocket)]

    async def run(self) -> None:
        return  # nothing of its own: aiohttp serves the route

    async def goodbye(self) -> None:
        for output in list(self._sockets):
            output.hang_up(SHUTDOWN, CLOSE_GOING_AWAY, "server shutting down")
        while self._sockets:
            self._sockets_gone.clear()
            await self._sockets_gone.wait()

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        # Messages up to 4 MB are read so that an oversized one gets an error, not a hang-up.
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=4 << 20)
        await ws.prepare(request)
        output = WsOutput(ws, self._s.config.client_lead_ms / 1000)
        self._sockets.add(output)
        try:
            await self._converse(ws, output)
        finally:
            self._sockets.discard(output)
            if not self._sockets:
                self._sockets_gone.set()
        return ws

    async def _converse(self, ws: web.WebSocketResponse, output: WsOutput) -> None:
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(output.write(), name="ws-writer")
            reader = tg.create_task(self._read_client(ws, output), name="ws-reader")
            hang_up = tg.create_task(output.hung_up.wait(), name="ws-hang-up")
            try:
                await asyncio.wait({reader, hang_up}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (reader, hang_up, writer):
                    task.cancel()
        if output.close is not None and not ws.closed:
            # Closed from this task, not the reader's: aiohttp then waits for the client's
            # close frame, so the client sees our code rather than a dropped connection.
            await ws.close(code=output.close.code, message=output.close.reason.encode())

    async def _read_client(self, ws: web.WebSocketResponse, output: WsOutput) -> None:
        """The client's messages, until it leaves."""
        async with TaskSet("ws-conversation") as tasks:
            conversation = Conversation(self._s, output, tasks)
            try:
                async for msg in ws:
                    if msg.type == WSMsgType.BINARY:
                        try:
                            conversation.feed_audio(msg.data)
                        except DuplexError as exc:
                            self._s.metrics.errors.labels(exc.code).inc()
                            output.event(ErrorEvent(exc.code, str(exc)))
                    elif msg.type == WSMsgType.TEXT:
                        await conversation.message(msg.data)
                    elif msg.type == WSMsgType.ERROR:
                        break
            finally:
                conversation.end()


def transport(services: Services) -> WebSocketTransport:
    return WebSocketTransport(services)
