"""The orchestrator process: HTTP (page, health, metrics, models, schema) and its transports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from duplex.errors import InvalidInput
from duplex.orchestrator.asr import WhisperTranscriber
from duplex.orchestrator.auth import Guard
from duplex.orchestrator.config import OrchestratorConfig
from duplex.orchestrator.events import json_schema
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
from duplex.orchestrator.session import Services
from duplex.orchestrator.tracing import Tracing
from duplex.orchestrator.transport import Transport
from duplex.orchestrator.transports import configured
from duplex.orchestrator.vad import SileroModel
from duplex.orchestrator.voice_sessions import VoiceSessions
from duplex.tasks import TaskSet

if TYPE_CHECKING:
    from duplex.orchestrator.livekit_agent import LiveKitAgent

log = logging.getLogger(__name__)

WEB_DIR = Path(str(resources.files("duplex.orchestrator") / "web"))


SHUTDOWN_SECONDS = 2.0  # for conversations to say goodbye before the server stops


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
        self.transports: list[Transport] = configured(self.services)
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
        for transport in self.transports:
            app.router.add_routes(transport.routes())
        if self.config.metrics_port is None:
            self._add_health(app)
        app.router.add_get("/api/models", self._models)
        app.router.add_get("/api/schema", self._schema)
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
        for transport in self.transports:
            self._tasks.spawn(transport.run(), transport.name)

    @property
    def agent(self) -> LiveKitAgent | None:
        """The LiveKit agent, when the orchestrator serves rooms (without importing the SDK
        when it does not)."""
        for transport in self.transports:
            if transport.name == "livekit":
                return cast("LiveKitAgent", transport)
        return None

    async def aclose(self) -> None:
        """Stop: every conversation is told and closed (WebSockets with 1001, rooms left)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_SECONDS):
                await asyncio.gather(*(t.goodbye() for t in self.transports))
        await self._tasks.aclose()  # transports leave what is left
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

    async def _schema(self, request: web.Request) -> web.Response:
        return web.json_response(json_schema())

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
