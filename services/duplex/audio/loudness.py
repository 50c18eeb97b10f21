"""Loudness: one gain per voice, calibrated once, and a soft ceiling instead of clipping.

A streaming synthesiser cannot measure an utterance's loudness before sending its first
frame, so each model's gain is measured on a reference phrase when it is warmed up. Voices
then sit at about the same level (≈ −16 LUFS for speech at the default target) whichever
model speaks.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]

# Active-speech RMS of −18 dBFS reads as roughly −16 LUFS for typical TTS speech.
DEFAULT_TARGET_DBFS = -18.0
_MIN_GAIN, _MAX_GAIN = 0.1, 10.0
_KNEE = 0.9  # above this magnitude the soft ceiling bends the waveform instead of clipping it
_CEILING = 0.98  # ≈ −0.2 dBFS: the bend approaches this and never reaches full scale


def active_rms_dbfs(audio: Float32Array, rate: int, floor_dbfs: float = -50.0) -> float:
    """RMS over the 20 ms blocks louder than `floor_dbfs`, so pauses do not lower it."""
    block = max(1, rate // 50)
    n = len(audio) // block
    if n == 0:
        return float("-inf")
    blocks = audio[: n * block].astype(np.float64).reshape(n, block)
    energy = np.mean(blocks * blocks, axis=1)
    active = energy[energy > 10 ** (floor_dbfs / 10)]
    if active.size == 0:
        return float("-inf")
    return float(10 * np.log10(np.mean(active)))


def calibrate_gain(
    audio: Float32Array, rate: int, target_dbfs: float = DEFAULT_TARGET_DBFS
) -> float:
    level = active_rms_dbfs(audio, rate)
    if not np.isfinite(level):
        return 1.0
    gain = 10 ** ((target_dbfs - level) / 20)
    return float(np.clip(gain, _MIN_GAIN, _MAX_GAIN))


def apply_gain(audio: Float32Array, gain: float) -> Float32Array:
    """Scale and pass through a stateless soft ceiling: no sample ever reaches full scale."""
    y = audio.astype(np.float32) * np.float32(gain)
    mag = np.abs(y)
    over = mag > _KNEE
    if np.any(over):
        span = _CEILING - _KNEE
        bent = _KNEE + span * np.tanh((mag[over] - _KNEE) / span)
        y[over] = np.sign(y[over]) * bent.astype(np.float32)
    return y
