"""The orchestrator process: HTTP (page, health, metrics, models) and the WebSocket transport."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from duplex.audio.frame import PcmFrame
from duplex.errors import DuplexError, InvalidInput
from duplex.orchestrator.asr import WhisperTranscriber
from duplex.orchestrator.auth import Guard
from duplex.orchestrator.config import OrchestratorConfig
from duplex.orchestrator.livekit_tokens import require_sdk, token_routes
from duplex.orchestrator.metrics import OrchestratorMetrics
from duplex.orchestrator.responder import make_responder
from duplex.orchestrator.router import (
    ClientPool,
    Directory,
    RedisDirectory,
    Router,
    StaticDirectory,
)
from duplex.orchestrator.session import (
    ConversationSession,
    Services,
    apply_client_message,
)
from duplex.orchestrator.tracing import Tracing
from duplex.orchestrator.vad import SileroModel
from duplex.orchestrator.voice_sessions import VoiceSessions
from duplex.tasks import TaskSet

if TYPE_CHECKING:
    from duplex.orchestrator.livekit_agent import LiveKitAgent

log = logging.getLogger(__name__)

WEB_DIR = Path(str(resources.files("duplex.orchestrator") / "web"))


# RFC 6455 §7.4.1 "Try Again Later": the server cannot take the conversation now.
CLOSE_BUSY = 1013
CLOSE_POLICY = 1008  # "Policy Violation": the client broke the protocol's rules
CLOSE_GOING_AWAY = 1001  # the server is shutting down
SHUTDOWN_SECONDS = 2.0  # for conversations to say goodbye before the server stops
_MAX_QUEUED = 1000  # events and 20 ms frames waiting for a client
SHUTDOWN_EVENT = {"type": "session.ended", "reason": "the server is shutting down"}


class _Close:
    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class WsOutput:
    """Queues a session's events and audio; one writer task sends them in order."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self._queue: asyncio.Queue[dict[str, Any] | bytes | _Close] = asyncio.Queue()
        self.close: _Close | None = None  # set once the session asked to hang up
        self.hung_up = asyncio.Event()  # ... and everything before that was sent

    def send_event(self, event: dict[str, Any]) -> None:
        self._put(event)

    def send_audio(self, frame: PcmFrame) -> None:
        self._put(frame.data)

    def refuse(self, code: str, message: str) -> None:
        self.hang_up({"type": "error", "code": code, "message": message}, CLOSE_BUSY, code)

    def hang_up(self, event: dict[str, Any], code: int, reason: str) -> None:
        """Send `event`, everything queued before it, then close with `code`."""
        self._queue.put_nowait(event)
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
        self._queue.put_nowait(item)

    async def write(self) -> None:
        while True:
            item = await self._queue.get()
            if self._ws.closed:
                return
            if isinstance(item, bytes):
                await self._ws.send_bytes(item)
            elif isinstance(item, _Close):
                self.close = self.close or item
                self.hung_up.set()
                return
            else:
                await self._ws.send_str(json.dumps(item))


class Orchestrator:
    def __init__(self, config: OrchestratorConfig, tracing: Tracing | None = None) -> None:
        self.config = config
        self.metrics = OrchestratorMetrics()
        self.pool = ClientPool(tls=config.tts_tls, admin_token=config.admin_token)
        directory: Directory
        if config.redis:
            directory = RedisDirectory(self.pool, config.redis)
        else:
            directory = StaticDirectory(self.pool, config.workers)
        self.router = Router(directory)
        self.asr = WhisperTranscriber(config.asr)
        self.responder = make_responder(config.responder)
        self.services = Services(
            config,
            self.router,
            self.pool,
            self.asr,
            self.responder,
            self.metrics,
            SileroModel(),
            VoiceSessions.from_settings(config.kube) if config.kube is not None else None,
            # A trace of every turn where the standard OTEL_EXPORTER_OTLP_* variables say.
            tracing if tracing is not None else Tracing.from_environment(),
        )
        self._runner: web.AppRunner | None = None
        self._tasks = TaskSet("orchestrator")
        self._sockets: set[WsOutput] = set()  # open WebSocket conversations
        self._sockets_gone = asyncio.Event()
        self.agent: LiveKitAgent | None = None
        self.port = config.port
        self.metrics_port: int | None = None
        self._health_runner: web.AppRunner | None = None
        self.guard = Guard(
            config.api_keys,
            config.allowed_origins,
            token_seconds=config.session_token_seconds,
            secret=config.token_secret,
        )

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.guard.middleware])
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._websocket)
        if self.config.metrics_port is None:
            self._add_health(app)
        app.router.add_get("/api/models", self._models)
        app.router.add_routes(self.guard.routes())
        app.router.add_routes(token_routes(self.config.livekit))
        app.router.add_static("/static", WEB_DIR)
        return app

    def _add_health(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/metrics", self._metrics)

    async def start(self) -> None:
        if not self.config.workers and not self.config.redis:
            raise InvalidInput("no TTS workers: give --worker ADDR (repeatable) or --redis URL")
        Guard.check_bind(self.config.host, self.config.api_keys, self.config.insecure)
        if self.config.livekit is not None:
            require_sdk()
        await self.asr.load()
        await self.responder.start()
        await self.router.directory.start()
        if self.services.voice_sessions is not None:
            await self.services.voice_sessions.start()
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        self.port = _bound_port(site, self.config.port)
        if self.config.metrics_port is not None:
            health = web.Application()
            self._add_health(health)
            self._health_runner = web.AppRunner(health, access_log=None)
            await self._health_runner.setup()
            health_site = web.TCPSite(
                self._health_runner, self.config.host, self.config.metrics_port
            )
            await health_site.start()
            self.metrics_port = _bound_port(health_site, self.config.metrics_port)
        if self.config.livekit is not None and self.config.livekit.agent:
            from duplex.orchestrator.livekit_agent import LiveKitAgent

            self.agent = LiveKitAgent(self.services, self.config.livekit)
            self._tasks.spawn(self.agent.run(), "livekit-agent")

    async def aclose(self) -> None:
        """Stop: every conversation is told and closed (WebSockets with 1001, rooms left)."""
        for output in list(self._sockets):
            output.hang_up(SHUTDOWN_EVENT, CLOSE_GOING_AWAY, "server shutting down")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_SECONDS):
                while self._sockets:
                    self._sockets_gone.clear()
                    await self._sockets_gone.wait()
        await self._tasks.aclose()  # leaves LiveKit rooms: their sessions end
        if self._runner is not None:
            await self._runner.cleanup()  # closes what is left
        if self._health_runner is not None:
            await self._health_runner.cleanup()
        if self.services.voice_sessions is not None:
            await self.services.voice_sessions.aclose()
        await self.router.directory.aclose()
        await self.responder.aclose()
        await self.pool.aclose()
        await asyncio.to_thread(self.asr.close)
        await asyncio.to_thread(self.services.tracing.close)

    async def __aenter__(self) -> Orchestrator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- HTTP ------------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB_DIR / "index.html")

    async def _health(self, request: web.Request) -> web.Response:
        # Ready while some worker is known; a discovery outage degrades the view but the
        # workers it had still serve, so it does not make the orchestrator unready.
        workers = self.router.directory.workers()
        body: dict[str, Any] = {"ok": bool(workers), "workers": len(workers)}
        if degraded := self.router.directory.degraded:
            body["degraded"] = degraded
        return web.json_response(body, status=200 if workers else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _models(self, request: web.Request) -> web.Response:
        seen: dict[str, dict[str, Any]] = {}
        for worker in self.router.directory.workers():
            try:
                models = await self.pool.get(worker.addr).list_models()
            except Exception as exc:  # boundary: one bad worker must not break the list
                log.warning("listing models of %s failed: %s", worker.name, exc)
                continue
            for info in models:
                entry = seen.setdefault(
                    info.model_id,
                    {
                        "model_id": info.model_id,
                        "family": info.family,
                        "languages": list(info.languages),
                        "voices": [v for v in info.metadata.get("voices", "").split(",") if v],
                        "default_voice": info.metadata.get("default_voice"),
                        "description": info.metadata.get("description", ""),
                        "resident": False,
                        "devices": [],
                    },
                )
                entry["resident"] = entry["resident"] or info.is_loaded
                device = info.metadata.get("device")
                if info.is_loaded and device and device not in entry["devices"]:
                    entry["devices"].append(device)  # where resident copies run
        listed = sorted(seen.values(), key=lambda m: (not m["resident"], m["model_id"]))
        return web.json_response({"models": listed, "default_model": self.config.default_model})

    # -- WebSocket -------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        # Messages up to 4 MB are read so that an oversized one gets an error, not a hang-up.
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=4 << 20)
        await ws.prepare(request)
        output = WsOutput(ws)
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
        """The client's messages, until it leaves; a new session.start replaces the session."""
        session: ConversationSession | None = None
        runner: asyncio.Task[None] | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                async for msg in ws:
                    try:
                        if msg.type == WSMsgType.BINARY:
                            if session is None:
                                raise InvalidInput("send session.start before audio")
                            session.feed_audio(msg.data)
                        elif msg.type == WSMsgType.TEXT:
                            start = await apply_client_message(msg.data, session, self.config)
                            if start is not None:
                                if runner is not None:
                                    runner.cancel()
                                session = ConversationSession(self.services, output, start)
                                runner = tg.create_task(session.run(), name="session")
                        elif msg.type == WSMsgType.ERROR:
                            break
                    except DuplexError as exc:
                        self.metrics.errors.labels(exc.code).inc()
                        output.send_event({"type": "error", "code": exc.code, "message": str(exc)})
                if runner is not None:
                    runner.cancel()
        finally:
            if runner is not None:
                runner.cancel()


def _bound_port(site: web.TCPSite, asked: int) -> int:
    """The port a site listens on (the real one when it asked for port 0)."""
    server = site._server
    if isinstance(server, asyncio.Server) and server.sockets:
        return int(server.sockets[0].getsockname()[1])
    return asked


async def serve(config: OrchestratorConfig) -> None:
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Orchestrator(config) as orch:
        print(f"duplex orchestrator on http://{config.host}:{orch.port}/", flush=True)
        if orch.metrics_port is not None:
            print(f"  /metrics and /healthz on port {orch.metrics_port}", flush=True)
        await stop.wait()
