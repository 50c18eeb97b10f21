"""The unit of audio on every wire: 20 ms of 48 kHz mono little-endian int16."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 48_000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
FRAME_BYTES = FRAME_SAMPLES * 2
FRAME_SECONDS = FRAME_MS / 1000


@dataclass(frozen=True, slots=True)
class PcmFrame:
    """Exactly one 20 ms frame. The size invariant is checked once, here."""

    data: bytes

    def __post_init__(self) -> None:
        if len(self.data) != FRAME_BYTES:
            raise ValueError(
                f"a PCM frame is {FRAME_BYTES} bytes (20 ms at 48 kHz mono int16), "
                f"got {len(self.data)}"
            )

    @classmethod
    def silence(cls) -> PcmFrame:
        return cls(bytes(FRAME_BYTES))

    @classmethod
    def from_samples(cls, samples: npt.NDArray[np.int16]) -> PcmFrame:
        return cls(samples.astype("<i2", copy=False).tobytes())

    def samples(self) -> npt.NDArray[np.int16]:
        return np.frombuffer(self.data, dtype="<i2")
