"""A deterministic test family: one tone burst per word, no model weights.

It exists so tests can check timing and framing exactly. It is only in the catalog when the
configuration asks for test models, and is never used in place of a model that failed. The
option `delay_seconds` makes it take that long per word (a word is 0.25 s of audio), to play a
model slower than real time; `load_delay_seconds` makes its load that slow.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from duplex.worker.adapters.base import NativeAudio, TtsAdapter

_WORD_SECONDS = 0.2
_GAP_SECONDS = 0.05


class ToneAdapter(TtsAdapter):
    family = "tone"
    test_only = True
    thread_safe = True

    @property
    def native_rate(self) -> int:
        return 16_000

    def load(self) -> None:
        time.sleep(float(self.spec.options.get("load_delay_seconds", "0")))
        if self.spec.options.get("fail_load"):
            from duplex.errors import ModelLoadFailed

            raise ModelLoadFailed(f"test model {self.spec.model_id!r} is configured to fail")

    def synthesize(self, text: str, voice: str | None, speed: float) -> Iterator[NativeAudio]:
        rate = self.native_rate
        n = int(rate * _WORD_SECONDS / speed)
        t = np.arange(n, dtype=np.float32) / rate
        gap = np.zeros(int(rate * _GAP_SECONDS / speed), np.float32)
        delay = float(self.spec.options.get("delay_seconds", "0"))
        for i, word in enumerate(text.split()):
            if delay:
                time.sleep(delay)
            freq = 220.0 + 20.0 * ((sum(map(ord, word)) + i) % 24)
            envelope = np.minimum(1.0, np.minimum(t, t[::-1]) * 50.0)
            yield np.concatenate([0.3 * np.sin(2 * np.pi * freq * t) * envelope, gap]).astype(
                np.float32
            )
