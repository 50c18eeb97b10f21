"""Stateful polyphase resampling, so chunk edges inside one stream never click."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

Float32Array = npt.NDArray[np.float32]


class StreamResampler:
    """Resamples a stream delivered in chunks of any size.

    soxr keeps the filter state between calls, so the output equals resampling the whole
    stream at once. `flush()` drains the filter's delay line at the end of the stream.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} → {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
        )

    def process(self, chunk: Float32Array) -> Float32Array:
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        if self._stream is None:
            return chunk
        out: Float32Array = self._stream.resample_chunk(chunk, last=False)
        return out

    def flush(self) -> Float32Array:
        if self._stream is None:
            return np.zeros(0, np.float32)
        out: Float32Array = self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
        self._stream.clear()
        return out
