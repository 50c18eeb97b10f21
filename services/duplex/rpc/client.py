"""A typed asyncio client for `tts.TTSService`, used by the CLI, the bench and the orchestrator."""

from __future__ import annotations

import asyncio
import enum
import os
import socket
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from duplex.audio.frame import FRAME_BYTES, SAMPLE_RATE, PcmFrame
from duplex.logs import TRACEPARENT, traceparent
from duplex.rpc._proto import tts_pb2 as pb
from duplex.rpc._proto import tts_pb2_grpc as pb_grpc
from duplex.rpc.security import ADMIN_METADATA, ClientTls

# A reader that plays audio in real time must not let the transport queue seconds of audio in
# front of it: without BDP probing about 30 frames sit in flight, so PAUSE can recall the rest.
# A worker that goes silent without closing its connection (a lost node, a stopped process)
# is found by HTTP/2 pings: two a second while calls are open, dead after a second without an
# answer (both timeouts: core times out a ping in flight by ping_timeout, 60 s by default), so
# a reply fails over within about 1.5 s instead of hanging.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.http2.bdp_probe", 0),
    ("grpc.max_receive_message_length", 4 << 20),
    ("grpc.keepalive_time_ms", 500),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.http2.ping_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
)
# What a worker needs to accept those pings (gRPC's default would answer them with GOAWAY).
SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", 4 << 20),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
)
# Deadlines of the unary calls. StartSession may wait for its model to load.
CALL_SECONDS = 10.0
START_SECONDS = 120.0
LOAD_SECONDS = 600.0


# The metadata key a client names itself by on every call: a worker keeps each session for
# the client that started it and counts it against that client's share.
CLIENT_METADATA = "duplex-client"


class Command(enum.IntEnum):
    PAUSE = pb.PAUSE
    RESUME = pb.RESUME
    STOP = pb.STOP
    RELOAD = pb.RELOAD
    KEEPALIVE = pb.KEEPALIVE


class ProtocolError(Exception):
    """The worker broke a frame rule of the ABI."""


@dataclass(frozen=True, slots=True)
class ReceivedFrame:
    sequence: int
    frame: PcmFrame | None  # None on an end-of-utterance marker
    is_final: bool


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    family: str
    is_loaded: bool
    languages: tuple[str, ...]
    metadata: Mapping[str, str]


def _frame(msg: pb.AudioFrame) -> ReceivedFrame:
    if msg.audio_data:
        if msg.sample_rate != SAMPLE_RATE or len(msg.audio_data) != FRAME_BYTES:
            raise ProtocolError(
                f"frame {msg.sequence_number}: {len(msg.audio_data)} bytes at "
                f"{msg.sample_rate} Hz; expected {FRAME_BYTES} bytes at {SAMPLE_RATE} Hz"
            )
        return ReceivedFrame(msg.sequence_number, PcmFrame(msg.audio_data), msg.is_final)
    if not msg.is_final:
        raise ProtocolError(f"frame {msg.sequence_number} is empty but not final")
    return ReceivedFrame(msg.sequence_number, None, True)


_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
_Status = tuple[grpc.StatusCode, str]


def _completion_status(call: Any) -> _Status | None:
    """The status a call completed with, as the transport delivered it.

    grpcio (asyncio) can overwrite a bidi stream's status with INTERNAL "Internal error from
    Core" when a write was still in flight as the server ended the call (grpc/grpc#36066); read
    at completion, the server's own status is still there. None when it cannot be read.
    """
    status = getattr(getattr(call, "_cython_call", None), "_status", None)
    if status is None:
        return None
    try:
        return _STATUS_CODES[status.code()], str(status.details())
    except (AttributeError, KeyError, TypeError):
        return None


def _real_error(exc: grpc.aio.AioRpcError, first: list[_Status | None]) -> grpc.aio.AioRpcError:
    if exc.code() != grpc.StatusCode.INTERNAL or not first or first[0] is None:
        return exc
    code, details = first[0]
    if code in (grpc.StatusCode.OK, grpc.StatusCode.INTERNAL):
        return exc
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(*exc.initial_metadata()),
        grpc.aio.Metadata(*exc.trailing_metadata()),  # type: ignore[arg-type]
        details,
        exc.debug_error_string(),
    )


async def frames_of(call: Any) -> AsyncIterator[ReceivedFrame]:
    """The frames of a Synthesize call, checked against the frame rules; its failure raised
    with the worker's own status (see `_completion_status`)."""
    first: list[_Status | None] = []
    call.add_done_callback(lambda done: first.append(_completion_status(done)))
    try:
        async for msg in call:
            yield _frame(msg)
    except grpc.aio.AioRpcError as exc:
        raise _real_error(exc, first) from None
    finally:
        call.cancel()


class TtsClient:
    """One channel to a worker. Every call names this client (`client_id`): the worker keeps
    the sessions it starts for it alone."""

    def __init__(
        self,
        address: str,
        client_id: str | None = None,
        *,
        tls: ClientTls | None = None,
        admin_token: str | None = None,
    ) -> None:
        self.address = address
        self.client_id = client_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        metadata = [(CLIENT_METADATA, self.client_id)]
        if admin_token:
            metadata.append((ADMIN_METADATA, f"Bearer {admin_token}"))
        self._metadata = tuple(metadata)
        if tls is not None:
            self._channel = grpc.aio.secure_channel(
                address, tls.credentials(), options=[*CHANNEL_OPTIONS, *tls.options()]
            )
        else:
            self._channel = grpc.aio.insecure_channel(address, options=list(CHANNEL_OPTIONS))
        self._stub = pb_grpc.TTSServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> TtsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._channel.close(None)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self._channel.channel_ready()

    async def start_session(
        self, session_id: str, model_id: str = "", options: Mapping[str, str] | None = None
    ) -> str:
        reply = await self._stub.StartSession(
            pb.StartSessionRequest(session_id=session_id, model_id=model_id, options=options or {}),
            metadata=self._metadata,
            timeout=START_SECONDS,
        )
        return str(reply.message)

    async def end_session(self, session_id: str) -> None:
        await self._stub.EndSession(
            pb.EndSessionRequest(session_id=session_id),
            metadata=self._metadata,
            timeout=CALL_SECONDS,
        )

    async def control(self, session_id: str, command: Command) -> int:
        """Send PAUSE/RESUME/STOP/RELOAD; returns the worker's timestamp (ms)."""
        reply = await self._stub.Control(
            pb.ControlRequest(session_id=session_id, command=int(command)),  # type: ignore[arg-type]
            metadata=self._metadata,
            timeout=CALL_SECONDS,
        )
        return int(reply.timestamp_ms)

    def synthesize(
        self, session_id: str, texts: AsyncIterable[tuple[str, bool]]
    ) -> AsyncIterator[ReceivedFrame]:
        """Stream `(text, is_final)` pieces in; frames come out as the worker sends them."""

        async def requests() -> AsyncIterator[pb.TextChunk]:
            n = 0
            async for text, final in texts:
                n += 1
                yield pb.TextChunk(
                    session_id=session_id, text=text, is_final=final, sequence_number=n
                )

        metadata = self._metadata
        if (parent := traceparent()) is not None:
            # The turn this stream speaks for: the worker's log lines name its trace.
            metadata = (*metadata, (TRACEPARENT, parent))
        return self._frames(self._stub.Synthesize(requests(), metadata=metadata))

    def _frames(self, call: Any) -> AsyncIterator[ReceivedFrame]:
        return frames_of(call)

    async def say(self, session_id: str, text: str) -> AsyncIterator[ReceivedFrame]:
        """One whole utterance: frames until (and including) its final marker."""

        async def one() -> AsyncIterator[tuple[str, bool]]:
            yield text, True

        async for frame in self.synthesize(session_id, one()):
            yield frame
            if frame.is_final:
                return

    async def list_models(self) -> list[ModelInfo]:
        reply = await self._stub.ListModels(
            pb.ListModelsRequest(), metadata=self._metadata, timeout=CALL_SECONDS
        )
        return [
            ModelInfo(m.model_id, m.family, m.is_loaded, tuple(m.languages), dict(m.metadata))
            for m in reply.models
        ]

    async def load_model(self, model_id: str, *, preload_only: bool = False) -> int:
        reply = await self._stub.LoadModel(
            pb.LoadModelRequest(model_id=model_id, preload_only=preload_only),
            metadata=self._metadata,
            timeout=LOAD_SECONDS,
        )
        return int(reply.load_duration_ms)

    async def unload_model(self, model_id: str) -> None:
        await self._stub.UnloadModel(
            pb.UnloadModelRequest(model_id=model_id),
            metadata=self._metadata,
            timeout=LOAD_SECONDS,
        )

    async def capabilities(self) -> pb.GetCapabilitiesResponse:
        reply: pb.GetCapabilitiesResponse = await self._stub.GetCapabilities(
            pb.GetCapabilitiesRequest(), metadata=self._metadata, timeout=CALL_SECONDS
        )
        return reply
