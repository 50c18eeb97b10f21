"""Audio primitives shared by the worker and the orchestrator."""

from duplex.audio.frame import (
    FRAME_BYTES,
    FRAME_MS,
    FRAME_SAMPLES,
    FRAME_SECONDS,
    SAMPLE_RATE,
    PcmFrame,
)
from duplex.audio.framer import FrameEncoder
from duplex.audio.resample import StreamResampler

__all__ = [
    "FRAME_BYTES",
    "FRAME_MS",
    "FRAME_SAMPLES",
    "FRAME_SECONDS",
    "SAMPLE_RATE",
    "FrameEncoder",
    "PcmFrame",
    "StreamResampler",
]
