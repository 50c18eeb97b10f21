"""Turns audio at any native rate into exact 20 ms, 48 kHz int16 frames."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from duplex.audio.frame import FRAME_SAMPLES, SAMPLE_RATE, PcmFrame
from duplex.audio.loudness import apply_gain
from duplex.audio.resample import StreamResampler

Float32Array = npt.NDArray[np.float32]


def to_float32(audio: npt.NDArray[np.float32] | npt.NDArray[np.int16]) -> Float32Array:
    if audio.dtype == np.int16:
        return audio.astype(np.float32) / 32768.0
    return np.asarray(audio, dtype=np.float32).reshape(-1)


def to_int16(audio: Float32Array) -> npt.NDArray[np.int16]:
    return np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)


class FrameEncoder:
    """Native-rate chunks in, `PcmFrame`s out: resample (stateful), gain, cut into frames.

    `end_unit()` closes one speakable unit: it drains the resampler and pads the last partial
    frame with silence, so no audio waits in here while the next unit is being synthesised.
    """

    def __init__(self, native_rate: int, gain: float = 1.0) -> None:
        self._resampler = StreamResampler(native_rate, SAMPLE_RATE)
        self._gain = gain
        self._pending = np.zeros(0, np.float32)

    def push(self, audio: npt.NDArray[np.float32] | npt.NDArray[np.int16]) -> list[PcmFrame]:
        return self._cut(self._resampler.process(to_float32(audio)))

    def end_unit(self) -> list[PcmFrame]:
        frames = self._cut(self._resampler.flush())
        if self._pending.size:
            pad = np.zeros(FRAME_SAMPLES - self._pending.size, np.float32)
            frames.append(PcmFrame.from_samples(to_int16(np.concatenate([self._pending, pad]))))
            self._pending = np.zeros(0, np.float32)
        return frames

    def _cut(self, audio: Float32Array) -> list[PcmFrame]:
        if audio.size == 0:
            return []
        buf = np.concatenate([self._pending, apply_gain(audio, self._gain)])
        whole = buf.size // FRAME_SAMPLES
        pcm = to_int16(buf[: whole * FRAME_SAMPLES])
        self._pending = buf[whole * FRAME_SAMPLES :]
        return [PcmFrame.from_samples(f) for f in pcm.reshape(whole, FRAME_SAMPLES)]
