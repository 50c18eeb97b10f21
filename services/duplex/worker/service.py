"""The `tts.TTSService` gRPC servicer: maps the ABI onto sessions and the ModelManager.

Every handler is a boundary: a `DuplexError` becomes its gRPC status code with the message in
the details; nothing that goes wrong in one session touches another.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from duplex.audio.frame import FRAME_MS, SAMPLE_RATE
from duplex.errors import (
    AtCapacity,
    DuplexError,
    InvalidInput,
    ModelLoading,
    NotAllowed,
    SessionExists,
    UnknownSession,
)
from duplex.logs import TRACEPARENT, bind, bound, trace_id_of
from duplex.rpc._proto import tts_pb2 as pb
from duplex.rpc._proto import tts_pb2_grpc as pb_grpc
from duplex.rpc.client import CLIENT_METADATA
from duplex.rpc.security import AdminPolicy
from duplex.tasks import TaskSet
from duplex.worker.config import WorkerConfig
from duplex.worker.metrics import WorkerMetrics
from duplex.worker.model_manager import ModelManager
from duplex.worker.session import OutFrame, SessionOptions, SynthesisSession, TextPiece

log = logging.getLogger(__name__)

MAX_ID_CHARS = 128  # session ids, model ids, client names
MAX_OPTIONS = 16
MAX_OPTION_CHARS = 256


class MalformedChunk:
    """Stands in for a TextChunk that did not parse (e.g. text that is not valid UTF-8)."""

    def __init__(self, error: str) -> None:
        self.error = error


def parse_text_chunk(data: bytes) -> pb.TextChunk | MalformedChunk:
    try:
        chunk: pb.TextChunk = pb.TextChunk.FromString(data)
        return chunk
    except DecodeError as exc:
        return MalformedChunk(str(exc))


def _metadata(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key and isinstance(value, str):
            return value
    return None


def client_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Who is calling: its `duplex-client` metadata, or else the peer's host (no port)."""
    if name := _metadata(context, CLIENT_METADATA):
        return name[:MAX_ID_CHARS]
    peer = context.peer() or "unknown"
    host, _, port = peer.rpartition(":")
    return host if host and port.isdigit() else peer


def _check_id(what: str, value: str) -> None:
    if len(value) > MAX_ID_CHARS:
        raise InvalidInput(f"{what} of {len(value)} characters exceeds the limit of {MAX_ID_CHARS}")


def _check_options(options: dict[str, str]) -> None:
    if len(options) > MAX_OPTIONS:
        raise InvalidInput(f"{len(options)} session options exceed the limit of {MAX_OPTIONS}")
    for key, value in options.items():
        if len(key) > MAX_OPTION_CHARS or len(value) > MAX_OPTION_CHARS:
            raise InvalidInput(
                f"session option {key[:40]!r} exceeds the limit of {MAX_OPTION_CHARS} characters"
            )


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: DuplexError) -> NoReturn:
    await context.abort(exc.grpc_code, str(exc))
    raise AssertionError("unreachable")  # abort raises


class TtsServicer(pb_grpc.TTSServiceServicer):
    def __init__(self, config: WorkerConfig, manager: ModelManager, metrics: WorkerMetrics) -> None:
        self._config = config
        self._manager = manager
        self._metrics = metrics
        self._sessions: dict[str, SynthesisSession] = {}
        self._admin = AdminPolicy(tuple(config.admin_tokens), tuple(config.admin_names))
        # Sessions being started (their model may be loading): id → client. They count
        # against the limits already, so concurrent starts cannot overshoot them.
        self._starting: dict[str, str] = {}
        self._tasks = TaskSet("servicer")
        self._idle_changed = asyncio.Event()
        self.on_sessions_changed: Callable[[], None] = lambda: None

    # -- session table -------------------------------------------------------------------

    @property
    def sessions(self) -> dict[str, SynthesisSession]:
        return self._sessions

    def _session(self, session_id: str, client: str) -> SynthesisSession:
        """The caller's own session; another client's is as unknown to it as a missing one."""
        session = self._sessions.get(session_id)
        if session is None or session.owner != client:
            _check_id("session_id", session_id)
            raise UnknownSession(f"no session {session_id!r}; call StartSession first")
        session.touch()
        return session

    def _check_admin(self, context: grpc.aio.ServicerContext[Any, Any], call: str) -> None:
        if not self._admin.allows(context):
            raise NotAllowed(
                f"{call} changes what this worker holds for everyone: it needs an admin token "
                "or an admin client certificate (callers on the worker's own machine are "
                "admins only while neither is configured)"
            )

    def _admit(self, session_id: str, client: str) -> None:
        """Refuse a new session when the worker, or this client's share of it, is full."""
        if session_id in self._sessions or session_id in self._starting:
            raise SessionExists(f"session {session_id!r} already exists")
        held = len(self._sessions) + len(self._starting)
        if held >= self._config.max_sessions:
            raise AtCapacity(f"worker is at its limit of {self._config.max_sessions} sessions")
        mine = sum(1 for s in self._sessions.values() if s.owner == client)
        mine += sum(1 for c in self._starting.values() if c == client)
        if mine >= self._config.client_limit:
            raise AtCapacity(f"this client already holds {mine} sessions, its limit on this worker")

    def _end(self, session: SynthesisSession) -> None:
        if self._sessions.get(session.session_id) is session:
            del self._sessions[session.session_id]
        session.stop()
        self._manager.release(session.lease)
        self._metrics.active_sessions.set(len(self._sessions))
        self.on_sessions_changed()

    def start(self) -> None:
        self._tasks.spawn(self._reap_idle(), "reap-idle")

    async def aclose(self) -> None:
        await self._tasks.aclose()
        for session in list(self._sessions.values()):
            self._end(session)

    async def _reap_idle(self) -> None:
        # Sessions whose client vanished without EndSession would pin their model forever.
        limit = self._config.session_idle_seconds
        while True:
            now = time.monotonic()
            for session in list(self._sessions.values()):
                if not session.streaming and now - session.idle_since >= limit:
                    with bound(session_id=session.session_id):
                        log.info("ending idle session %s", session.session_id)
                        self._end(session)
            idle = [s.idle_since for s in self._sessions.values() if not s.streaming]
            delay = (min(idle) + limit - now) if idle else limit
            self._idle_changed.clear()
            try:
                async with asyncio.timeout(max(0.05, delay)):
                    await self._idle_changed.wait()
            except TimeoutError:
                pass

    # -- RPCs ------------------------------------------------------------------------------

    async def StartSession(
        self, request: pb.StartSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StartSessionResponse:
        client = client_of(context)
        sid = request.session_id
        try:
            if not sid:
                raise InvalidInput("session_id is required")
            _check_id("session_id", sid)
            bind(session_id=sid)  # each call is a task of its own: this tags its lines only
            _check_id("model_id", request.model_id)
            _check_options(dict(request.options))
            model_id = request.model_id or self._config.default_model
            spec = self._manager.catalog.get(model_id)
            options = SessionOptions.parse(
                dict(request.options),
                default_pacing=self._config.default_pacing,
                default_lead_ms=self._config.default_lead_ms,
            )
            spec.voice_or_default(options.voice)
            self._admit(sid, client)
            self._starting[sid] = client
            try:
                lease = await self._manager.acquire(model_id)
            finally:
                del self._starting[sid]
            try:
                session = SynthesisSession(
                    sid,
                    lease,
                    self._manager,
                    options,
                    self._metrics,
                    owner=client,
                    buffer_seconds=self._config.buffer_seconds,
                    max_text_chars=self._config.max_text_chars,
                )
            except DuplexError:  # a voice the loaded model does not have
                self._manager.release(lease)
                raise
        except DuplexError as exc:
            await _abort(context, exc)
        self._sessions[sid] = session
        self._metrics.active_sessions.set(len(self._sessions))
        self._idle_changed.set()
        self.on_sessions_changed()
        log.info(
            "session started on %s (voice %s) for %s",
            model_id,
            session.voice or "default",
            client,
        )
        return pb.StartSessionResponse(success=True, message=f"session started on {model_id}")

    async def EndSession(
        self, request: pb.EndSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EndSessionResponse:
        try:
            _check_id("session_id", request.session_id)
            bind(session_id=request.session_id)
            self._end(self._session(request.session_id, client_of(context)))
        except DuplexError as exc:
            await _abort(context, exc)
        log.info("session ended")
        return pb.EndSessionResponse(success=True)

    async def Synthesize(
        self,
        request_iterator: AsyncIterator[pb.TextChunk | MalformedChunk],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        session: SynthesisSession | None = None
        try:
            first = await anext(request_iterator, None)
            if first is None:
                return
            if isinstance(first, MalformedChunk):
                raise InvalidInput(f"malformed TextChunk: {first.error}")
            _check_id("session_id", first.session_id)
            # The stream's lines name its session and, when the caller traces the turn it
            # speaks for, that trace; the session's tasks below inherit both.
            bind(session_id=first.session_id, trace_id=trace_id_of(_metadata(context, TRACEPARENT)))
            session = self._session(first.session_id, client_of(context))
            if session.streaming:
                raise SessionExists(f"session {first.session_id!r} already has a Synthesize stream")
            sid = first.session_id

            async def pieces() -> AsyncIterator[TextPiece]:
                chunk: pb.TextChunk | MalformedChunk | None = first
                while chunk is not None:
                    if isinstance(chunk, MalformedChunk):
                        raise InvalidInput(f"malformed TextChunk: {chunk.error}")
                    if chunk.session_id and chunk.session_id != sid:
                        raise InvalidInput(
                            f"TextChunk for session {chunk.session_id!r} on the stream of {sid!r}"
                        )
                    yield TextPiece(chunk.text, chunk.is_final)
                    chunk = await anext(request_iterator, None)

            sent = 0

            async def send(out: OutFrame) -> None:
                nonlocal sent
                sent += 1
                await context.write(
                    pb.AudioFrame(
                        session_id=sid,
                        audio_data=out.frame.data if out.frame else b"",
                        sample_rate=SAMPLE_RATE,
                        frame_duration_ms=FRAME_MS,
                        sequence_number=out.sequence,
                        is_final=out.is_final,
                    )
                )

            started = time.monotonic()
            try:
                await session.run(pieces(), send)
            except asyncio.CancelledError:
                # The client went away or gave the stream up (a barge-in that stops the reply).
                log.info("stream cancelled: %d frames in %.1f s", sent, time.monotonic() - started)
                raise
            log.info("stream ended: %d frames in %.1f s", sent, time.monotonic() - started)
        except DuplexError as exc:
            if session is not None:
                log.warning("stream failed: %s", exc)
            await _abort(context, exc)
        finally:
            if session is not None:
                session.touch()  # idle from the end of its stream, not its start
            self._idle_changed.set()

    async def Control(
        self, request: pb.ControlRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ControlResponse:
        try:
            session = self._session(request.session_id, client_of(context))
            command = request.command
            if command == pb.KEEPALIVE:
                pass  # looking the session up touched it
            elif command == pb.PAUSE:
                session.pause()
            elif command == pb.RESUME:
                session.resume()
            elif command == pb.STOP:
                session.stop()
            elif command == pb.RELOAD:
                self._check_admin(context, "RELOAD")
                await self._manager.reload(session.model_id)
            else:
                raise InvalidInput(f"unknown control command {command}")
        except DuplexError as exc:
            await _abort(context, exc)
        return pb.ControlResponse(
            success=True,
            message=pb.ControlCommand.Name(command),
            timestamp_ms=int(time.time() * 1000),
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        models = []
        for spec in self._manager.catalog:
            metadata = {"source": spec.source, "memory_mib": str(spec.memory_mib)}
            # Where it runs if resident, else where it was asked to run.
            metadata["device"] = self._manager.devices().get(
                spec.model_id, spec.device or self._config.device
            )
            if spec.description:
                metadata["description"] = spec.description
            if spec.voices:
                metadata["voices"] = ",".join(spec.voices)
            if spec.default_voice:
                metadata["default_voice"] = spec.default_voice
            if spec.model_id in self._manager.loading_ids():
                metadata["loading"] = "true"
            if error := self._manager.last_error.get(spec.model_id):
                metadata["last_error"] = error
            models.append(
                pb.ModelInfo(
                    model_id=spec.model_id,
                    family=spec.family,
                    is_loaded=self._manager.is_resident(spec.model_id),
                    languages=list(spec.languages),
                    metadata=metadata,
                )
            )
        return pb.ListModelsResponse(models=models)

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.LoadModelResponse:
        try:
            self._check_admin(context, "LoadModel")
            _check_id("model_id", request.model_id)
            spec = self._manager.catalog.get(request.model_id)
            # In Kubernetes mode the Pod's model set decides (FAILED_PRECONDITION otherwise).
            self._manager.check_placed(spec.model_id)
            if self._manager.is_resident(spec.model_id):
                return pb.LoadModelResponse(success=True, message="already loaded")
            if request.preload_only:
                # Start the load and answer at once; callers poll ListModels or watch discovery.
                self._tasks.spawn(self._background_load(spec.model_id), "load")
                return pb.LoadModelResponse(success=True, message="loading")
            started = time.monotonic()
            await self._manager.load(spec.model_id)
        except DuplexError as exc:
            await _abort(context, exc)
        return pb.LoadModelResponse(
            success=True,
            message="loaded",
            load_duration_ms=int((time.monotonic() - started) * 1000),
        )

    async def _background_load(self, model_id: str) -> None:
        try:
            await self._manager.load(model_id)
        except DuplexError as exc:
            log.error("background load of %s failed: %s", model_id, exc)

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UnloadModelResponse:
        try:
            self._check_admin(context, "UnloadModel")
            _check_id("model_id", request.model_id)
            if request.model_id in self._manager.loading_ids():
                raise ModelLoading(f"model {request.model_id!r} is still loading")
            await self._manager.unload(request.model_id)
        except DuplexError as exc:
            await _abort(context, exc)
        return pb.UnloadModelResponse(success=True, message="unloaded")

    async def GetCapabilities(
        self, request: pb.GetCapabilitiesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetCapabilitiesResponse:
        languages = sorted({lang for spec in self._manager.catalog for lang in spec.languages})
        return pb.GetCapabilitiesResponse(
            capabilities=pb.Capabilities(
                streaming=True,
                zero_shot=False,
                lora=False,
                cpu_ok=True,
                languages=languages,
                emotive_zero_prompt=False,
                max_concurrent_sessions=self._config.max_sessions,
            ),
            resident_models=self._manager.resident_ids(),
            metrics={
                "active_sessions": float(len(self._sessions)),
                "queue_depth": float(self.queue_depth()),
                "rtf_p50": self._metrics.rtf_p50(),
            },
        )

    def queue_depth(self) -> int:
        return sum(s.queue_depth() for s in self._sessions.values())


def add_to_server(servicer: TtsServicer, server: grpc.aio.Server) -> None:
    """Register every RPC of `tts.TTSService`, built from the proto descriptor.

    Synthesize gets a tolerant deserializer so a TextChunk that is not valid UTF-8 becomes an
    INVALID_ARGUMENT status from the handler rather than an opaque INTERNAL from the framework.
    """
    service = pb.DESCRIPTOR.services_by_name["TTSService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_cls = GetMessageClass(method.input_type)
        response_cls = GetMessageClass(method.output_type)
        behaviour = getattr(servicer, method.name)
        deserialize = (
            parse_text_chunk
            if method.full_name == "tts.TTSService.Synthesize"
            else request_cls.FromString
        )
        kind = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(
            behaviour,
            request_deserializer=deserialize,
            response_serializer=response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    # Registered methods skip the generic lookup; the stubs of grpc do not know this API yet.
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]
