"""A typed asyncio client for `tts.TTSService`, used by the CLI, the bench and the orchestrator."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from duplex.audio.frame import FRAME_BYTES, SAMPLE_RATE, PcmFrame
from duplex.rpc._proto import tts_pb2 as pb
from duplex.rpc._proto import tts_pb2_grpc as pb_grpc

# A reader that plays audio in real time must not let the transport queue seconds of audio in
# front of it: without BDP probing about 30 frames sit in flight, so PAUSE can recall the rest.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.http2.bdp_probe", 0),
    ("grpc.max_receive_message_length", 4 << 20),
)


class Command(enum.IntEnum):
    PAUSE = pb.PAUSE
    RESUME = pb.RESUME
    STOP = pb.STOP
    RELOAD = pb.RELOAD


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


class TtsClient:
    def __init__(self, address: str) -> None:
        self.address = address
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
            pb.StartSessionRequest(session_id=session_id, model_id=model_id, options=options or {})
        )
        return str(reply.message)

    async def end_session(self, session_id: str) -> None:
        await self._stub.EndSession(pb.EndSessionRequest(session_id=session_id))

    async def control(self, session_id: str, command: Command) -> int:
        """Send PAUSE/RESUME/STOP/RELOAD; returns the worker's timestamp (ms)."""
        reply = await self._stub.Control(
            pb.ControlRequest(session_id=session_id, command=int(command))  # type: ignore[arg-type]
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

        return self._frames(self._stub.Synthesize(requests()))

    async def _frames(self, call: Any) -> AsyncIterator[ReceivedFrame]:
        try:
            async for msg in call:
                yield _frame(msg)
        finally:
            call.cancel()

    async def say(self, session_id: str, text: str) -> AsyncIterator[ReceivedFrame]:
        """One whole utterance: frames until (and including) its final marker."""

        async def one() -> AsyncIterator[tuple[str, bool]]:
            yield text, True

        async for frame in self.synthesize(session_id, one()):
            yield frame
            if frame.is_final:
                return

    async def list_models(self) -> list[ModelInfo]:
        reply = await self._stub.ListModels(pb.ListModelsRequest())
        return [
            ModelInfo(m.model_id, m.family, m.is_loaded, tuple(m.languages), dict(m.metadata))
            for m in reply.models
        ]

    async def load_model(self, model_id: str, *, preload_only: bool = False) -> int:
        reply = await self._stub.LoadModel(
            pb.LoadModelRequest(model_id=model_id, preload_only=preload_only)
        )
        return int(reply.load_duration_ms)

    async def unload_model(self, model_id: str) -> None:
        await self._stub.UnloadModel(pb.UnloadModelRequest(model_id=model_id))

    async def capabilities(self) -> pb.GetCapabilitiesResponse:
        reply: pb.GetCapabilitiesResponse = await self._stub.GetCapabilities(
            pb.GetCapabilitiesRequest()
        )
        return reply
