"""The explicit registry of TTS families. An unknown family is an error listing valid ones."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from duplex.errors import UnknownFamily
from duplex.worker.adapters.base import ModelSpec, NativeAudio, TtsAdapter
from duplex.worker.adapters.kokoro import KokoroAdapter
from duplex.worker.adapters.pico import PicoAdapter
from duplex.worker.adapters.piper import PiperAdapter
from duplex.worker.adapters.tone import ToneAdapter

FAMILIES: Mapping[str, type[TtsAdapter]] = MappingProxyType(
    {cls.family: cls for cls in (PiperAdapter, KokoroAdapter, PicoAdapter, ToneAdapter)}
)


def adapter_for(spec: ModelSpec) -> TtsAdapter:
    try:
        cls = FAMILIES[spec.family]
    except KeyError:
        raise UnknownFamily(
            f"unknown model family {spec.family!r}; valid families: {', '.join(sorted(FAMILIES))}"
        ) from None
    return cls(spec)


__all__ = ["FAMILIES", "ModelSpec", "NativeAudio", "TtsAdapter", "adapter_for"]
