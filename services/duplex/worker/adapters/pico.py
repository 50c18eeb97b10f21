"""SVOX Pico through py-nanotts: non-neural, tiny and very fast (16 kHz int16)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from duplex.worker.adapters.base import NativeAudio, TtsAdapter, require


class PicoAdapter(TtsAdapter):
    family = "pico"

    _tts: Any = None

    @property
    def native_rate(self) -> int:
        return 16_000

    def load(self) -> None:
        require("py_nanotts", "pico")
        from py_nanotts import NanoTTS

        self._tts = NanoTTS()

    def synthesize(self, text: str, voice: str | None, speed: float) -> Iterator[NativeAudio]:
        pcm = self._tts.speak(text, voice=voice or "en-US", speed=speed)
        yield np.frombuffer(pcm, dtype="<i2").astype(np.int16)

    def close(self) -> None:
        self._tts = None
