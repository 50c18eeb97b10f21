"""Reading and writing mono 16-bit WAV files."""

from __future__ import annotations

import wave
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from duplex.audio.frame import SAMPLE_RATE, PcmFrame


def write_wav(path: Path, frames: Iterable[PcmFrame], rate: int = SAMPLE_RATE) -> float:
    """Write frames as a mono 16-bit WAV; returns the duration in seconds."""
    n = 0
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        for frame in frames:
            w.writeframes(frame.data)
            n += len(frame.data) // 2
    return n / rate


def read_wav(path: Path) -> tuple[npt.NDArray[np.int16], int]:
    """Read a mono (or first channel of a multichannel) 16-bit WAV: (samples, rate)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        channels = w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return data[::channels].astype(np.int16), w.getframerate()
